// A page traced with OpenTelemetry's SDK that talks to a wstrace server through the package (tests/js/test_browser.py).
// window.wstraceTest(params) runs one turn and returns the page's finished spans, its replies and what it saw.

import { ROOT_CONTEXT, context, propagation, trace } from "@opentelemetry/api";
import { CompositePropagator, W3CBaggagePropagator, W3CTraceContextPropagator } from "@opentelemetry/core";
import { BasicTracerProvider, InMemorySpanExporter, SimpleSpanProcessor } from "@opentelemetry/sdk-trace-base";
import { instrumentWebSocket, tracedWebSocket } from "wstrace";

/** The smallest context manager: synchronous `with`, as sdk-trace-web's StackContextManager does. */
class StackContextManager {
  constructor() {
    this.current = ROOT_CONTEXT;
  }
  active() {
    return this.current;
  }
  with(ctx, fn, thisArg, ...args) {
    const previous = this.current;
    this.current = ctx || ROOT_CONTEXT;
    try {
      return fn.call(thisArg, ...args);
    } finally {
      this.current = previous;
    }
  }
  bind(ctx, target) {
    return typeof target === "function" ? (...args) => this.with(ctx, () => target(...args)) : target;
  }
  enable() {
    return this;
  }
  disable() {
    this.current = ROOT_CONTEXT;
    return this;
  }
}

const exporter = new InMemorySpanExporter();
trace.setGlobalTracerProvider(new BasicTracerProvider({ spanProcessors: [new SimpleSpanProcessor(exporter)] }));
context.setGlobalContextManager(new StackContextManager());
propagation.setGlobalPropagator(
  new CompositePropagator({ propagators: [new W3CTraceContextPropagator(), new W3CBaggagePropagator()] }),
);
const tracer = trace.getTracer("page");

function record(span) {
  const sc = span.spanContext();
  return {
    name: span.name,
    kind: ["INTERNAL", "SERVER", "CLIENT", "PRODUCER", "CONSUMER"][span.kind],
    trace_id: sc.traceId,
    span_id: sc.spanId,
    parent_span_id: span.parentSpanContext?.spanId ?? span.parentSpanId ?? null,
    attributes: { ...span.attributes },
    links: span.links.map((l) => ({ trace_id: l.context.traceId, span_id: l.context.spanId, attributes: { ...l.attributes } })),
    status: ["UNSET", "OK", "ERROR"][span.status.code],
  };
}

const until = (event, target) => new Promise((resolve) => target.addEventListener(event, resolve, { once: true }));

/**
 * One turn: open a WebSocket inside a page span, send `message` in it, read `replies` answers (binary ones as
 * arrays of bytes), close. `how` is "factory" (tracedWebSocket) or "global" (instrumentWebSocket, then new WebSocket).
 */
window.wstraceTest = async ({ url, protocols, handshake, message, replies: expected, how, binaryType }) => {
  exporter.reset();
  const page = tracer.startSpan("page turn");
  const pageContext = trace.setSpan(context.active(), page);
  let socket;
  let restore = () => {};
  context.with(pageContext, () => {
    if (how === "global") {
      restore = instrumentWebSocket({ handshake });
      socket = protocols ? new WebSocket(url, protocols) : new WebSocket(url);
    } else {
      socket = tracedWebSocket(url, protocols, { handshake });
    }
  });
  if (binaryType) socket.binaryType = binaryType;
  const seen = [];
  socket.onmessage = async (event) => {
    const active = trace.getActiveSpan()?.spanContext().spanId;
    tracer.startSpan("render reply").end(); // work the page does for the reply: a child of its receive span
    const data = typeof event.data === "string" ? event.data : [...new Uint8Array(await new Response(event.data).arrayBuffer())];
    seen.push({ data, active, kind: Object.prototype.toString.call(event.data), trusted: event.isTrusted });
  };
  await until("open", socket);
  context.with(pageContext, () => socket.send(typeof message === "string" ? message : new Uint8Array(message)));
  const deadline = Date.now() + 10000;
  while (seen.length < expected && Date.now() < deadline) await new Promise((r) => setTimeout(r, 10));
  const closed = until("close", socket);
  socket.close(1000, "bye");
  const close = await closed;
  page.end();
  restore();
  await new Promise((r) => setTimeout(r, 50));
  return {
    replies: seen,
    url: socket.url,
    protocol: socket.protocol,
    session: socket.wstraceSessionId,
    instanceOfWebSocket: socket instanceof WebSocket,
    close: { code: close.code, reason: close.reason },
    spans: exporter.getFinishedSpans().map(record),
  };
};

document.getElementById("status").textContent = "ready";
