// The browser client (`wstrace`: a WebSocket subclass) in Node, over Node's own WHATWG WebSocket (undici: global
// from Node 22, behind --experimental-websocket in Node 20), against a real wstrace Python server in mode `always`.
// tests/js/test_browser.py runs the same client in headless Chromium.

import assert from "node:assert/strict";
import { after, before, test } from "node:test";

import { trace } from "@opentelemetry/api";

import { instrumentWebSocket, tracedWebSocket, uninstrumentWebSocket } from "../src/index.js";
import { record, startServer, telemetry, until } from "./helpers.js";

const available = typeof globalThis.WebSocket === "function";
const skip = available ? false : "no global WebSocket: run node with --experimental-websocket (Node 20) or Node >= 22";
const { exporter, tracer } = telemetry();

/** @type {Awaited<ReturnType<typeof startServer>>} */
let server;
before(async () => {
  if (available) {
    server = await startServer(["--envelope", "always", "--sources", "query,subprotocol", "--chunks", "2", "--subprotocols", "chat"]);
  }
});
after(async () => {
  await server?.stop();
});

const jsSpans = () => exporter.getFinishedSpans().map(record);

/** Open `socket`, send `message` inside a span `turn`, collect two replies (with the span active in the listener). */
async function turn(socket, message) {
  await new Promise((resolve, reject) => {
    socket.addEventListener("open", resolve, { once: true });
    socket.addEventListener("error", () => reject(new Error("error before open")), { once: true });
  });
  const replies = [];
  socket.onmessage = (event) => replies.push({ data: event.data, via: "onmessage", active: trace.getActiveSpan()?.spanContext().spanId });
  socket.addEventListener("message", (event) => replies.push({ data: event.data, via: "listener" }));
  tracer.startActiveSpan("turn", (span) => {
    socket.send(message);
    span.end();
  });
  await until(() => replies.length >= 4, 10000, "two replies, each to both listeners");
  return replies;
}

async function closeAndWait(socket) {
  const closed = new Promise((resolve) => socket.addEventListener("close", resolve, { once: true }));
  socket.close();
  await closed;
}

test("query string: one trace from the page's send through the server and back", { skip }, async () => {
  exporter.reset();
  const url = `ws://127.0.0.1:${server.port}/chat?room=1`;
  const socket = tracedWebSocket(url);
  assert.equal(socket.url, url, "the page sees the URL it asked for");
  const replies = await turn(socket, "hi");
  assert.deepEqual(
    replies.map((r) => [r.via, r.data]),
    [
      ["onmessage", "hi:0"],
      ["listener", "hi:0"],
      ["onmessage", "hi:1"],
      ["listener", "hi:1"],
    ],
  );
  assert.equal(server.messages.at(-1).data, "hi", "the server's handler got the message without its envelope");
  await closeAndWait(socket);
  await until(() => server.spans.some((s) => s.name === "close") && jsSpans().some((s) => s.name === "close"), 10000, "the close spans");
  const js = jsSpans();
  const py = server.spans;
  const get = js.find((s) => s.name === "GET");
  const send = js.find((s) => s.name === "send");
  const receive = js.find((s) => s.name === "receive");
  const pyGet = py.find((s) => s.name === "GET");
  const pyReceive = py.find((s) => s.name === "receive");
  const pySend = py.find((s) => s.name === "send");
  assert.equal(pyGet.parent_span_id, get.span_id);
  assert.equal(pyGet.attributes["wstrace.context.source"], "query");
  assert.equal(pyGet.attributes["websocket.envelope"], "frame");
  assert.equal(get.attributes["websocket.envelope"], "frame");
  assert.equal(get.attributes["url.full"], `ws://127.0.0.1:${server.port}/chat`, "no query in url.full");
  assert.equal(pyReceive.parent_span_id, send.span_id);
  assert.equal(pySend.parent_span_id, pyReceive.span_id);
  assert.equal(receive.parent_span_id, pySend.span_id);
  assert.equal(receive.attributes["wstrace.stream.chunk_count"], 2);
  assert.deepEqual(
    replies.filter((r) => r.via === "onmessage").map((r) => r.active),
    [receive.span_id, receive.span_id],
  );
  const sessions = new Set([...js, ...py].map((s) => s.attributes["websocket.session.id"]).filter(Boolean));
  assert.deepEqual([...sessions], [socket.wstraceSessionId], "the session id travelled in the query string");
  const close = js.find((s) => s.name === "close");
  assert.equal(close.attributes["websocket.close.initiator"], "local");
});

test("subprotocol tokens: the application's protocol stands, ours is never seen", { skip }, async () => {
  exporter.reset();
  server.spans.length = 0;
  const socket = tracedWebSocket(`ws://127.0.0.1:${server.port}/`, ["chat"], { handshake: "subprotocol" });
  await turn(socket, "x");
  assert.equal(socket.protocol, "chat");
  assert.equal(server.messages.at(-1).subprotocol, "chat");
  await closeAndWait(socket);
  const pyGet = await until(() => server.spans.find((s) => s.name === "GET"), 10000, "the server's handshake span");
  const get = jsSpans().find((s) => s.name === "GET");
  assert.equal(pyGet.attributes["wstrace.context.source"], "subprotocol");
  assert.equal(pyGet.parent_span_id, get.span_id);
  assert.equal(pyGet.attributes["websocket.session.id"], socket.wstraceSessionId);
  assert.equal(pyGet.attributes["websocket.subprotocol"], "chat");

  // Offered alone, our tokens are echoed by the server (else the handshake would fail), and hidden from the page.
  server.spans.length = 0;
  const alone = tracedWebSocket(`ws://127.0.0.1:${server.port}/`, undefined, { handshake: "subprotocol" });
  await turn(alone, "y");
  assert.equal(alone.protocol, "");
  await closeAndWait(alone);
  const echoed = await until(() => server.spans.find((s) => s.name === "GET"), 10000, "the server's handshake span");
  assert.equal(echoed.attributes["websocket.session.id"], alone.wstraceSessionId);
  assert.ok(!("websocket.subprotocol" in echoed.attributes));
});

test("binary messages: binaryType blob (the default) and arraybuffer", { skip }, async () => {
  exporter.reset();
  const restore = instrumentWebSocket();
  try {
    instrumentWebSocket()(); // a second call changes nothing, and its undo neither
    assert.ok(/** @type {any} */ (WebSocket)[Symbol.for("wstrace.traced")], "still instrumented");
    const socket = new WebSocket(`ws://127.0.0.1:${server.port}/`);
    assert.equal(socket.binaryType, "blob");
    const replies = await turn(socket, new Uint8Array([1, 2, 3]).buffer);
    const blob = replies[0].data;
    assert.ok(blob instanceof Blob);
    assert.deepEqual([...new Uint8Array(await blob.arrayBuffer())], [1, 2, 3, 0]);
    socket.binaryType = "arraybuffer";
    socket.binaryType = /** @type {any} */ ("nonsense");
    assert.equal(socket.binaryType, "arraybuffer");
    replies.length = 0;
    socket.send(new Uint8Array([7]));
    socket.send(new Blob([new Uint8Array([8, 9])]));
    await until(() => replies.length >= 8, 10000, "four more replies, each to both listeners");
    assert.deepEqual(
      replies.filter((r) => r.via === "listener").map((r) => [...new Uint8Array(r.data)]),
      [[7, 0], [7, 1], [8, 9, 0], [8, 9, 1]],
    );
    assert.deepEqual(
      server.messages.slice(-3).map((m) => [m.type, [...Buffer.from(m.data, "base64")]]),
      [
        ["binary", [1, 2, 3]],
        ["binary", [7]],
        ["binary", [8, 9]],
      ],
    );
    await closeAndWait(socket);
  } finally {
    restore();
  }
  assert.equal(/** @type {any} */ (WebSocket)[Symbol.for("wstrace.traced")], undefined, "the page's own class is back");
  uninstrumentWebSocket(); // nothing to undo: harmless
});

test("a server's close, and instrumentation that fails", { skip }, async () => {
  exporter.reset();
  const socket = tracedWebSocket(`ws://127.0.0.1:${server.port}/`);
  await new Promise((resolve) => socket.addEventListener("open", resolve, { once: true }));
  const closed = new Promise((resolve) => socket.addEventListener("close", resolve, { once: true }));
  socket.send("close");
  const event = await closed;
  assert.deepEqual([event.code, event.reason], [4000, "bye"]);
  const close = await until(() => jsSpans().find((s) => s.name === "close"), 5000, "the close span");
  assert.equal(close.attributes["websocket.close.initiator"], "remote");
  assert.equal(close.attributes["websocket.close.code"], 4000);

  const warn = console.warn;
  console.warn = () => {};
  try {
    const broken = tracedWebSocket(`ws://127.0.0.1:${server.port}/`, undefined, {
      tracerProvider: /** @type {any} */ ({
        getTracer() {
          throw new Error("no tracer");
        },
      }),
    });
    const replies = await turn(broken, "still");
    assert.deepEqual(
      replies.filter((r) => r.via === "listener").map((r) => r.data),
      ["still:0", "still:1"],
      "the envelope still applies (the server expects it), untraced",
    );
    await closeAndWait(broken);
  } finally {
    console.warn = warn;
  }
  assert.throws(() => tracedWebSocket("ws://x/", undefined, { envelope: "negotiate" }), /cannot negotiate/);
});
