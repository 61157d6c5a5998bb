// The ConnectionTracer (src/core.js) on its own: the span rules both clients share, without a socket.

import assert from "node:assert/strict";
import { test } from "node:test";

import { ROOT_CONTEXT, context, propagation, trace } from "@opentelemetry/api";
import { AlwaysOffSampler, BasicTracerProvider } from "@opentelemetry/sdk-trace-base";

import { ConnectionTracer, parseOffer, settings } from "../src/core.js";
import { decode, encodeText } from "../src/envelope.js";
import { record, telemetry, until } from "./helpers.js";

const { exporter, tracer } = telemetry();
const spans = () => exporter.getFinishedSpans().map(record);

/** An open client connection with the envelope in force. */
function connection(options = {}) {
  const ct = new ConnectionTracer(settings({ envelope: "always", ...options }));
  ct.startHandshake("wss://example.com:8443/chat?secret=1");
  ct.opened({ subprotocol: "wstrace.tp.x" });
  return ct;
}

/** A frame as a peer sends it, from inside `span`. */
function fromPeer(span, payload) {
  const carrier = {};
  propagation.inject(trace.setSpan(ROOT_CONTEXT, span), carrier);
  return encodeText(payload, carrier);
}

test("the handshake span: attributes, no query, our token is not a subprotocol", () => {
  exporter.reset();
  const ct = connection();
  ct.closed({ code: 1000, initiator: "local" });
  const get = spans().find((s) => s.name === "GET");
  assert.deepEqual(get.attributes, {
    "http.request.method": "GET",
    "websocket.session.id": ct.sessionId,
    "url.full": "wss://example.com:8443/chat",
    "url.scheme": "wss",
    "server.address": "example.com",
    "server.port": 8443,
    "http.response.status_code": 101,
    "websocket.envelope": "frame",
  });
  assert.match(ct.sessionId, /^[0-9a-f]{32}$/);
});

test("a peer's run: a span for its first message, then one receive stream from the second, dated from the first", async () => {
  exporter.reset();
  const ct = connection({ stallThreshold: 0.01 });
  const peer = tracer.startSpan("peer run");
  const first = ct.receive(fromPeer(peer, "a"), true);
  first.done();
  await new Promise((r) => setTimeout(r, 30)); // a stall
  for (const payload of ["bb", "ccc"]) {
    const chunk = ct.receive(fromPeer(peer, payload), true);
    assert.equal(chunk.payload, payload);
    assert.equal(trace.getSpan(chunk.ctx).spanContext().traceId, peer.spanContext().traceId);
    chunk.done();
  }
  ct.closed({ code: 1000, initiator: "remote" });
  const receives = spans().filter((s) => s.name === "receive");
  assert.equal(receives.length, 2);
  const [own, stream] = receives.sort((a, b) => a.attributes["websocket.message.ordinal"] - b.attributes["websocket.message.ordinal"]);
  assert.equal(own.parent_span_id, peer.spanContext().spanId);
  assert.equal(stream.parent_span_id, peer.spanContext().spanId);
  assert.equal(stream.attributes["wstrace.stream.chunk_count"], 3);
  assert.equal(stream.attributes["wstrace.stream.size"], 6);
  assert.equal(stream.attributes["websocket.message.ordinal"], 1, "the first message's ordinal");
  assert.equal(stream.start, own.start, "dated from the first message");
  assert.equal(stream.attributes["wstrace.stream.stalls"], 1);
  assert.deepEqual(stream.events, ["wstrace.stream.stall"]);
  assert.ok(!("wstrace.stream.time_to_first_chunk" in stream.attributes), "a run answers nothing");
});

test("trust link and ignore: the peer's context is a link, or nothing", () => {
  exporter.reset();
  const peer = tracer.startSpan("peer");
  for (const trust of ["link", "ignore"]) {
    const ct = connection({ trust });
    ct.receive(fromPeer(peer, "x"), true).done();
    ct.closed({ code: 1000 });
  }
  const [linked, ignored] = spans().filter((s) => s.name === "receive");
  assert.equal(linked.parent_span_id, null);
  assert.deepEqual(
    linked.links.map((l) => l.attributes["wstrace.link.kind"]),
    ["handshake", "remote"],
  );
  assert.equal(ignored.parent_span_id, null);
  assert.deepEqual(
    ignored.links.map((l) => l.attributes["wstrace.link.kind"]),
    ["handshake"],
  );
});

test("runs: one span per context, a new one after runLimit (linked previous) and after streamIdle", async () => {
  exporter.reset();
  const ct = connection({ runLimit: 0.05, streamIdle: 0.2 });
  const sendIn = (span, payload) => context.with(trace.setSpan(ROOT_CONTEXT, span), () => ct.send(payload, true).done());
  const voice = tracer.startSpan("voice turn");
  sendIn(voice, "1");
  sendIn(voice, "2");
  await new Promise((r) => setTimeout(r, 60));
  sendIn(voice, "3"); // past runLimit: a new run, chained to the first
  const runs = await until(() => {
    const found = spans().filter((s) => s.name === "send");
    return found.length === 2 ? found : null;
  }, 5000, "the second run to end, idle");
  const [a, b] = runs.sort((x, y) => x.start - y.start);
  assert.equal(a.attributes["wstrace.stream.chunk_count"], 2);
  assert.equal(b.attributes["wstrace.stream.chunk_count"], 1);
  assert.equal(a.parent_span_id, voice.spanContext().spanId);
  assert.equal(b.parent_span_id, voice.spanContext().spanId);
  assert.deepEqual(
    b.links.filter((l) => l.attributes["wstrace.link.kind"] === "previous").map((l) => l.span_id),
    [a.span_id],
  );
  // A push with no context starts a run of its own, linked to the message handled last; a message received ends it.
  const peer = tracer.startSpan("peer");
  ct.receive(fromPeer(peer, "hello"), true).done();
  const inbound = spans().find((s) => s.name === "receive");
  ct.send("push", true).done();
  ct.receive(fromPeer(peer, "again"), true).done();
  const push = spans().find((s) => s.name === "send" && s.start > b.start);
  assert.ok(push, "ended by the message received");
  assert.equal(push.parent_span_id, null);
  assert.deepEqual(
    push.links.filter((l) => l.attributes["wstrace.link.kind"] === "inbound").map((l) => l.span_id),
    [inbound.span_id],
  );
  ct.closed({ code: 1000 });
});

test("an abnormal close fails the open streams and the close span", () => {
  exporter.reset();
  const ct = connection();
  ct.send("q", true).done();
  const reply = ct.receive(encodeText("r", {}), true);
  reply.done();
  ct.closed({ code: 1006, initiator: "none" });
  const close = spans().find((s) => s.name === "close");
  assert.equal(close.status, "ERROR");
  assert.equal(close.attributes["error.type"], "1006");
  assert.equal(close.attributes["websocket.close.initiator"], "none");
  const stream = spans().find((s) => s.name === "receive");
  assert.equal(stream.status, "ERROR");
  assert.equal(stream.attributes["error.type"], "close 1006");
  assert.equal(ct.send("late", true).wire, "\x1ewt1\x1elate", "after the close: enveloped, not traced");
});

test("sampled out: no spans at all, envelopes still written and stripped", () => {
  exporter.reset();
  const off = new BasicTracerProvider({ sampler: new AlwaysOffSampler() });
  const ct = connection({ tracerProvider: off });
  const sent = ct.send("x", true);
  assert.equal(sent.wire, "\x1ewt1\x1ex");
  const got = ct.receive("\x1ewt1\x1ey", true);
  assert.equal(got.payload, "y");
  assert.equal(got.ctx, null);
  ct.closed({ code: 1000 });
  assert.deepEqual(spans(), []);
});

test("a carrier over the cap goes as an empty envelope; the format follows the answer", () => {
  exporter.reset();
  const ct = connection({ maxEnvelopeBytes: 10 });
  const wire = context.with(trace.setSpan(ROOT_CONTEXT, tracer.startSpan("x")), () => ct.send("p", true).wire);
  assert.deepEqual(decode(wire), { payload: "p", carrier: {} });
  ct.closed({});
  const negotiating = new ConnectionTracer(settings({}));
  negotiating.startHandshake("ws://h/");
  negotiating.opened({ answer: " JSON/1 ", session: "f".repeat(32) });
  assert.equal(negotiating.format, "json");
  assert.equal(negotiating.sessionId, "f".repeat(32));
  assert.equal(parseOffer(["frame/1", "json/1"]), null, "a list is not an answer");
  assert.equal(parseOffer("frame/2"), null);
  assert.equal(parseOffer("frame/1, json/1"), null);
  const off = new ConnectionTracer(settings({ envelope: "off" }));
  off.opened({ answer: "frame/1" });
  assert.equal(off.format, null);
  assert.throws(() => settings({ sessionId: "xyz" }), /bad option sessionId/);
  assert.throws(() => settings({ maxEnvelopeBytes: 70000 }), /bad option maxEnvelopeBytes/);
});
