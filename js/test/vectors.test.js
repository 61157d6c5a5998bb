// The envelope codec against test vectors: the spec's, docs/protocol/vectors.json (skipped, saying so, while it does
// not exist), and this package's own, test/fixtures/vectors.json, made by the reference codec (tests/js/vectors_fixture.py).
//
// Schema: {"spec", "defaults": {"max_header_bytes", "json_field"},
//   "encode": [{"id", "reason", "format": "frame"|"json", "type": "text"|"binary", "carrier", "payload": DATA,
//               "options"?: {"max_header_bytes"?, "json_field"?}, "wire": DATA | "error": "why"}],
//   "decode": [{"id", "reason", "format", "type", "wire": DATA, "options"?,
//               "expect": {"carrier", "payload": DATA} | "unchanged"}]}
// where DATA is {"text": string} or {"base64": string}.

import assert from "node:assert/strict";
import { existsSync, readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { test } from "node:test";
import { fileURLToPath } from "node:url";

import { decode, decodeJsonField, encode, encodeJsonField, EnvelopeEncodeError } from "../src/envelope.js";

const HERE = dirname(fileURLToPath(import.meta.url));
const SPEC_VECTORS = join(HERE, "..", "..", "docs", "protocol", "vectors.json");
const OWN_VECTORS = join(HERE, "fixtures", "vectors.json");
const ENCODER = new TextEncoder();

/**
 * @param {{text?: string, base64?: string}} data
 * @param {string} where
 * @returns {string | Uint8Array}
 */
function fromData(data, where) {
  assert.ok(data && typeof data === "object", `${where}: expected {"text"} or {"base64"}`);
  if (typeof data.text === "string") return data.text;
  assert.equal(typeof data.base64, "string", `${where}: expected {"text"} or {"base64"}`);
  return new Uint8Array(Buffer.from(/** @type {string} */ (data.base64), "base64"));
}

/**
 * @param {unknown} value  a string or bytes (any kind)
 * @returns {Uint8Array}
 */
function bytes(value) {
  if (typeof value === "string") return ENCODER.encode(value);
  if (value instanceof ArrayBuffer) return new Uint8Array(value);
  if (ArrayBuffer.isView(value)) return new Uint8Array(value.buffer, value.byteOffset, value.byteLength);
  throw new TypeError(`not a payload: ${Object.prototype.toString.call(value)}`);
}

/**
 * Equal as strings when both are strings, else as bytes (text as UTF-8).
 * @param {unknown} actual
 * @param {string | Uint8Array} expected
 * @param {string} message
 */
function assertSameData(actual, expected, message) {
  if (typeof actual === "string" && typeof expected === "string") {
    assert.equal(actual, expected, message);
    return;
  }
  assert.equal(Buffer.from(bytes(actual)).toString("hex"), Buffer.from(bytes(expected)).toString("hex"), message);
}

/**
 * @param {any} vectors
 * @param {string} file
 */
function checkShape(vectors, file) {
  assert.equal(typeof vectors, "object", `${file}: not a JSON object`);
  assert.equal(typeof vectors.spec, "string", `${file}: "spec" must be a string`);
  assert.ok(Number.isInteger(vectors.defaults?.max_header_bytes), `${file}: defaults.max_header_bytes`);
  assert.equal(typeof vectors.defaults?.json_field, "string", `${file}: defaults.json_field`);
  assert.ok(Array.isArray(vectors.encode) && Array.isArray(vectors.decode), `${file}: "encode" and "decode" arrays`);
  for (const c of [...vectors.encode, ...vectors.decode]) {
    assert.equal(typeof c.id, "string", `${file}: a case without an id`);
    assert.ok(["frame", "json"].includes(c.format), `${file}: ${c.id}: format ${c.format}`);
    assert.ok(["text", "binary"].includes(c.type), `${file}: ${c.id}: type ${c.type}`);
  }
}

/**
 * @param {any} defaults
 * @param {any} c  a case
 * @returns {{maxHeaderBytes: number, field: string}}
 */
function optionsOf(defaults, c) {
  const o = { ...defaults, ...(c.options ?? {}) };
  return { maxHeaderBytes: o.max_header_bytes, field: o.json_field };
}

/**
 * @param {any} defaults
 * @param {any} c  an encode case
 */
function runEncode(defaults, c) {
  const where = `encode ${c.id} (${c.reason})`;
  const payload = fromData(c.payload, where);
  const { maxHeaderBytes, field } = optionsOf(defaults, c);
  const run = () =>
    c.format === "frame"
      ? encode(payload, c.carrier, { text: c.type === "text", maxHeaderBytes })
      : encodeJsonField(payload, c.carrier, { field, maxHeaderBytes });
  if ("error" in c) {
    assert.throws(run, EnvelopeEncodeError, `${where}: expected an error (${c.error})`);
    return;
  }
  assertSameData(run(), fromData(c.wire, where), where);
}

/**
 * @param {any} defaults
 * @param {any} c  a decode case
 */
function runDecode(defaults, c) {
  const where = `decode ${c.id} (${c.reason})`;
  const wire = fromData(c.wire, where);
  const { maxHeaderBytes, field } = optionsOf(defaults, c);
  const decoded =
    c.format === "frame"
      ? decode(wire, { text: c.type === "text", maxHeaderBytes })
      : decodeJsonField(wire, { field, maxHeaderBytes });
  if (c.expect === "unchanged") {
    assert.equal(decoded.carrier, null, `${where}: expected no envelope`);
    assertSameData(decoded.payload, wire, `${where}: the frame must come back unchanged`);
    return;
  }
  assert.deepEqual(decoded.carrier === null ? null : { ...decoded.carrier }, c.expect.carrier, `${where}: carrier`);
  assertSameData(decoded.payload, fromData(c.expect.payload, where), `${where}: payload`);
}

/**
 * One test per file, a subtest per case.
 * @param {string} name
 * @param {string} file
 * @param {string | false} skip
 */
function vectorsTest(name, file, skip) {
  test(name, { skip }, async (t) => {
    const vectors = JSON.parse(readFileSync(file, "utf8"));
    checkShape(vectors, file);
    assert.ok(vectors.encode.length + vectors.decode.length > 0, `${file}: no cases`);
    for (const c of vectors.encode) await t.test(`encode ${c.id}`, () => runEncode(vectors.defaults, c));
    for (const c of vectors.decode) await t.test(`decode ${c.id}`, () => runDecode(vectors.defaults, c));
  });
}

vectorsTest(
  "the spec's vectors (docs/protocol/vectors.json)",
  SPEC_VECTORS,
  existsSync(SPEC_VECTORS) ? false : `${SPEC_VECTORS} does not exist (yet): the spec's test vectors were not run`,
);
vectorsTest("this package's vectors, made by the reference codec (test/fixtures/vectors.json)", OWN_VECTORS, false);
