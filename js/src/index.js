// wstrace for JavaScript: end-to-end OpenTelemetry tracing of WebSocket traffic with a wstrace peer.
//
// This entry point is for browsers (and any runtime with a WHATWG WebSocket); Node's `ws` client is in
// `wstrace/ws`, the envelope codec alone in `wstrace/envelope`. See docs/adapters/javascript.md.

export { tracedWebSocket, tracedWebSocketClass, instrumentWebSocket, uninstrumentWebSocket } from "./browser.js";
export { ConnectionTracer, newSessionId, parseOffer, settings } from "./core.js";
export * as envelope from "./envelope.js";
export { VERSION } from "./version.js";
