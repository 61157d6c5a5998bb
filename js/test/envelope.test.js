// The envelope codec (src/envelope.js) beyond the vectors: payload kinds, the strict decoder rules, limits.

import assert from "node:assert/strict";
import { test } from "node:test";

import {
  EnvelopeEncodeError,
  binaryPrefix,
  byteSize,
  decode,
  decodeJsonField,
  encode,
  encodeBinary,
  encodeJsonField,
  encodeText,
  parseHeader,
  percentEncode,
} from "../src/envelope.js";

const TP = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
const hex = (/** @type {any} */ b) => Buffer.from(b instanceof ArrayBuffer ? new Uint8Array(b) : b).toString("hex");

test("the section 9 examples, byte for byte", () => {
  const text = encodeText('{"op":"ping"}', { traceparent: TP, tracestate: "congo=t61rcWkgMzE" });
  assert.equal(text, `\x1ewt1traceparent=${TP}&tracestate=congo%3Dt61rcWkgMzE\x1e{"op":"ping"}`);
  assert.equal(text.length, 116);
  const binary = encodeBinary(new Uint8Array([0, 1, 2, 3]), { traceparent: TP, baggage: "city=Zürich" });
  assert.equal(binary.length, 104);
  assert.equal(hex(binary.subarray(0, 6)), "1e777401005e");
  assert.ok(Buffer.from(binary).toString("latin1").endsWith("baggage=city%3DZ%C3%BCrich\x00\x01\x02\x03"));
  assert.equal(hex(encodeText("hi", {})), hex(Buffer.from("\x1ewt1\x1ehi")));
  assert.equal(hex(encodeBinary(new Uint8Array([0xca, 0xfe]), null)), "1e7774010000cafe");
});

test("a decoded payload has the kind of its frame, sharing its memory where it can", () => {
  const wire = encodeBinary(new Uint8Array([5, 6]), { a: "1" });
  const fromBuffer = decode(Buffer.from(wire));
  assert.ok(Buffer.isBuffer(fromBuffer.payload));
  const fromArrayBuffer = decode(wire.slice().buffer);
  assert.ok(fromArrayBuffer.payload instanceof ArrayBuffer);
  assert.equal(hex(fromArrayBuffer.payload), "0506");
  const view = decode(wire);
  assert.equal(view.payload.buffer, wire.buffer, "a view of the frame, not a copy");
  const dataView = decode(new DataView(wire.buffer));
  assert.deepEqual(dataView.carrier, { a: "1" });
  assert.equal(hex(dataView.payload), "0506");
  assert.deepEqual(decode(encode("x", { a: "1" })), { payload: "x", carrier: { a: "1" } });
  assert.ok(encode("x", null, { text: false }) instanceof Uint8Array, "a string sent as binary: its UTF-8 bytes");
});

test("the frame type decides the layout when it is known", () => {
  const text = Buffer.from(encodeText("p", { a: "1" }));
  const binary = encodeBinary(Buffer.from("p"), { a: "1" });
  assert.deepEqual(decode(text, { text: true }).carrier, { a: "1" });
  assert.equal(decode(text, { text: false }).carrier, null, "the text layout in a binary frame is not an envelope");
  assert.equal(decode(binary, { text: true }).carrier, null);
  assert.deepEqual(decode(text).carrier, { a: "1" }, "type unknown: bytes may hold either layout");
  assert.equal(decode(encodeText("p", { a: "1" }), { text: false }).carrier, null);
});

test("the decoder delivers anything but an exact envelope unchanged, and never throws", () => {
  for (const wire of [
    "\x1ewt1a=%zz\x1ex", // a stray %: outside the grammar (a conforming sender never writes it)
    "\x1ewt1a=%ED%A0%80\x1ex", // a surrogate's UTF-8 form: not UTF-8
    '\x1ewt1a="\x1ex',
    "\x1ewt1A=1\x1ex",
    "\x1ewt1=1\x1ex",
    "\x1ewt1a=1&\x1ex",
    "\x1ewt1&\x1ex",
    "\x1ewt1é=1\x1ex",
    "\x1ewt",
    "",
  ]) {
    assert.deepEqual(decode(wire), { payload: wire, carrier: null }, JSON.stringify(wire));
  }
  const nonAscii = new Uint8Array([0x1e, 0x77, 0x74, 0x01, 0x00, 0x03, 0x61, 0x3d, 0xc3, 0x78]);
  assert.equal(decode(nonAscii).carrier, null);
  assert.equal(decode(new Uint8Array([0x1e, 0x77, 0x74, 0x02, 0, 0])).carrier, null, "another version");
  for (const junk of [null, undefined, 42, {}, [], new Map()]) {
    assert.equal(decode(/** @type {any} */ (junk)).payload, junk);
    assert.equal(decodeJsonField(/** @type {any} */ (junk)).payload, junk);
  }
  const atCap = `\x1ewt1${"k=" + "v".repeat(8190)}\x1ex`;
  assert.equal(decode(atCap).payload, "x", "a header of exactly the cap is accepted");
  assert.equal(decode(atCap, { maxHeaderBytes: 8191 }).carrier, null);
  assert.deepEqual(parseHeader("a=1&b=%41"), { a: "1", b: "A" });
  assert.equal(parseHeader("a=1&a=1"), null);
});

test("the encoder refuses what no envelope can hold", () => {
  assert.throws(() => encodeText("x", { Bad: "1" }), EnvelopeEncodeError);
  assert.throws(() => encodeText("x", { a: "\ud800" }), EnvelopeEncodeError, "a lone surrogate has no UTF-8 form");
  assert.throws(() => encodeText("x", { a: /** @type {any} */ (1) }), EnvelopeEncodeError);
  assert.throws(() => encodeText("x", { a: "1234" }, { maxHeaderBytes: 5 }), EnvelopeEncodeError);
  assert.equal(encodeText("x", { a: "123" }, { maxHeaderBytes: 5 }), "\x1ewt1a=123\x1ex", "exactly the cap");
  assert.throws(() => binaryPrefix(null, { maxHeaderBytes: 65536 }), EnvelopeEncodeError);
  assert.throws(() => encodeBinary(/** @type {any} */ (42), null), EnvelopeEncodeError);
  assert.equal(percentEncode("!'()*~ é"), "%21%27%28%29%2A~%20%C3%A9");
});

test("the JSON format: the canonical member only", () => {
  const wire = encodeJsonField('{"op":"ping"}', { traceparent: TP, baggage: "city=Zürich\n\"\\" });
  assert.equal(wire, `{"_wstrace":{"traceparent":"${TP}","baggage":"city=Z\\u00fcrich\\n\\"\\\\"},"op":"ping"}`);
  assert.deepEqual(decodeJsonField(wire), { payload: '{"op":"ping"}', carrier: { traceparent: TP, baggage: 'city=Zürich\n"\\' } });
  assert.equal(encodeJsonField('{"a":"😀"}', {}), '{"_wstrace":{},"a":"😀"}', "the payload is not touched");
  assert.equal(encodeJsonField('{"a":1}', { k: "😀" }), '{"_wstrace":{"k":"\\ud83d\\ude00"},"a":1}');
  assert.deepEqual(decodeJsonField('{"_wstrace":{"k":"\\ud83d\\ude00"},"a":1}').carrier, { k: "😀" });
  for (const foreign of [
    '{"_wstrace":{ "a":"1"},"b":2}', // blanks inside the object
    '{"_wstrace" :{},"b":2}',
    '{"_wstrace":{"a":"1","a":"2"},"b":2}',
    '{"_wstrace":{"a":"\\ud800"},"b":2}',
    '{"_wstrace":{"a":"é"},"b":2}',
    '{"_wstrace":{"A":"1"},"b":2}',
    '{"_wstrace":{"a":{"b":"c"}},"b":2}',
    '{"_wstrace":{},}',
    '{"_wstrace":{} x',
    '{"_wstrace":{"a":"1"',
    '{"_wstrace":[],"b":2}',
    "[]",
    "",
  ]) {
    assert.deepEqual(decodeJsonField(foreign), { payload: foreign, carrier: null }, foreign);
  }
  const big = `{"_wstrace":{"k":"${"v".repeat(100)}"},"b":2}`;
  assert.equal(decodeJsonField(big, { maxHeaderBytes: 100 }).carrier, null, "an object over the cap");
  assert.throws(() => encodeJsonField("{}", { k: "v".repeat(100) }, { maxHeaderBytes: 100 }), EnvelopeEncodeError);
  const bytes = encodeJsonField(Buffer.from(' {"a":1}'), { k: "v" });
  assert.ok(bytes instanceof Uint8Array);
  assert.equal(Buffer.from(bytes).toString(), ' {"_wstrace":{"k":"v"},"a":1}');
  const back = decodeJsonField(Buffer.from(bytes));
  assert.ok(Buffer.isBuffer(back.payload));
  assert.equal(back.payload.toString(), ' {"a":1}');
  const ab = decodeJsonField(new Uint8Array(Buffer.from('{"_wstrace":{}}')).buffer);
  assert.ok(ab.payload instanceof ArrayBuffer);
  assert.equal(Buffer.from(ab.payload).toString(), "{}");
  assert.equal(decodeJsonField(Buffer.from('{"_wstrace":{"a":"\xe9"},"b":2}', "latin1")).carrier, null);
});

test("byteSize counts UTF-8 bytes of text and bytes of binary", () => {
  assert.equal(byteSize("héllo ✓ 😀"), Buffer.byteLength("héllo ✓ 😀"));
  assert.equal(byteSize("\ud800x"), 4, "a lone surrogate goes as U+FFFD: 3 bytes");
  assert.equal(byteSize(new ArrayBuffer(7)), 7);
  assert.equal(byteSize(new Uint16Array(3)), 6);
  assert.equal(byteSize(new Blob(["abc"])), 3);
  assert.equal(byteSize(42), undefined);
});
