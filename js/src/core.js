// One traced client connection: its handshake span, message spans, reply streams and runs, and its close, with the
// names, kinds and attributes of the Python library (docs/semantic-conventions.md, docs/streams.md). The browser
// and `ws` wrappers translate their events into calls on a ConnectionTracer; nothing here touches a socket.
//
// Every public method catches its own failures: instrumentation never throws into the application.

import { context, propagation, trace, ROOT_CONTEXT, SpanKind, SpanStatusCode, createContextKey } from "@opentelemetry/api";
import {
  DEFAULT_JSON_FIELD,
  DEFAULT_MAX_HEADER_BYTES,
  MAX_HEADER_BYTES_LIMIT,
  ENVELOPE_VERSION,
  binaryPrefix,
  byteSize,
  decode,
  decodeJsonField,
  encode,
  encodeJsonField,
} from "./envelope.js";
import { VERSION } from "./version.js";

/** @typedef {import("@opentelemetry/api").Span} Span */
/** @typedef {import("@opentelemetry/api").SpanContext} SpanContext */
/** @typedef {import("@opentelemetry/api").Context} Context */
/** @typedef {import("@opentelemetry/api").Link} Link */
/** @typedef {import("@opentelemetry/api").TracerProvider} TracerProvider */
/** @typedef {import("./envelope.js").Carrier} Carrier */

/**
 * Options shared by the browser and Node clients.
 * @typedef {object} TracingOptions
 * @property {TracerProvider} [tracerProvider]  default: the global one
 * @property {"always" | "negotiate" | "off"} [envelope]  browser default `always`, `ws` default `negotiate`
 * @property {"frame" | "json"} [envelopeFormat]  default `frame`
 * @property {string} [jsonField]  member name of the `json` format, default `_wstrace`
 * @property {number} [maxEnvelopeBytes]  envelope header cap, default 8192
 * @property {"parent" | "link" | "ignore"} [trust]  what to do with the server's context, default `parent`
 * @property {string} [route]  route template for span names (`send /chat`); default none (`send`)
 * @property {boolean} [streams]  reply streams and runs (default true); false: a span per message
 * @property {number} [streamIdle]  seconds of silence that end a stream, default 5
 * @property {number} [runLimit]  seconds after which a run ends and the next message starts a new one, default 60
 * @property {number} [stallThreshold]  seconds: a longer gap between chunks is a stall event, default 1
 * @property {(payload: unknown) => boolean} [streamEnd]  true for the last chunk of a stream
 * @property {string} [sessionId]  32 lowercase hex digits; default random
 */

/** @typedef {Required<Omit<TracingOptions, "tracerProvider" | "route" | "streamEnd" | "sessionId">> & TracingOptions} Settings */

export const ENVELOPE_HEADER = "wstrace-envelope";
export const SESSION_HEADER = "wstrace-session";
export const SESSION_QUERY = "wstrace-session";
export const TRACEPARENT_TOKEN = "wstrace.tp.";
export const SESSION_TOKEN = "wstrace.sid.";

const REQUEST = createContextKey("wstrace-request");
const SESSION = /^[0-9a-f]{32}$/;
const ERROR_CODES = new Set([1002, 1003, 1006, 1007, 1008, 1009, 1010, 1011, 1014, 1015]);
const MAX_INTERVALS = 65536;
const MAX_STALL_EVENTS = 32;
/** @param {unknown} [_error] */
const NOTHING = (_error) => {};

const OPTIONS = new Set([
  "tracerProvider",
  "envelope",
  "envelopeFormat",
  "jsonField",
  "maxEnvelopeBytes",
  "trust",
  "route",
  "streams",
  "streamIdle",
  "runLimit",
  "stallThreshold",
  "streamEnd",
  "sessionId",
]);

/**
 * Options with their defaults, checked; a bad or unknown option throws a TypeError naming it (at setup, never per
 * message).
 * @param {TracingOptions} options
 * @param {"always" | "negotiate" | "off"} defaultEnvelope
 * @param {string[]} [more]  names of the caller's own options, also allowed
 * @returns {Settings}
 */
export function settings(options = {}, defaultEnvelope = "negotiate", more = []) {
  for (const name of Object.keys(options)) {
    if (!OPTIONS.has(name) && !more.includes(name)) throw new TypeError(`wstrace: unknown option ${name}`);
  }
  /** @type {Settings} */
  const s = {
    envelope: defaultEnvelope,
    envelopeFormat: "frame",
    jsonField: DEFAULT_JSON_FIELD,
    maxEnvelopeBytes: DEFAULT_MAX_HEADER_BYTES,
    trust: "parent",
    streams: true,
    streamIdle: 5,
    runLimit: 60,
    stallThreshold: 1,
    ...Object.fromEntries(Object.entries(options).filter(([, v]) => v !== undefined)),
  };
  /** @param {string} name @param {boolean} ok */
  const check = (name, ok) => {
    if (!ok) throw new TypeError(`wstrace: bad option ${name}: ${String(/** @type {any} */ (s)[name])}`);
  };
  check("envelope", ["always", "negotiate", "off"].includes(s.envelope));
  check("envelopeFormat", ["frame", "json"].includes(s.envelopeFormat));
  check("trust", ["parent", "link", "ignore"].includes(s.trust));
  check("jsonField", typeof s.jsonField === "string" && s.jsonField.length > 0);
  check(
    "maxEnvelopeBytes",
    Number.isInteger(s.maxEnvelopeBytes) && s.maxEnvelopeBytes >= 0 && s.maxEnvelopeBytes <= MAX_HEADER_BYTES_LIMIT,
  );
  for (const name of /** @type {const} */ (["streamIdle", "runLimit", "stallThreshold"])) {
    check(name, typeof s[name] === "number" && s[name] >= 0);
  }
  check("streamEnd", s.streamEnd === undefined || typeof s.streamEnd === "function");
  check("route", s.route === undefined || typeof s.route === "string");
  check("sessionId", s.sessionId === undefined || SESSION.test(s.sessionId));
  return s;
}

/** @returns {number} now, in milliseconds since the epoch, with sub-millisecond precision */
function now() {
  return performance.timeOrigin + performance.now();
}

/** @returns {string} a random session id: 32 lowercase hex digits */
export function newSessionId() {
  const bytes = new Uint8Array(16);
  const crypto = /** @type {Crypto | undefined} */ (globalThis.crypto);
  if (crypto && typeof crypto.getRandomValues === "function") crypto.getRandomValues(bytes);
  else for (let i = 0; i < bytes.length; i++) bytes[i] = Math.floor(Math.random() * 256); // Node 18: no global crypto
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

/**
 * A URL without its query, fragment and credentials, as `url.full` records it.
 * @param {URL} url
 * @param {string} scheme  `ws` or `wss` (a browser also takes `http` and `https` URLs)
 * @returns {string}
 */
function fullUrl(url, scheme) {
  return `${scheme}://${url.host}${url.pathname}`;
}

/**
 * @param {SpanContext} spanContext
 * @param {string} kind  `wstrace.link.kind`
 * @returns {Link}
 */
function link(spanContext, kind) {
  return { context: spanContext, attributes: { "wstrace.link.kind": kind } };
}

/**
 * The one way a span is marked failed: the exception (if one), `error.type` and status ERROR.
 * @param {Span} span
 * @param {unknown} error  an exception, or a string naming the failure
 * @param {string} [description]
 */
function recordError(span, error, description) {
  let type = "_OTHER";
  if (error instanceof Error) {
    span.recordException(error);
    type = error.name || error.constructor.name || type;
  } else if (typeof error === "string" && error) {
    type = error;
  }
  span.setAttribute("error.type", type);
  span.setStatus({
    code: SpanStatusCode.ERROR,
    message: description ?? (error instanceof Error ? error.message : String(error)),
  });
}

let warned = false;
/**
 * Say once (per page or process) that instrumentation failed, then keep quiet.
 * @param {string} what
 * @param {unknown} error
 */
export function warnOnce(what, error) {
  if (warned) return;
  warned = true;
  try {
    console.warn(`wstrace: ${what} failed; the message went through untraced:`, error);
  } catch {
    // no console
  }
}

/** Timing and size of one stream's chunks, on a span that ends with its summary. */
class Stream {
  /**
   * @param {ConnectionTracer} conn
   * @param {Span} span
   * @param {number} startMs  the request's time (replies), or the first chunk's (runs)
   * @param {boolean} answers  a reply: time to first and last chunk mean something
   */
  constructor(conn, span, startMs, answers) {
    this.conn = conn;
    this.span = span;
    this.startMs = startMs;
    this.answers = answers;
    this.firstMs = 0;
    this.lastMs = 0;
    this.count = 0;
    this.size = 0;
    this.maxGap = 0;
    this.stalls = 0;
    /** @type {number[]} */
    this.gaps = [];
    this.ended = false;
    /** @type {ReturnType<typeof setTimeout> | null} */
    this.timer = null;
    /** @type {Carrier | null} the context its chunks carry, injected once */
    this.carrier = null;
    conn.streams.add(this);
  }

  /**
   * @param {number} size
   * @param {number} at
   */
  chunk(size, at) {
    if (this.ended) return;
    this.count += 1;
    this.size += size;
    if (this.count === 1) {
      this.firstMs = this.lastMs = at;
      return;
    }
    const gap = at - this.lastMs;
    this.lastMs = at;
    if (gap > this.maxGap) this.maxGap = gap;
    if (this.gaps.length < MAX_INTERVALS) this.gaps.push(gap);
    else {
      const slot = Math.floor(Math.random() * (this.count - 1)); // a uniform sample of a very long stream
      if (slot < MAX_INTERVALS) this.gaps[slot] = gap;
    }
    const stall = this.conn.settings.stallThreshold * 1000;
    if (stall > 0 && gap > stall) {
      this.stalls += 1;
      if (this.stalls <= MAX_STALL_EVENTS) {
        this.span.addEvent("wstrace.stream.stall", {
          "wstrace.stream.stall.duration": gap / 1000,
          "wstrace.stream.chunk.index": this.count,
        });
      }
    }
  }

  /** @returns {Record<string, number>} the `wstrace.stream.*` attributes */
  attributes() {
    /** @type {Record<string, number>} */
    const a = {
      "wstrace.stream.chunk_count": this.count,
      "wstrace.stream.size": this.size,
      "messaging.message.body.size": this.size,
    };
    if (this.count && this.answers) {
      a["wstrace.stream.time_to_first_chunk"] = (this.firstMs - this.startMs) / 1000;
      a["wstrace.stream.time_to_last_chunk"] = (this.lastMs - this.startMs) / 1000;
    }
    if (this.count > 1) {
      const ordered = [...this.gaps].sort((x, y) => x - y);
      const n = ordered.length;
      const pick = (/** @type {number} */ q) => ordered[Math.max(0, Math.min(n - 1, Math.ceil(q * n - 1e-6) - 1))] / 1000;
      a["wstrace.stream.chunk_interval.mean"] = (this.lastMs - this.firstMs) / (this.count - 1) / 1000;
      a["wstrace.stream.chunk_interval.max"] = this.maxGap / 1000;
      a["wstrace.stream.chunk_interval.p50"] = pick(0.5);
      a["wstrace.stream.chunk_interval.p95"] = pick(0.95);
    }
    a["wstrace.stream.stalls"] = this.stalls;
    return a;
  }

  /**
   * End the stream once: its summary on the span, which ends at its last chunk (or now).
   * @param {{error?: unknown, atLastChunk?: boolean}} [how]
   */
  end(how = {}) {
    if (this.ended) return;
    this.ended = true;
    this.conn.streams.delete(this);
    if (this.timer !== null) clearTimeout(this.timer);
    this.timer = null;
    try {
      this.span.setAttributes(this.attributes());
      if (how.error !== undefined) recordError(this.span, how.error);
      this.span.end(how.atLastChunk && this.count ? this.lastMs : undefined);
    } catch (error) {
      warnOnce("ending a stream span", error);
    }
  }
}

/**
 * A client's request: the messages answering it form its reply stream.
 * @typedef {object} Request
 * @property {ConnectionTracer} conn
 * @property {Context} ctx  the context of the request's span
 * @property {number} startMs  when it was sent (a run: its latest message)
 * @property {Stream | null} stream
 * @property {Context | null} base  the context the reply stream is current in
 * @property {Context | null} below  the application's context when the reply began
 * @property {boolean} done
 */

/**
 * Messages this end sends in a row under one context: one `send` span.
 * @typedef {{key: string, stream: Stream, request: Request | null}} Run
 */

/**
 * Messages received in a row that carry one sender context: one receive stream from the second on.
 * @typedef {{key: string, firstMs: number, firstSize: number, stream: Stream | null, base: Context | null}} InRun
 */

/**
 * What the application sends, ready for the wire, and what to call once the socket took it (or refused it).
 * @typedef {{wire: any, done: (error?: unknown) => void}} Outbound
 */

/**
 * What the application receives, the context to handle it in, and what to call once it was handled.
 * @typedef {{payload: any, ctx: Context | null, done: (error?: unknown) => void}} Inbound
 */

export class ConnectionTracer {
  /**
   * @param {Settings} s
   */
  constructor(s) {
    this.settings = s;
    const provider = s.tracerProvider ?? trace.getTracerProvider();
    this.tracer = provider.getTracer("wstrace", VERSION);
    const suffix = s.route ? ` ${s.route}` : "";
    this.names = { handshake: `GET${suffix}`, send: `send${suffix}`, receive: `receive${suffix}`, close: `close${suffix}` };
    this.sessionId = s.sessionId ?? newSessionId();
    /** @type {Span | null} */
    this.handshake = null;
    /** @type {SpanContext | null} the sampled handshake, which every span links to */
    this.handshakeContext = null;
    this.recording = false;
    /** @type {"frame" | "json" | null} the envelope in force */
    this.format = s.envelope === "always" ? s.envelopeFormat : null;
    this.sent = 0;
    this.received = 0;
    /** @type {Run | null} */
    this.run = null;
    /** @type {InRun | null} */
    this.inrun = null;
    /** @type {Request | null} */
    this.lastRequest = null;
    /** @type {SpanContext | null} */
    this.lastInbound = null;
    /** @type {Set<Stream>} */
    this.streams = new Set();
    this.open = false;
    /** the connection ended (closed, or never opened): nothing more is recorded */
    this.over = false;
  }

  // Handshake ---------------------------------------------------------------------------------------------------

  /**
   * Start the handshake span (`GET`, CLIENT) as a child of the current context.
   * @param {string | URL} url
   */
  startHandshake(url) {
    try {
      /** @type {Record<string, string | number>} */
      const attributes = { "http.request.method": "GET", "websocket.session.id": this.sessionId };
      try {
        const u = new URL(String(url), /** @type {any} */ (globalThis).location?.href);
        const scheme = u.protocol.replace(/:$/, "").replace(/^http/, "ws");
        attributes["url.full"] = fullUrl(u, scheme);
        attributes["url.scheme"] = scheme;
        attributes["server.address"] = u.hostname.replace(/^\[|\]$/g, "");
        attributes["server.port"] = u.port ? Number(u.port) : scheme === "wss" ? 443 : 80;
      } catch {
        // an unparsable URL: the WebSocket constructor says so to the application
      }
      const span = this.tracer.startSpan(this.names.handshake, { kind: SpanKind.CLIENT, attributes }, context.active());
      this.handshake = span;
      this.recording = span.isRecording();
      if (this.recording) this.handshakeContext = span.spanContext();
    } catch (error) {
      warnOnce("starting the handshake span", error);
    }
  }

  /** @returns {Carrier} the handshake's context, as the global propagator writes it */
  handshakeCarrier() {
    /** @type {Carrier} */
    const carrier = {};
    try {
      if (this.handshake) propagation.inject(trace.setSpan(context.active(), this.handshake), carrier);
    } catch (error) {
      warnOnce("injecting the handshake context", error);
    }
    return carrier;
  }

  /** @returns {Record<string, string>} headers a client that can send them adds to its upgrade request */
  requestHeaders() {
    /** @type {Record<string, string>} */
    const headers = { ...this.handshakeCarrier() };
    if (this.settings.envelope !== "off") headers[ENVELOPE_HEADER] = `${this.settings.envelopeFormat}/${ENVELOPE_VERSION}`;
    headers[SESSION_HEADER] = this.sessionId;
    return headers;
  }

  /**
   * The 101 arrived: settle the envelope (from the server's answer, if it could be read) and end the handshake.
   * @param {{answer?: string | null, session?: string | null, subprotocol?: string, status?: number}} [response]
   */
  opened(response = {}) {
    this.open = true;
    try {
      const agreed = parseOffer(response.answer);
      const mode = this.settings.envelope;
      this.format = mode === "always" ? agreed ?? this.settings.envelopeFormat : mode === "negotiate" ? agreed : null;
      if (response.session && SESSION.test(response.session)) this.sessionId = response.session;
      const span = this.handshake;
      if (span && this.recording) {
        span.setAttributes({
          "http.response.status_code": response.status ?? 101,
          "websocket.envelope": this.format ?? "none",
          "websocket.session.id": this.sessionId,
        });
        const sub = response.subprotocol;
        if (sub && !sub.startsWith(TRACEPARENT_TOKEN) && !sub.startsWith(SESSION_TOKEN)) {
          span.setAttribute("websocket.subprotocol", sub);
        }
      }
      span?.end();
    } catch (error) {
      warnOnce("recording the opened connection", error);
    }
  }

  /**
   * The connection never opened.
   * @param {{status?: number, error?: unknown}} [failure]
   */
  failed(failure = {}) {
    if (this.over) return;
    this.over = true;
    try {
      const span = this.handshake;
      if (!span) return;
      if (this.recording) {
        if (failure.status !== undefined) span.setAttribute("http.response.status_code", failure.status);
        const error = failure.error ?? (failure.status !== undefined ? String(failure.status) : "_OTHER");
        recordError(span, error, failure.status !== undefined ? `HTTP ${failure.status}` : "WebSocket handshake failed");
      }
      span.end();
    } catch (error) {
      warnOnce("recording a failed handshake", error);
    }
  }

  // Envelope ----------------------------------------------------------------------------------------------------

  /**
   * `payload` in the envelope in force, holding `carrier`; an empty envelope if the carrier cannot be encoded.
   * @param {any} payload
   * @param {boolean} isText
   * @param {Carrier | null} carrier
   * @returns {any}
   */
  wrap(payload, isText, carrier) {
    const format = this.format;
    if (format === null) return payload;
    const s = this.settings;
    const isBlob = typeof Blob !== "undefined" && payload instanceof Blob;
    const once = (/** @type {Carrier | null} */ c) => {
      if (format === "json") {
        if (isBlob) return payload; // cannot be looked into synchronously: sent as it is (section 6: not an object)
        return encodeJsonField(payload, c, { field: s.jsonField, maxHeaderBytes: s.maxEnvelopeBytes });
      }
      if (isBlob) return new Blob([/** @type {BlobPart} */ (binaryPrefix(c, { maxHeaderBytes: s.maxEnvelopeBytes })), payload]);
      return encode(payload, c, { text: isText, maxHeaderBytes: s.maxEnvelopeBytes });
    };
    try {
      return once(carrier);
    } catch (error) {
      // Too much baggage: the frame goes with an empty envelope, never without one (the peer strips one from each).
      if (carrier) {
        try {
          return once(null);
        } catch {
          // below
        }
      }
      warnOnce("encoding the envelope", error);
      return payload;
    }
  }

  /**
   * The application's payload and the sender's carrier.
   * @param {any} wire
   * @param {boolean} isText
   * @returns {{payload: any, carrier: Carrier | null}}
   */
  strip(wire, isText) {
    const s = this.settings;
    if (this.format === "json") return decodeJsonField(wire, { field: s.jsonField, maxHeaderBytes: s.maxEnvelopeBytes });
    if (this.format === "frame") return decode(wire, { text: isText, maxHeaderBytes: s.maxEnvelopeBytes });
    return { payload: wire, carrier: null };
  }

  // Messages ----------------------------------------------------------------------------------------------------

  /**
   * An outbound message: its frame for the wire, and its span (or its run's chunk).
   * @param {any} payload
   * @param {boolean} isText
   * @returns {Outbound}
   */
  send(payload, isText) {
    /** @type {Carrier | null} */
    let carrier = null;
    /** @type {(error?: unknown) => void} */
    let done = NOTHING;
    try {
      if (this.recording && !this.over) {
        this.sent += 1;
        const size = byteSize(payload) ?? 0;
        const s = this.settings;
        if (s.streams) {
          const out = this.outbound(context.active(), payload, isText, size);
          carrier = out.carrier;
          done = out.done;
        } else {
          const span = this.messageSpan(this.names.send, SpanKind.PRODUCER, context.active(), isText, this.sent, size, []);
          carrier = this.inject(span);
          done = (error) => {
            if (error !== undefined && error !== null) recordError(span, error);
            span.end();
          };
        }
      }
    } catch (error) {
      warnOnce("tracing an outbound message", error);
    }
    return { wire: this.wrap(payload, isText, carrier), done };
  }

  /**
   * A message sent outside any reply: it joins the run sent under the same context, or starts one. A send while
   * this connection's reply stream is current is a new request: it leaves the reply's trace, linked `previous`.
   * @param {Context} current
   * @param {any} payload
   * @param {boolean} isText
   * @param {number} size
   * @returns {{carrier: Carrier | null, done: (error?: unknown) => void}}
   */
  outbound(current, payload, isText, size) {
    const s = this.settings;
    const at = now();
    /** @type {SpanContext | null} */
    let previous = null;
    let fresh = false;
    const request = /** @type {Request | undefined} */ (current.getValue(REQUEST));
    if (request && request.conn === this) {
      if (request.stream) previous = request.stream.span.spanContext();
      current = request.below ?? ROOT_CONTEXT;
      fresh = true;
    }
    const parent = trace.getSpanContext(current);
    const key = parent && trace.isSpanContextValid(parent) ? parent.spanId : "";
    let run = this.run;
    if (run) {
      const stream = run.stream;
      if (fresh || run.key !== key || stream.ended || at - stream.lastMs > s.streamIdle * 1000) {
        stream.end({ atLastChunk: true }); // another context, or an idle gap: this message starts a new run
        run = this.run = null;
      } else if (s.runLimit > 0 && at - stream.firstMs > s.runLimit * 1000) {
        stream.end({ atLastChunk: true }); // long enough: export it, and chain the next run to it
        previous = stream.span.spanContext();
        run = this.run = null;
      }
    }
    if (!run) {
      /** @type {Link[]} */
      const links = [];
      if (previous) links.push(link(previous, "previous"));
      else if (!key && this.lastInbound) links.push(link(this.lastInbound, "inbound"));
      const span = this.messageSpan(this.names.send, SpanKind.PRODUCER, current, isText, this.sent, undefined, links, at);
      run = this.run = { key, stream: new Stream(this, span, at, false), request: null };
      this.watch(run.stream);
      run.request = this.trackRequest(trace.setSpan(current, span), at);
    } else if (run.request) {
      run.request.startMs = at; // a reply to a run answers its latest message
    }
    const stream = run.stream;
    stream.chunk(size, at);
    if (stream.carrier === null) stream.carrier = this.inject(stream.span);
    const ends = s.streamEnd !== undefined && predicate(s.streamEnd, payload);
    return {
      carrier: stream.carrier,
      done: (error) => {
        if (ends || (error !== undefined && error !== null)) stream.end({ error: ends ? undefined : error });
      },
    };
  }

  /**
   * A request was sent: the messages that answer it form its reply stream, up to the next request.
   * @param {Context} ctx
   * @param {number} at
   * @returns {Request}
   */
  trackRequest(ctx, at) {
    const previous = this.lastRequest;
    if (previous && previous.stream) previous.stream.end({ atLastChunk: true });
    const request = { conn: this, ctx, startMs: at, stream: null, base: null, below: null, done: false };
    this.lastRequest = request;
    return request;
  }

  /**
   * An inbound message: strip the envelope, start its span (or count it in its stream).
   * @param {any} wire
   * @param {boolean} isText
   * @returns {Inbound}
   */
  receive(wire, isText) {
    let decoded;
    try {
      decoded = this.strip(wire, isText);
    } catch (error) {
      warnOnce("stripping the envelope", error);
      decoded = { payload: wire, carrier: null };
    }
    const { payload, carrier } = decoded;
    try {
      if (!this.recording || this.over) return { payload, ctx: null, done: NOTHING };
      this.received += 1;
      const at = now();
      const size = byteSize(payload) ?? 0;
      const ambient = context.active();
      /** @type {Span} */
      let span;
      /** @type {Context} */
      let ctx;
      let own = false;
      /** @type {Stream | null} */
      let ends = null;
      if (this.settings.streams) {
        const request = this.requestFor(at, carrier);
        this.endPush();
        if (request) {
          [span, ends] = this.replyReceived(request, payload, carrier, isText, size, at, ambient);
          if (request.below === null) request.below = ambient;
          ctx = trace.setSpan(request.base ?? ambient, span).setValue(REQUEST, request);
        } else {
          const sender = this.remote(carrier);
          const chunk = this.receivedRun(sender, isText, size, at, ambient);
          if (chunk) [span, ctx] = chunk;
          else {
            let base;
            [span, base] = this.receiveSpan(sender, isText, this.received, size, ambient, null, at);
            ctx = trace.setSpan(base, span);
            own = true;
          }
        }
      } else {
        let base;
        [span, base] = this.receiveSpan(this.remote(carrier), isText, this.received, size, ambient, null, at);
        ctx = trace.setSpan(base, span);
        own = true;
      }
      this.lastInbound = span.spanContext();
      const handled = span;
      const ending = ends;
      return {
        payload,
        ctx,
        done: (error) => {
          try {
            if (own) {
              if (error !== undefined && error !== null) recordError(handled, error);
              handled.end();
            }
            if (ending) ending.end({ error: error ?? undefined });
          } catch (e) {
            warnOnce("ending a receive span", e);
          }
        },
      };
    } catch (error) {
      warnOnce("tracing an inbound message", error);
      return { payload, ctx: null, done: NOTHING };
    }
  }

  /**
   * The request an inbound message answers, if it is still streaming. A first answer later than `streamIdle` is
   * its reply only if its envelope puts the sender in the request's trace.
   * @param {number} at
   * @param {Carrier | null} carrier
   * @returns {Request | null}
   */
  requestFor(at, carrier) {
    const request = this.lastRequest;
    if (!request || request.done) return null;
    const idle = this.settings.streamIdle * 1000;
    const stream = request.stream;
    if (!stream) {
      if (at - request.startMs > idle && !this.inTrace(carrier, request.ctx)) {
        request.done = true;
        return null;
      }
    } else if (stream.ended || at - stream.lastMs > idle) {
      stream.end({ atLastChunk: true });
      request.done = true;
      return null;
    }
    return request;
  }

  /**
   * @param {Carrier | null} carrier
   * @param {Context} ctx
   * @returns {boolean}
   */
  inTrace(carrier, ctx) {
    const sender = carrier ? this.remote(carrier)[1] : null;
    return sender !== null && sender.traceId === trace.getSpanContext(ctx)?.traceId;
  }

  /** The connection received a message: a run sent with no context (pushes) is over. */
  endPush() {
    const run = this.run;
    if (run && run.key === "") {
      run.stream.end({ atLastChunk: true });
      this.run = null;
    }
  }

  /**
   * A message answering `request` joins its reply stream, started by its first chunk: a child of the server's
   * stream span (from the envelope), else of the request's own span.
   * @param {Request} request
   * @param {any} payload
   * @param {Carrier | null} carrier
   * @param {boolean} isText
   * @param {number} size
   * @param {number} at
   * @param {Context} ambient
   * @returns {[Span, Stream | null]}  the stream's span, and the stream if this chunk ends it (`streamEnd`)
   */
  replyReceived(request, payload, carrier, isText, size, at, ambient) {
    let stream = request.stream;
    if (!stream) {
      const [span, base] = this.receiveSpan(this.remote(carrier), isText, this.received, undefined, ambient, request.ctx, at);
      request.base = base;
      stream = request.stream = new Stream(this, span, request.startMs, true);
      this.watch(stream);
    }
    stream.chunk(size, at);
    /** @type {Stream | null} */
    let ends = null;
    const end = this.settings.streamEnd;
    if (end !== undefined && predicate(end, payload)) {
      request.done = true;
      ends = stream;
    }
    return [stream.span, ends];
  }

  /**
   * A message outside any reply: a chunk of the peer's run when it carries the same sender context as the message
   * before it (the stream span and the context to handle it in), else null (a receive span of its own).
   * @param {[Context | null, SpanContext | null]} sender
   * @param {boolean} isText
   * @param {number} size
   * @param {number} at
   * @param {Context} ambient
   * @returns {[Span, Context] | null}
   */
  receivedRun(sender, isText, size, at, ambient) {
    const key = sender[1] ? sender[1].spanId : "";
    let run = this.inrun;
    if (run) {
      const stream = run.stream;
      const last = stream ? stream.lastMs : run.firstMs;
      if (run.key !== key || at - last > this.settings.streamIdle * 1000 || (stream && stream.ended)) {
        stream?.end({ atLastChunk: true });
        run = this.inrun = null;
      }
    }
    if (!key) return null;
    if (!run) {
      this.inrun = { key, firstMs: at, firstSize: size, stream: null, base: null };
      return null;
    }
    let stream = run.stream;
    if (!stream) {
      // The second message of the peer's run: one receive stream from here on, dated from its first message.
      const [span, base] = this.receiveSpan(sender, isText, this.received - 1, undefined, ambient, null, run.firstMs);
      run.base = base;
      stream = run.stream = new Stream(this, span, run.firstMs, false);
      stream.chunk(run.firstSize, run.firstMs);
      this.watch(stream);
    }
    stream.chunk(size, at);
    return [stream.span, trace.setSpan(run.base ?? ambient, stream.span)];
  }

  /**
   * A receive span: a child of the sender's context (trust `parent`), else of `fallback` (the request a reply
   * answers) or a root, linked to the handshake (and to the sender under trust `link`).
   * @param {[Context | null, SpanContext | null]} sender
   * @param {boolean} isText
   * @param {number} ordinal
   * @param {number | undefined} size
   * @param {Context} ambient
   * @param {Context | null} fallback
   * @param {number} at
   * @returns {[Span, Context]}  the span and the context to make it current in
   */
  receiveSpan(sender, isText, ordinal, size, ambient, fallback, at) {
    const [remote, remoteSpan] = sender;
    if (remote && remoteSpan && this.settings.trust === "parent") {
      return [this.messageSpan(this.names.receive, SpanKind.CONSUMER, remote, isText, ordinal, size, [], at), remote];
    }
    const links = remoteSpan ? [link(remoteSpan, "remote")] : [];
    const parent = fallback ?? ROOT_CONTEXT;
    return [this.messageSpan(this.names.receive, SpanKind.CONSUMER, parent, isText, ordinal, size, links, at), ambient];
  }

  /**
   * The sender's context and span context from a carrier, unless there is none or trust is `ignore`.
   * @param {Carrier | null} carrier
   * @returns {[Context | null, SpanContext | null]}
   */
  remote(carrier) {
    if (!carrier || this.settings.trust === "ignore" || Object.keys(carrier).length === 0) return [null, null];
    try {
      let fields = carrier;
      if (this.settings.trust !== "parent" && "baggage" in fields) {
        fields = Object.fromEntries(Object.entries(fields).filter(([k]) => k !== "baggage"));
      }
      const ctx = propagation.extract(ROOT_CONTEXT, fields);
      const sc = trace.getSpanContext(ctx);
      return sc && trace.isSpanContextValid(sc) ? [ctx, sc] : [null, null];
    } catch (error) {
      warnOnce("extracting the sender's context", error);
      return [null, null];
    }
  }

  /**
   * @param {string} name
   * @param {import("@opentelemetry/api").SpanKind} kind
   * @param {Context} parent
   * @param {boolean} isText
   * @param {number} ordinal
   * @param {number | undefined} size
   * @param {Link[]} links
   * @param {number} [startTime]
   * @returns {Span}
   */
  messageSpan(name, kind, parent, isText, ordinal, size, links, startTime) {
    /** @type {Record<string, string | number>} */
    const attributes = {
      "network.protocol.name": "websocket",
      "websocket.session.id": this.sessionId,
      "websocket.message.type": isText ? "text" : "binary",
      "websocket.message.ordinal": ordinal,
    };
    if (size !== undefined) attributes["messaging.message.body.size"] = size;
    const all = this.handshakeContext ? [link(this.handshakeContext, "handshake"), ...links] : links;
    return this.tracer.startSpan(name, { kind, attributes, links: all, startTime }, parent);
  }

  /**
   * @param {Span} span
   * @returns {Carrier}
   */
  inject(span) {
    /** @type {Carrier} */
    const carrier = {};
    propagation.inject(trace.setSpan(context.active(), span), carrier);
    return carrier;
  }

  /**
   * End `stream` once it has been idle for `streamIdle`, so a stream nothing follows is exported.
   * @param {Stream} stream
   */
  watch(stream) {
    const idle = this.settings.streamIdle * 1000;
    const check = () => {
      stream.timer = null;
      if (stream.ended) return;
      const gap = now() - (stream.count ? stream.lastMs : stream.startMs);
      if (gap < idle) {
        stream.timer = unref(setTimeout(check, idle - gap));
        return;
      }
      stream.end({ atLastChunk: true });
      if (this.run && this.run.stream === stream) this.run = null;
      if (this.inrun && this.inrun.stream === stream) this.inrun = null;
    };
    stream.timer = unref(setTimeout(check, idle));
  }

  // Close -------------------------------------------------------------------------------------------------------

  /**
   * The connection closed: every open stream ends (failed if the close was abnormal), and the `close` span records
   * the code, reason and initiator (`local`, `remote`, or `none`: no close frame came back).
   * @param {{code?: number | null, reason?: string, initiator?: "local" | "remote" | "none", error?: unknown}} [close]
   */
  closed(close = {}) {
    if (this.over) return;
    this.over = true;
    try {
      const code = close.code ?? null;
      const abnormal = close.error !== undefined || (code !== null && ERROR_CODES.has(code));
      for (const stream of [...this.streams]) stream.end(abnormal ? { error: `close ${code ?? 1006}` } : { atLastChunk: true });
      this.run = this.inrun = this.lastRequest = null;
      if (!this.recording) return;
      /** @type {Record<string, string | number>} */
      const attributes = {
        "network.protocol.name": "websocket",
        "websocket.session.id": this.sessionId,
        "websocket.close.initiator": close.initiator ?? "none",
      };
      if (code !== null) attributes["websocket.close.code"] = code;
      if (close.reason) attributes["websocket.close.reason"] = close.reason;
      const links = this.handshakeContext ? [link(this.handshakeContext, "handshake")] : [];
      const span = this.tracer.startSpan(this.names.close, { kind: SpanKind.INTERNAL, attributes, links }, ROOT_CONTEXT);
      if (abnormal) {
        recordError(
          span,
          close.error ?? String(code),
          `WebSocket closed with code ${code}` + (close.reason ? `: ${close.reason}` : ""),
        );
      }
      span.end();
    } catch (error) {
      warnOnce("recording the close", error);
    }
  }
}

/**
 * @param {(payload: unknown) => boolean} fn
 * @param {unknown} payload
 * @returns {boolean}
 */
function predicate(fn, payload) {
  try {
    return Boolean(fn(payload));
  } catch (error) {
    warnOnce("the streamEnd predicate", error);
    return false;
  }
}

/**
 * A timer that does not keep a Node process alive.
 * @param {ReturnType<typeof setTimeout>} timer
 * @returns {ReturnType<typeof setTimeout>}
 */
function unref(timer) {
  const t = /** @type {any} */ (timer);
  if (t && typeof t.unref === "function") t.unref();
  return timer;
}

/**
 * Read a `wstrace-envelope` answer: exactly one `frame/1` or `json/1`, any case, blanks around it allowed.
 * @param {string | string[] | null | undefined} value
 * @returns {"frame" | "json" | null}
 */
export function parseOffer(value) {
  if (Array.isArray(value)) value = value.length === 1 ? value[0] : null;
  if (!value) return null;
  const [format, version, ...more] = value.replace(/^[ \t]+|[ \t]+$/g, "").toLowerCase().split("/");
  if (more.length || version !== ENVELOPE_VERSION || (format !== "frame" && format !== "json")) return null;
  return format;
}
