// The official Socket.IO client (npm socket.io-client@4) as an un-instrumented peer of a python-socketio server.
//
//     node socketio_client.js URL [offer]
//
// Connects over the WebSocket transport, then: echo (with an ack), join, shout (the server broadcasts "news" to
// the room), ask (the server calls "question" on this client, which answers). Prints one JSON line: every event
// received with its arguments, every ack's arguments, and the namespace's id. "offer" sends the wstrace offer
// header, to prove that this client ignores the server's answer.
const { io } = require("socket.io-client");

const url = process.argv[2];
const offer = process.argv[3] === "offer";
const received = [];
const acks = [];

const socket = io(url, {
  transports: ["websocket"],
  reconnection: false,
  extraHeaders: offer ? { "wstrace-socketio": "1" } : {},
});
socket.onAny((event, ...args) => received.push([event, args]));
socket.on("question", (...args) => {
  const ack = args[args.length - 1];
  if (typeof ack === "function") ack({ answer: args[0] });
});

function done(error) {
  console.log(JSON.stringify({ received, acks, connected: socket.connected, error: error ? String(error) : null }));
  socket.disconnect();
  process.exit(0);
}

socket.on("connect_error", (err) => done(err));
socket.on("connect", async () => {
  try {
    acks.push(await socket.timeout(5000).emitWithAck("echo", { a: 1 }, "two", [3]));
    acks.push(await socket.timeout(5000).emitWithAck("echo"));
    acks.push(await socket.timeout(5000).emitWithAck("join"));
    acks.push(await socket.timeout(5000).emitWithAck("shout", "hello"));
    acks.push(await socket.timeout(5000).emitWithAck("ask", "why?"));
    await new Promise((resolve) => setTimeout(resolve, 200));
    done(null);
  } catch (err) {
    done(err);
  }
});
setTimeout(() => done("timeout"), 15000);
