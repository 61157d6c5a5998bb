// The Node client: the `ws` package's WebSocket, traced like a Python wstrace client.
//
// The upgrade request carries the handshake context in real headers (through the global propagator: W3C trace
// context, baggage, B3, ...), the envelope offer `wstrace-envelope: <format>/1` and `wstrace-session`. The envelope
// is used only if the server's 101 answers the offer (mode `negotiate`, the default), so a server that is not
// instrumented never receives a changed byte. Listeners (`on("message")`, `onmessage`, `addEventListener`) get
// the message without its envelope, with its `receive` span (or reply stream) active.

import { context } from "@opentelemetry/api";
import { ConnectionTracer, SESSION_HEADER, ENVELOPE_HEADER, settings, warnOnce } from "./core.js";

/** @typedef {import("./core.js").TracingOptions} TracingOptions */

const STATE = Symbol("wstrace");
const TRACED = Symbol.for("wstrace.traced");
/** @param {unknown} [_error] */
const NOTHING = (_error) => {};

/**
 * The caller's headers plus ours; a header the caller set (in any case) wins.
 * @param {Record<string, any> | undefined} given
 * @param {Record<string, string>} ours
 * @returns {Record<string, any>}
 */
function mergeHeaders(given, ours) {
  const headers = { ...(given ?? {}) };
  const taken = new Set(Object.keys(headers).map((k) => k.toLowerCase()));
  for (const [name, value] of Object.entries(ours)) if (!taken.has(name)) headers[name] = value;
  return headers;
}

/**
 * @param {any} data
 * @returns {boolean}
 */
function isBuffer(data) {
  return typeof Buffer !== "undefined" && Buffer.isBuffer(data);
}

/**
 * A `ws` WebSocket class (a subclass of `WebSocket`, the `ws` package's) whose client connections are traced.
 *
 *     import WebSocket from "ws";
 *     import { tracedWs } from "wstrace/ws";
 *     const TracedWebSocket = tracedWs(WebSocket, { route: "/chat" });
 *     const socket = new TracedWebSocket("ws://localhost:8765/chat");
 *
 * @template {new (...args: any[]) => any} T
 * @param {T} WebSocket  the `ws` package's WebSocket class
 * @param {TracingOptions} [options]
 * @returns {T}
 */
export function tracedWs(WebSocket, options = {}) {
  if (typeof WebSocket !== "function") throw new TypeError("wstrace: pass the ws package's WebSocket class");
  const s = settings(options, "negotiate");
  const OPEN = /** @type {any} */ (WebSocket).OPEN ?? 1;

  // @ts-ignore: a mixin over the ws class, whose constructor takes (address, protocols?, options?)
  class TracedWs extends WebSocket {
    /**
     * @param {string | URL} address
     * @param {string | string[] | Record<string, any>} [protocols]
     * @param {Record<string, any>} [wsOptions]
     */
    constructor(address, protocols, wsOptions) {
      if (protocols && typeof protocols === "object" && !Array.isArray(protocols)) {
        wsOptions = protocols;
        protocols = undefined;
      }
      /** @type {ConnectionTracer | null} */
      let ct = null;
      let headers = wsOptions?.headers;
      try {
        ct = new ConnectionTracer(s);
        ct.startHandshake(address);
        headers = mergeHeaders(headers, ct.requestHeaders());
      } catch (error) {
        warnOnce("preparing the handshake", error);
        ct = null;
      }
      const given = wsOptions ?? {};
      try {
        super(address, protocols, ct ? { ...given, headers } : given);
      } catch (error) {
        ct?.failed({ error });
        throw error; // the application's own mistake (a bad URL): ws's error, as without wstrace
      }
      Object.defineProperty(this, STATE, {
        value: { ct, fragmenting: false, localFirst: false, localCode: undefined, error: undefined },
      });
    }

    /**
     * Every event of the socket goes through here: the 101's headers, the open, each message (stripped and
     * handled in its span's context), the close.
     * @param {string | symbol} event
     * @param {...any} args
     * @returns {boolean}
     */
    emit(event, ...args) {
      const state = /** @type {any} */ (this)[STATE];
      const ct = /** @type {ConnectionTracer | null} */ (state?.ct ?? null);
      if (!ct) return super.emit(event, ...args);
      if (event === "message") return this.#message(ct, args);
      try {
        if (event === "upgrade") {
          const headers = args[0]?.headers ?? {};
          state.answer = headers[ENVELOPE_HEADER] ?? null;
          state.session = headers[SESSION_HEADER] ?? null;
        } else if (event === "open") {
          ct.opened({ answer: state.answer, session: state.session, subprotocol: this.protocol });
        } else if (event === "unexpected-response") {
          state.status = args[1]?.statusCode;
        } else if (event === "error") {
          state.error = args[0];
        } else if (event === "close") {
          if (!ct.open) ct.failed({ status: state.status, error: state.status === undefined ? state.error : undefined });
          else {
            const received = args[0];
            const reason = isBuffer(args[1]) ? args[1].toString("utf8") : String(args[1] ?? "");
            const frameIn = /** @type {any} */ (this)._closeFrameReceived === true;
            let initiator = "remote";
            let code = received;
            if (state.localFirst) {
              initiator = "local";
              if (frameIn && state.localCode !== undefined) code = state.localCode; // the initiator's frame
            } else if (!frameIn) initiator = "none";
            ct.closed({ code, reason, initiator: /** @type {"local" | "remote" | "none"} */ (initiator) });
          }
        }
      } catch (error) {
        warnOnce(`recording the ${String(event)} event`, error);
      }
      return super.emit(event, ...args);
    }

    /**
     * @param {ConnectionTracer} ct
     * @param {any[]} args  (data, isBinary)
     * @returns {boolean}
     */
    #message(ct, args) {
      const [data, isBinary] = args;
      let payload = data;
      /** @type {import("@opentelemetry/api").Context | null} */
      let ctx = null;
      let done = NOTHING;
      try {
        const fragments = Array.isArray(data);
        const wire = fragments ? Buffer.concat(data) : data;
        ({ payload, ctx, done } = ct.receive(wire, !isBinary));
        if (fragments) payload = payload === wire ? data : [payload];
      } catch (error) {
        warnOnce("tracing an inbound message", error);
        payload = data;
      }
      try {
        const emit = () => super.emit("message", payload, isBinary, ...args.slice(2));
        return ctx ? context.with(ctx, emit) : emit();
      } finally {
        done();
      }
    }

    /**
     * @param {any} data
     * @param {any} [sendOptions]
     * @param {(error?: Error) => void} [callback]
     */
    send(data, sendOptions, callback) {
      if (typeof sendOptions === "function") {
        callback = sendOptions;
        sendOptions = undefined;
      }
      const state = /** @type {any} */ (this)[STATE];
      const ct = /** @type {ConnectionTracer | null} */ (state?.ct ?? null);
      if (!ct || this.readyState !== OPEN) return super.send(data, sendOptions, callback);
      const fin = !sendOptions || sendOptions.fin !== false;
      if (state.fragmenting) {
        state.fragmenting = !fin; // a later fragment of a message: the envelope went with its first
        return super.send(data, sendOptions, callback);
      }
      let wire = data;
      let done = NOTHING;
      try {
        const binary = sendOptions?.binary;
        const isText = binary === undefined ? typeof data === "string" : !binary;
        ({ wire, done } = ct.send(data, isText));
        if (binary === undefined && typeof data === "string" && typeof wire !== "string") {
          sendOptions = { ...sendOptions, binary: false }; // text sent as its UTF-8 bytes: still a text frame
        }
      } catch (error) {
        warnOnce("tracing an outbound message", error);
        wire = data;
      }
      state.fragmenting = !fin;
      /** @param {Error} [error] */
      const sent = (error) => {
        done(error);
        if (callback) callback(error);
      };
      try {
        return super.send(wire, sendOptions, sent);
      } catch (error) {
        done(error);
        throw error;
      }
    }

    /**
     * @param {number} [code]
     * @param {any} [reason]
     */
    close(code, reason) {
      const state = /** @type {any} */ (this)[STATE];
      if (state && !state.localFirst && /** @type {any} */ (this)._closeFrameReceived !== true && this.readyState === OPEN) {
        state.localFirst = true; // this end's close frame goes first (ws calls close() to answer the peer's, too)
        state.localCode = code ?? 1005;
      }
      return super.close(code, reason);
    }

    /** The connection's `websocket.session.id`, shared with a wstrace server. */
    get wstraceSessionId() {
      return /** @type {any} */ (this)[STATE]?.ct?.sessionId;
    }

    /** The envelope format in force (`frame`, `json`), or null: plain frames. */
    get wstraceEnvelope() {
      return /** @type {any} */ (this)[STATE]?.ct?.format ?? null;
    }
  }
  Object.defineProperty(TracedWs, TRACED, { value: WebSocket });
  Object.defineProperty(TracedWs, "name", { value: "WebSocket" });
  return /** @type {T} */ (/** @type {unknown} */ (TracedWs));
}
