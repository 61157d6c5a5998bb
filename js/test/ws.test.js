// The Node client (`wstrace/ws`, over the ws package) against a real wstrace Python server, and an un-instrumented one.

import assert from "node:assert/strict";
import { after, before, test } from "node:test";

import { createServer } from "node:net";

import { trace } from "@opentelemetry/api";
import WebSocket from "ws";

import { tracedWs } from "../src/ws.js";
import { record, startServer, telemetry, until, once } from "./helpers.js";

const { exporter, tracer } = telemetry();
const TracedWebSocket = tracedWs(WebSocket);

/** @type {Awaited<ReturnType<typeof startServer>>} */
let server;
before(async () => {
  server = await startServer(["--envelope", "negotiate", "--chunks", "2"]);
});
after(async () => {
  await server.stop();
});

function jsSpans() {
  return exporter.getFinishedSpans().map(record);
}

/** Open; send each message inside a span `turn` and read its `each` replies; close. Returns the replies. */
async function exchange(socket, messages, each) {
  await once(socket, "open");
  const replies = [];
  socket.on("message", (data, isBinary) => replies.push({ data, isBinary, active: trace.getActiveSpan()?.spanContext().spanId }));
  for (const message of messages) {
    const expect = replies.length + each;
    tracer.startActiveSpan("turn", (span) => {
      socket.send(message);
      span.end();
    });
    await until(() => replies.length >= expect, 10000, `${expect} replies`);
  }
  const closed = once(socket, "close");
  socket.close(1000, "done");
  await closed;
  return replies;
}

test("one trace: the JS send, the Python receive, its reply stream, the JS receive", async () => {
  exporter.reset();
  const socket = new TracedWebSocket(`ws://127.0.0.1:${server.port}/chat`);
  const replies = await exchange(socket, ["hello"], 2);
  assert.deepEqual(
    replies.map((r) => [r.data.toString(), r.isBinary]),
    [
      ["hello:0", false],
      ["hello:1", false],
    ],
    "the page gets the replies without their envelope",
  );
  assert.equal(socket.wstraceEnvelope, "frame", "negotiated: the server answered the offer");
  const py = await until(
    () => {
      const names = server.spans.map((s) => s.name);
      return names.includes("close") && names.filter((n) => n === "send").length >= 1 ? server.spans : null;
    },
    10000,
    "the server's spans",
  );
  await until(() => jsSpans().some((s) => s.name === "close"), 5000, "the JS close span");
  const js = jsSpans();
  const jsGet = js.find((s) => s.name === "GET");
  const jsSend = js.find((s) => s.name === "send");
  const jsReceive = js.find((s) => s.name === "receive");
  const turn = js.find((s) => s.name === "turn");
  const pyGet = py.find((s) => s.name === "GET");
  const pyReceive = py.find((s) => s.name === "receive");
  const pySend = py.find((s) => s.name === "send");
  const handle = py.find((s) => s.name === "handle");

  assert.equal(jsGet.kind, "CLIENT");
  assert.equal(pyGet.parent_span_id, jsGet.span_id, "the server's handshake continues the client's (headers)");
  assert.equal(pyGet.trace_id, jsGet.trace_id);
  assert.equal(pyGet.attributes["wstrace.context.source"], "headers");
  assert.equal(jsGet.attributes["websocket.envelope"], "frame");
  assert.equal(jsGet.attributes["http.response.status_code"], 101);
  assert.equal(jsGet.attributes["url.full"], `ws://127.0.0.1:${server.port}/chat`);

  assert.equal(jsSend.kind, "PRODUCER");
  assert.equal(jsSend.parent_span_id, turn.span_id, "the send is a child of the application's span");
  assert.equal(jsSend.attributes["websocket.message.ordinal"], 1);
  assert.equal(jsSend.attributes["websocket.message.type"], "text");
  assert.equal(jsSend.attributes["messaging.message.body.size"], 5);
  assert.equal(jsSend.attributes["wstrace.stream.chunk_count"], 1);
  assert.deepEqual(
    jsSend.links.map((l) => [l.span_id, l.attributes["wstrace.link.kind"]]),
    [[jsGet.span_id, "handshake"]],
  );

  assert.equal(pyReceive.kind, "CONSUMER");
  assert.equal(pyReceive.parent_span_id, jsSend.span_id, "the server's receive continues the JS send (envelope)");
  assert.equal(handle.parent_span_id, pyReceive.span_id);
  assert.equal(pySend.kind, "PRODUCER");
  assert.equal(pySend.parent_span_id, pyReceive.span_id, "the reply stream answers the receive");
  assert.equal(pySend.attributes["wstrace.stream.chunk_count"], 2);

  assert.equal(jsReceive.kind, "CONSUMER");
  assert.equal(jsReceive.parent_span_id, pySend.span_id, "the JS reply stream continues the server's stream");
  assert.equal(jsReceive.attributes["wstrace.stream.chunk_count"], 2);
  assert.equal(jsReceive.attributes["wstrace.stream.size"], 14);
  assert.equal(jsReceive.attributes["websocket.message.ordinal"], 1);
  assert.ok(jsReceive.attributes["wstrace.stream.time_to_first_chunk"] >= 0);
  assert.ok(
    jsReceive.attributes["wstrace.stream.time_to_last_chunk"] >= jsReceive.attributes["wstrace.stream.time_to_first_chunk"],
  );
  assert.ok("wstrace.stream.chunk_interval.p95" in jsReceive.attributes);
  assert.deepEqual(
    replies.map((r) => r.active),
    [jsReceive.span_id, jsReceive.span_id],
    "the reply stream is the active span while the listeners run",
  );

  for (const span of [jsSend, pyReceive, pySend, jsReceive, handle]) assert.equal(span.trace_id, turn.trace_id);
  const sessions = new Set([...js, ...py].map((s) => s.attributes["websocket.session.id"]).filter(Boolean));
  assert.deepEqual([...sessions], [socket.wstraceSessionId], "both ends record one session id");

  const close = js.find((s) => s.name === "close");
  assert.equal(close.kind, "INTERNAL");
  assert.equal(close.parent_span_id, null);
  assert.equal(close.attributes["websocket.close.code"], 1000);
  assert.equal(close.attributes["websocket.close.initiator"], "local");
  assert.equal(close.attributes["websocket.close.reason"], "done");
  assert.equal(close.status, "UNSET");
});

test("binary messages, and a server's close code", async () => {
  exporter.reset();
  const socket = new TracedWebSocket(`ws://127.0.0.1:${server.port}/`);
  await once(socket, "open");
  const replies = [];
  socket.on("message", (data, isBinary) => replies.push([Buffer.from(data).toString("hex"), isBinary]));
  // A payload that starts like an envelope comes back exactly: every frame is enveloped.
  socket.send(Buffer.from([0x1e, 0x77, 0x74, 0x01, 0, 0]));
  await until(() => replies.length === 2, 10000, "binary replies");
  assert.deepEqual(replies, [
    ["1e777401000000", true],
    ["1e777401000001", true],
  ]);
  const message = server.messages.at(-1);
  assert.deepEqual([message.type, Buffer.from(message.data, "base64").toString("hex")], ["binary", "1e7774010000"]);
  const closed = once(socket, "close");
  socket.send("close");
  const [code, reason] = await closed;
  assert.deepEqual([code, reason.toString()], [4000, "bye"]);
  await until(() => jsSpans().some((s) => s.name === "close"), 5000, "the JS close span");
  const close = jsSpans().find((s) => s.name === "close");
  assert.equal(close.attributes["websocket.close.code"], 4000);
  assert.equal(close.attributes["websocket.close.initiator"], "remote");
  assert.equal(close.status, "UNSET", "an application close code is not an error");
  const receive = jsSpans().find((s) => s.name === "receive");
  assert.equal(receive.attributes["websocket.message.type"], "binary");
  assert.equal(receive.attributes["wstrace.stream.size"], 14);
});

test("the json format, as the client offers it", async () => {
  exporter.reset();
  const Json = tracedWs(WebSocket, { envelopeFormat: "json", route: "/rpc" });
  const socket = new Json(`ws://127.0.0.1:${server.port}/rpc`);
  const replies = await exchange(socket, ['{"op":"ping"}', "[1]"], 2);
  assert.equal(socket.wstraceEnvelope, "json");
  assert.deepEqual(
    server.messages.slice(-2).map((m) => m.data),
    ['{"op":"ping"}', "[1]"],
    "the server's handler gets the message without the member",
  );
  assert.deepEqual(
    replies.map((r) => r.data.toString()),
    ['{"op":"ping"}:0', '{"op":"ping"}:1', "[1]:0", "[1]:1"],
  );
  await until(() => jsSpans().some((s) => s.name === "close /rpc"), 5000, "the JS close span");
  const names = jsSpans().map((s) => s.name);
  assert.ok(names.includes("GET /rpc") && names.includes("send /rpc") && names.includes("receive /rpc"), names.join());
  const pyReceive = await until(() => server.spans.find((s) => s.name === "receive" && s.attributes["messaging.message.body.size"] === 13));
  const first = jsSpans().find((s) => s.name === "send /rpc");
  assert.equal(pyReceive.parent_span_id, first.span_id, "the member carried the context");
});

test("a server that is not instrumented never receives a changed byte", async () => {
  exporter.reset();
  const bare = await startServer([], { bare: true });
  try {
    const socket = new TracedWebSocket(`ws://127.0.0.1:${bare.port}/`);
    const sent = ["hello", "\x1ewt1traceparent=x\x1eframe-like", Buffer.from([0x1e, 0x77, 0x74, 0x01, 0, 0, 9])];
    const replies = await exchange(socket, sent, 1);
    assert.equal(socket.wstraceEnvelope, null, "no answer to the offer: plain frames");
    assert.deepEqual(
      bare.messages.map((m) => [m.type, m.data]),
      [
        ["text", "hello"],
        ["text", "\x1ewt1traceparent=x\x1eframe-like"],
        ["binary", Buffer.from([0x1e, 0x77, 0x74, 0x01, 0, 0, 9]).toString("base64")],
      ],
    );
    assert.deepEqual(
      replies.map((r) => (r.isBinary ? Buffer.from(r.data).toString("hex") : r.data.toString())),
      ["hello", "\x1ewt1traceparent=x\x1eframe-like", "1e777401000009"],
      "and the client delivers the peer's frames as they came",
    );
    await until(() => jsSpans().some((s) => s.name === "close"), 5000, "the JS close span");
    const get = jsSpans().find((s) => s.name === "GET");
    assert.equal(get.attributes["websocket.envelope"], "none");
    const receive = jsSpans().filter((s) => s.name === "receive");
    const send = jsSpans().filter((s) => s.name === "send");
    assert.equal(send.length, 3, "each message is a request of its own (another turn span each)");
    assert.deepEqual(
      receive.map((s) => s.parent_span_id),
      send.map((s) => s.span_id),
      "with no context from the server, each reply is a child of its request",
    );
  } finally {
    await bare.stop();
  }
});

test("instrumentation that fails never breaks the connection", async () => {
  exporter.reset();
  const broken = {
    getTracer() {
      throw new Error("no tracer");
    },
  };
  const warn = console.warn;
  console.warn = () => {};
  try {
    const Broken = tracedWs(WebSocket, { tracerProvider: /** @type {any} */ (broken) });
    const socket = new Broken(`ws://127.0.0.1:${server.port}/`);
    const replies = await exchange(socket, ["still works"], 2);
    assert.deepEqual(
      replies.map((r) => r.data.toString()),
      ["still works:0", "still works:1"],
    );
    const Throwing = tracedWs(WebSocket, {
      streamEnd: () => {
        throw new Error("bad predicate");
      },
    });
    const other = new Throwing(`ws://127.0.0.1:${server.port}/`);
    const more = await exchange(other, ["again"], 2);
    assert.deepEqual(
      more.map((r) => r.data.toString()),
      ["again:0", "again:1"],
    );
  } finally {
    console.warn = warn;
  }
  assert.throws(() => tracedWs(WebSocket, { envelope: /** @type {any} */ ("sometimes") }), /bad option envelope/);
  assert.throws(() => tracedWs(WebSocket, /** @type {any} */ ({ streamidle: 1 })), /unknown option streamidle/);
});

test("a connection that fails fails the handshake span", async () => {
  exporter.reset();
  const probe = createServer();
  await new Promise((r) => probe.listen(0, "127.0.0.1", r));
  const port = probe.address().port;
  await new Promise((r) => probe.close(r));
  const socket = new TracedWebSocket(`ws://127.0.0.1:${port}/`);
  socket.on("error", () => {});
  await new Promise((r) => socket.once("close", r));
  await until(() => jsSpans().some((s) => s.name === "GET"), 5000, "the handshake span");
  const get = jsSpans().find((s) => s.name === "GET");
  assert.equal(get.status, "ERROR");
  assert.ok(!jsSpans().some((s) => s.name === "close"), "a connection that never opened records no close");
});

test("a send while a reply is handled starts a new trace, linked to the reply before", async () => {
  exporter.reset();
  const socket = new TracedWebSocket(`ws://127.0.0.1:${server.port}/`);
  await once(socket, "open");
  const replies = [];
  socket.on("message", (data) => {
    replies.push(data.toString());
    if (data.toString() === "first:1") socket.send("second"); // the reply stream is the active span here
  });
  tracer.startActiveSpan("turn", (span) => {
    socket.send("first");
    span.end();
  });
  await until(() => replies.length === 4, 10000, "both replies to both messages");
  assert.deepEqual(replies, ["first:0", "first:1", "second:0", "second:1"]);
  const closed = once(socket, "close");
  socket.close();
  await closed;
  await until(() => jsSpans().some((s) => s.name === "close"), 5000, "the close span");
  const sends = jsSpans().filter((s) => s.name === "send");
  const receives = jsSpans().filter((s) => s.name === "receive");
  assert.equal(sends.length, 2);
  assert.equal(receives.length, 2);
  const [firstReply, secondReply] = receives.sort((a, b) => a.start - b.start);
  const second = sends.find((s) => s.attributes["websocket.message.ordinal"] === 2);
  assert.equal(second.parent_span_id, null, "not a child of the reply it was sent from");
  assert.notEqual(second.trace_id, firstReply.trace_id);
  assert.deepEqual(
    second.links.map((l) => [l.span_id, l.attributes["wstrace.link.kind"]]).filter(([, kind]) => kind === "previous"),
    [[firstReply.span_id, "previous"]],
  );
  assert.equal(secondReply.trace_id, second.trace_id, "its own reply is in its trace");
  assert.ok(firstReply.end <= second.start, "the first reply stream ended when the next request went");
});

test("streams off: a span per message; streamEnd: a reply stream ends at its marked chunk", async () => {
  exporter.reset();
  const PerMessage = tracedWs(WebSocket, { streams: false });
  const socket = new PerMessage(`ws://127.0.0.1:${server.port}/`);
  await exchange(socket, ["a"], 2);
  await until(() => jsSpans().some((s) => s.name === "close"), 5000, "the close span");
  const receives = jsSpans().filter((s) => s.name === "receive");
  assert.equal(receives.length, 2);
  assert.deepEqual(
    receives.map((s) => [s.attributes["websocket.message.ordinal"], s.attributes["messaging.message.body.size"]]),
    [
      [1, 3],
      [2, 3],
    ],
  );
  assert.ok(receives.every((s) => !("wstrace.stream.chunk_count" in s.attributes)));
  const send = jsSpans().find((s) => s.name === "send");
  assert.equal(send.attributes["messaging.message.body.size"], 1);

  exporter.reset();
  const Marked = tracedWs(WebSocket, { streamEnd: (payload) => String(payload).endsWith(":0") });
  const marked = new Marked(`ws://127.0.0.1:${server.port}/`);
  await once(marked, "open");
  const got = [];
  marked.on("message", (data) => got.push(data.toString()));
  marked.send("m");
  await until(() => got.length === 2, 10000, "two replies");
  const stream = jsSpans().find((s) => s.name === "receive");
  assert.ok(stream, "the reply stream ended at its marked chunk, before the close");
  assert.equal(stream.attributes["wstrace.stream.chunk_count"], 1);
  const closed = once(marked, "close");
  marked.close();
  await closed;
  await until(() => jsSpans().some((s) => s.name === "close"), 5000, "the close span");
  const after = jsSpans().filter((s) => s.name === "receive");
  assert.equal(after.length, 2, "the chunk after the end marker is a message of its own");
});
