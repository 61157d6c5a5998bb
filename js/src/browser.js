// The browser client: a WebSocket subclass that carries the page's trace context to a wstrace server and back.
//
// A browser cannot add headers to the upgrade request or read the 101's, so the handshake context and the session
// id travel in the query string (`?traceparent=…&wstrace-session=…`) or in `Sec-WebSocket-Protocol` tokens
// (`wstrace.tp.<traceparent>`, `wstrace.sid.<id>`), and the envelope is forced on at both ends (mode `always`,
// docs/protocol.md section 4). Messages reach the page's listeners without their envelope, while the message's
// `receive` span (or reply stream) is the active span.

import { context } from "@opentelemetry/api";
import {
  ConnectionTracer,
  SESSION_QUERY,
  SESSION_TOKEN,
  TRACEPARENT_TOKEN,
  settings,
  warnOnce,
} from "./core.js";

/**
 * Browser options: the shared ones, plus where the handshake context goes.
 * @typedef {import("./core.js").TracingOptions & {
 *   handshake?: "query" | "subprotocol" | "none",
 *   WebSocket?: typeof WebSocket,
 * }} BrowserOptions
 */

const STATE = Symbol("wstrace");
const TRACED = Symbol.for("wstrace.traced");
/** @type {WeakSet<Event>} events this module dispatched itself */
const OURS = new WeakSet();

/**
 * A property descriptor from `proto` or its prototypes.
 * @param {object} proto
 * @param {string} name
 * @returns {PropertyDescriptor | undefined}
 */
function descriptor(proto, name) {
  for (let p = proto; p; p = Object.getPrototypeOf(p)) {
    const found = Object.getOwnPropertyDescriptor(p, name);
    if (found) return found;
  }
  return undefined;
}

/**
 * The URL and subprotocols to open, with the handshake context and session id added as the options say.
 * @param {string | URL} url
 * @param {string | string[] | undefined} protocols
 * @param {ConnectionTracer} ct
 * @param {"query" | "subprotocol" | "none"} where
 * @returns {[string | URL, string | string[] | undefined]}
 */
function handshakeTarget(url, protocols, ct, where) {
  if (where === "none") return [url, protocols];
  const carrier = ct.handshakeCarrier();
  if (where === "subprotocol") {
    const list = protocols === undefined ? [] : Array.isArray(protocols) ? [...protocols] : [protocols];
    if (carrier.traceparent) list.push(TRACEPARENT_TOKEN + carrier.traceparent);
    list.push(SESSION_TOKEN + ct.sessionId);
    return [url, list];
  }
  const u = new URL(String(url), /** @type {any} */ (globalThis).location?.href);
  const pairs = [...Object.entries(carrier), [SESSION_QUERY, ct.sessionId]];
  const added = pairs.map(([k, v]) => `${encodeURIComponent(k)}=${encodeURIComponent(v)}`).join("&");
  u.search = u.search && u.search !== "?" ? `${u.search}&${added}` : `?${added}`;
  return [u.href, protocols];
}

/**
 * A tracer that records nothing, for a connection whose tracing could not start: the envelope still applies.
 * @param {import("./core.js").Settings} s
 * @returns {ConnectionTracer}
 */
function untraced(s) {
  return new ConnectionTracer({ ...s, tracerProvider: undefined, sessionId: "0".repeat(32) });
}

/**
 * A WebSocket class (a subclass of `Base`, by default the page's `WebSocket`) whose connections are traced.
 * @param {typeof WebSocket} [Base]
 * @param {BrowserOptions} [options]
 * @returns {typeof WebSocket}
 */
export function tracedWebSocketClass(Base, options = {}) {
  const Native = Base ?? options.WebSocket ?? globalThis.WebSocket;
  if (typeof Native !== "function") throw new TypeError("wstrace: no WebSocket class to trace");
  const s = settings(options, "always", ["handshake", "WebSocket"]);
  if (s.envelope === "negotiate") {
    throw new TypeError("wstrace: a browser cannot negotiate the envelope (it cannot read the 101): use always or off");
  }
  const where = options.handshake ?? "query";
  if (!["query", "subprotocol", "none"].includes(where)) throw new TypeError(`wstrace: bad option handshake: ${where}`);
  const proto = Native.prototype;
  const nativeBinaryType = descriptor(proto, "binaryType");
  const nativeProtocol = descriptor(proto, "protocol");
  const nativeUrl = descriptor(proto, "url");

  class TracedWebSocket extends Native {
    /**
     * @param {string | URL} url
     * @param {string | string[]} [protocols]
     */
    constructor(url, protocols) {
      /** @type {ConnectionTracer | null} */
      let ct = null;
      /** @type {[string | URL, string | string[] | undefined]} */
      let target = [url, protocols];
      try {
        ct = new ConnectionTracer(s);
        ct.startHandshake(url);
        target = handshakeTarget(url, protocols, ct, where);
      } catch (error) {
        warnOnce("preparing the handshake", error);
        target = [url, protocols];
      }
      try {
        if (target[1] === undefined) super(target[0]);
        else super(target[0], target[1]);
      } catch (error) {
        ct?.failed({ error });
        throw error; // the page's own mistake (a bad URL or subprotocol): the native error, as without wstrace
      }
      /** @type {{ct: ConnectionTracer | null, url: string, binaryType: BinaryType, closeCalled: boolean, tracer: ConnectionTracer}} */
      const state = {
        ct,
        url: String(url),
        binaryType: "blob",
        closeCalled: false,
        tracer: ct ?? untraced(s), // without tracing, the envelope still applies
      };
      try {
        state.url = new URL(String(url), /** @type {any} */ (globalThis).location?.href).href;
      } catch {
        // keep it as given
      }
      Object.defineProperty(this, STATE, { value: state });
      try {
        nativeBinaryType?.set?.call(this, "arraybuffer"); // stripped synchronously; a Blob is made for the page
      } catch {
        // a class without binaryType: its default
      }
      const options = { capture: true }; // at the target capturing listeners run first: ours is the very first
      super.addEventListener("open", () => this.#opened(), options);
      super.addEventListener("message", (event) => this.#message(/** @type {MessageEvent} */ (event)), options);
      super.addEventListener("close", (event) => this.#closed(/** @type {CloseEvent} */ (event)), options);
    }

    #opened() {
      const state = /** @type {any} */ (this)[STATE];
      try {
        state.tracer.opened({ subprotocol: nativeProtocol?.get?.call(this) });
      } catch (error) {
        warnOnce("recording the open", error);
      }
    }

    /** @param {CloseEvent} event */
    #closed(event) {
      const state = /** @type {any} */ (this)[STATE];
      try {
        const tracer = state.tracer;
        if (!tracer.open) {
          tracer.failed({});
          return;
        }
        const code = event.code ?? 1005;
        const initiator = state.closeCalled ? "local" : code === 1006 ? "none" : "remote";
        tracer.closed({ code, reason: event.reason, initiator });
      } catch (error) {
        warnOnce("recording the close", error);
      }
    }

    /**
     * Strip the envelope and dispatch the message anew, in the context of its span, to every listener.
     * @param {MessageEvent} event
     */
    #message(event) {
      if (OURS.has(event)) return;
      const state = /** @type {any} */ (this)[STATE];
      let payload = event.data;
      /** @type {import("@opentelemetry/api").Context | null} */
      let ctx = null;
      let done = /** @type {(error?: unknown) => void} */ (() => {});
      /** @type {MessageEvent} */
      let out;
      try {
        const isText = typeof event.data === "string";
        ({ payload, ctx, done } = state.tracer.receive(event.data, isText));
        if (!isText && state.binaryType === "blob" && typeof Blob !== "undefined") payload = new Blob([/** @type {BlobPart} */ (payload)]);
        out = new MessageEvent("message", {
          data: payload,
          origin: event.origin,
          lastEventId: event.lastEventId,
          source: event.source,
          ports: [...(event.ports ?? [])],
        });
      } catch (error) {
        warnOnce("stripping an inbound message", error);
        return; // the native event goes on to the page's listeners, unchanged
      }
      event.stopImmediatePropagation();
      OURS.add(out);
      try {
        if (ctx) context.with(ctx, () => this.dispatchEvent(out));
        else this.dispatchEvent(out);
      } finally {
        done();
      }
    }

    /** @param {string | ArrayBufferLike | Blob | ArrayBufferView} data */
    send(data) {
      const state = /** @type {any} */ (this)[STATE];
      if (!state || this.readyState !== Native.OPEN) return super.send(data);
      let wire = data;
      let done = /** @type {(error?: unknown) => void} */ (() => {});
      try {
        ({ wire, done } = state.tracer.send(data, typeof data === "string"));
      } catch (error) {
        warnOnce("tracing an outbound message", error);
        wire = data;
      }
      try {
        super.send(wire);
      } catch (error) {
        done(error);
        throw error;
      }
      done();
    }

    /**
     * @param {number} [code]
     * @param {string} [reason]
     */
    close(code, reason) {
      const state = /** @type {any} */ (this)[STATE];
      if (state && this.readyState <= Native.OPEN) state.closeCalled = true;
      return code === undefined ? super.close() : super.close(code, reason);
    }

    get binaryType() {
      const state = /** @type {any} */ (this)[STATE];
      return state ? state.binaryType : /** @type {BinaryType} */ ("blob");
    }

    set binaryType(value) {
      const state = /** @type {any} */ (this)[STATE];
      if (state && (value === "blob" || value === "arraybuffer")) state.binaryType = value;
    }

    /** The URL the page asked for: without the handshake context and session id wstrace added. */
    get url() {
      const state = /** @type {any} */ (this)[STATE];
      return state ? state.url : nativeUrl?.get?.call(this);
    }

    /** The subprotocol the server selected; empty when it only echoed wstrace's own token. */
    get protocol() {
      const selected = nativeProtocol?.get?.call(this) ?? "";
      return selected.startsWith(TRACEPARENT_TOKEN) || selected.startsWith(SESSION_TOKEN) ? "" : selected;
    }

    /** The connection's `websocket.session.id`, shared with a wstrace server. */
    get wstraceSessionId() {
      return /** @type {any} */ (this)[STATE]?.tracer.sessionId;
    }
  }
  Object.defineProperty(TracedWebSocket, TRACED, { value: Native });
  Object.defineProperty(TracedWebSocket, "name", { value: "WebSocket" });
  return /** @type {typeof WebSocket} */ (/** @type {unknown} */ (TracedWebSocket));
}

/**
 * Open a traced WebSocket: `new WebSocket(url, protocols)` with the page's context carried to the server.
 * @param {string | URL} url
 * @param {string | string[]} [protocols]
 * @param {BrowserOptions} [options]
 * @returns {WebSocket}
 */
export function tracedWebSocket(url, protocols, options = {}) {
  const Traced = tracedWebSocketClass(options.WebSocket, options);
  return protocols === undefined ? new Traced(url) : new Traced(url, protocols);
}

/**
 * Replace `globalThis.WebSocket` with a traced subclass, so every WebSocket the page opens from now on is traced.
 * Returns a function that puts the original back. Calling it again while instrumented changes nothing.
 * @param {BrowserOptions} [options]
 * @returns {() => void}
 */
export function instrumentWebSocket(options = {}) {
  const current = globalThis.WebSocket;
  if (typeof current !== "function" || /** @type {any} */ (current)[TRACED]) return () => {};
  const Traced = tracedWebSocketClass(current, options);
  globalThis.WebSocket = Traced;
  return () => {
    if (globalThis.WebSocket === Traced) globalThis.WebSocket = current;
  };
}

/** Put back the page's own WebSocket class, if `instrumentWebSocket` replaced it. */
export function uninstrumentWebSocket() {
  const current = /** @type {any} */ (globalThis.WebSocket);
  if (current && current[TRACED]) globalThis.WebSocket = current[TRACED];
}
