// The wstrace message envelope, version 1 (docs/protocol.md): trace context carried inside WebSocket data frames.
//
// A port of the reference codec, Python's `wstrace.envelope`, with the same rules: encoders never parse the
// payload (they prepend, or in the JSON format insert right after the opening brace); decoders never throw on
// foreign input: anything that is not exactly a valid envelope comes back unchanged with `carrier: null`.
//
// Payloads: text as a `string` (or its UTF-8 bytes), binary as bytes: an `ArrayBuffer` or any `ArrayBufferView`
// (`Uint8Array`, Node's `Buffer`, ...). A decoded payload has the kind of the frame it came from: a string from a
// string, an `ArrayBuffer` from an `ArrayBuffer`, a `Uint8Array` (a `Buffer` from a `Buffer`) sharing the frame's
// memory from a view.

/** Prefix of a version 1 text envelope: record separator, `wt`, version. */
export const TEXT_MAGIC = "\x1ewt1";
/** Prefix of a version 1 binary envelope, as bytes: 1E 77 74 01. */
export const BINARY_MAGIC = Object.freeze([0x1e, 0x77, 0x74, 0x01]);
/** Largest header an encoder writes or a decoder accepts, in bytes, unless told otherwise. */
export const DEFAULT_MAX_HEADER_BYTES = 8192;
/** The largest cap there can be: the binary length field has 16 bits. */
export const MAX_HEADER_BYTES_LIMIT = 0xffff;
/** Member name that carries the context in the JSON-field format. */
export const DEFAULT_JSON_FIELD = "_wstrace";
/** The offer and answer of the `wstrace-envelope` handshake header, per format. */
export const ENVELOPE_VERSION = "1";

/** @typedef {Record<string, string>} Carrier  A propagation carrier: the fields a propagator writes. */
/** @typedef {string | ArrayBuffer | ArrayBufferView} Payload  A text or binary message. */
/**
 * @template {Payload} [P=Payload]
 * @typedef {{payload: P, carrier: Carrier | null}} Decoded  A decoded frame: `carrier` is `null` if it held no envelope.
 */
/** @typedef {{maxHeaderBytes?: number}} CapOptions */
/** @typedef {{maxHeaderBytes?: number, field?: string}} JsonOptions */

/** A carrier that cannot be encoded: a bad key, a value with a lone surrogate, a header over the cap. */
export class EnvelopeEncodeError extends Error {
  /** @param {string} message */
  constructor(message) {
    super(message);
    this.name = "EnvelopeEncodeError";
  }
}

const SEP = 0x1e;
const KEY = /^[a-z0-9][a-z0-9_.-]*$/;
const UNRESERVED = /^[A-Za-z0-9_.~-]*$/;
const ITEM = "[a-z0-9][a-z0-9_.-]*=(?:[A-Za-z0-9_.~-]|%[0-9A-Fa-f]{2})*";
const HEADER = new RegExp(`^(?:${ITEM}(?:&${ITEM})*)?$`);
const JSON_STRING = '"(?:[ !#-\\[\\]-~]|\\\\["\\\\/bfnrt]|\\\\u[0-9A-Fa-f]{4})*"';
const JSON_MEMBER = `"[a-z0-9][a-z0-9_.-]*":${JSON_STRING}`;
const JSON_KEYS = /(?<=[{,])"[a-z0-9][a-z0-9_.-]*"(?=:)/g;
const JSON_CARRIER = new RegExp(`^\\{(?:${JSON_MEMBER}(?:,${JSON_MEMBER})*)?\\}`);
const ENCODER = new TextEncoder();

/**
 * @param {number | undefined} cap
 * @returns {number}
 */
function checkCap(cap) {
  const value = cap === undefined ? DEFAULT_MAX_HEADER_BYTES : cap;
  if (!Number.isInteger(value) || value < 0 || value > MAX_HEADER_BYTES_LIMIT) {
    throw new EnvelopeEncodeError(`maxHeaderBytes must be an integer within 0..${MAX_HEADER_BYTES_LIMIT}, got ${cap}`);
  }
  return value;
}

/**
 * Percent-encode a value as the reference does (Python's `quote(value, safe="")`): UTF-8, every byte but
 * `A-Z a-z 0-9 - . _ ~` as `%XX` with uppercase hex digits.
 * @param {string} value
 * @returns {string}
 */
export function percentEncode(value) {
  if (UNRESERVED.test(value)) return value;
  let encoded;
  try {
    encoded = encodeURIComponent(value);
  } catch {
    throw new EnvelopeEncodeError("a carrier value is not encodable as UTF-8 (lone surrogate)");
  }
  return encoded.replace(/[!'()*]/g, (c) => "%" + c.charCodeAt(0).toString(16).toUpperCase());
}

/**
 * Refuse a carrier item no envelope can hold: keys are lowercase tokens, values strings with a UTF-8 form.
 * @param {string} key
 * @param {unknown} value
 */
function checkItem(key, value) {
  if (typeof value !== "string") throw new EnvelopeEncodeError("carrier values must be strings");
  if (!KEY.test(key)) throw new EnvelopeEncodeError(`carrier key ${JSON.stringify(key)} is not a lowercase token`);
  if (!isWellFormed(value)) throw new EnvelopeEncodeError(`carrier value of ${key} is not encodable as UTF-8`);
}

/**
 * The header (section 7) of a carrier: `key=value&...`, checked against the cap.
 * @param {Carrier | null | undefined} carrier
 * @param {number} [maxHeaderBytes]
 * @returns {string}
 */
export function encodeHeader(carrier, maxHeaderBytes) {
  const cap = checkCap(maxHeaderBytes);
  if (!carrier) return "";
  const parts = [];
  for (const [key, value] of Object.entries(carrier)) {
    checkItem(key, value);
    parts.push(`${key}=${percentEncode(value)}`);
  }
  const header = parts.join("&");
  if (header.length > cap) {
    throw new EnvelopeEncodeError(`carrier of ${header.length} bytes exceeds the ${cap}-byte header cap`);
  }
  return header;
}

/**
 * Parse a header (section 7) into a carrier; `null` if it breaks the grammar, repeats a key, or a value does not
 * percent-decode to UTF-8 (section 8). Values may only hold unreserved characters and `%XX` escapes.
 * @param {string} header
 * @returns {Carrier | null}
 */
export function parseHeader(header) {
  /** @type {Carrier} */
  const carrier = {};
  if (!header) return carrier;
  if (!HEADER.test(header)) return null;
  for (const item of header.split("&")) {
    const eq = item.indexOf("=");
    const key = item.slice(0, eq);
    if (Object.prototype.hasOwnProperty.call(carrier, key)) return null;
    let value = item.slice(eq + 1);
    if (value.includes("%")) {
      try {
        value = decodeURIComponent(value); // only %XX escapes pass the grammar: this throws on bad UTF-8 alone
      } catch {
        return null;
      }
    }
    carrier[key] = value;
  }
  return carrier;
}

/**
 * Everything a text envelope puts before the payload.
 * @param {Carrier | null | undefined} carrier
 * @param {CapOptions} [options]
 * @returns {string}
 */
export function textPrefix(carrier, options = {}) {
  return `${TEXT_MAGIC}${encodeHeader(carrier, options.maxHeaderBytes)}\x1e`;
}

/**
 * Everything a binary envelope puts before the payload.
 * @param {Carrier | null | undefined} carrier
 * @param {CapOptions} [options]
 * @returns {Uint8Array}
 */
export function binaryPrefix(carrier, options = {}) {
  const header = encodeHeader(carrier, options.maxHeaderBytes);
  const out = new Uint8Array(6 + header.length);
  out.set(BINARY_MAGIC);
  out[4] = header.length >> 8;
  out[5] = header.length & 0xff;
  for (let i = 0; i < header.length; i++) out[6 + i] = header.charCodeAt(i);
  return out;
}

/**
 * Bytes of a binary payload, without copying where possible.
 * @param {ArrayBuffer | ArrayBufferView} data
 * @returns {Uint8Array}
 */
export function bytesOf(data) {
  if (data instanceof Uint8Array) return data;
  if (ArrayBuffer.isView(data)) return new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
  if (isArrayBuffer(data)) return new Uint8Array(data);
  throw new EnvelopeEncodeError(`cannot encode a ${Object.prototype.toString.call(data)} payload`);
}

/**
 * Whether `data` is an ArrayBuffer (or SharedArrayBuffer), from this realm or another.
 * @param {unknown} data
 * @returns {data is ArrayBuffer}
 */
export function isArrayBuffer(data) {
  if (data instanceof ArrayBuffer) return true;
  const tag = Object.prototype.toString.call(data);
  return tag === "[object ArrayBuffer]" || tag === "[object SharedArrayBuffer]";
}

/**
 * @param {Uint8Array} a
 * @param {Uint8Array} b
 * @returns {Uint8Array}
 */
function concat(a, b) {
  const out = new Uint8Array(a.length + b.length);
  out.set(a);
  out.set(b, a.length);
  return out;
}

/**
 * Wrap a text-frame payload: a string gives a string, UTF-8 bytes give a `Uint8Array`.
 * @param {string | ArrayBuffer | ArrayBufferView} payload
 * @param {Carrier | null | undefined} carrier
 * @param {CapOptions} [options]
 * @returns {string | Uint8Array}
 */
export function encodeText(payload, carrier, options = {}) {
  const prefix = textPrefix(carrier, options);
  if (typeof payload === "string") return prefix + payload;
  return concat(ENCODER.encode(prefix), bytesOf(payload));
}

/**
 * Wrap a binary-frame payload (a string is sent as its UTF-8 bytes).
 * @param {string | ArrayBuffer | ArrayBufferView} payload
 * @param {Carrier | null | undefined} carrier
 * @param {CapOptions} [options]
 * @returns {Uint8Array}
 */
export function encodeBinary(payload, carrier, options = {}) {
  const prefix = binaryPrefix(carrier, options);
  return concat(prefix, typeof payload === "string" ? ENCODER.encode(payload) : bytesOf(payload));
}

/**
 * Wrap a payload in the framing of its frame type; `text` defaults to `typeof payload === "string"`, as
 * WebSocket APIs choose the frame type.
 * @param {string | ArrayBuffer | ArrayBufferView} payload
 * @param {Carrier | null | undefined} carrier
 * @param {CapOptions & {text?: boolean}} [options]
 * @returns {string | Uint8Array}
 */
export function encode(payload, carrier, options = {}) {
  const text = options.text === undefined ? typeof payload === "string" : options.text;
  return text ? encodeText(payload, carrier, options) : encodeBinary(payload, carrier, options);
}

/**
 * @template {Payload} P
 * @param {P} wire
 * @param {number} at  offset of the payload
 * @returns {P}
 */
function rest(wire, at) {
  if (typeof wire === "string") return /** @type {P} */ (wire.slice(at));
  if (isArrayBuffer(wire)) return /** @type {P} */ (wire.slice(at));
  if (wire instanceof Uint8Array) return /** @type {P} */ (/** @type {unknown} */ (wire.subarray(at)));
  const view = /** @type {ArrayBufferView} */ (wire);
  return /** @type {P} */ (/** @type {unknown} */ (new Uint8Array(view.buffer, view.byteOffset + at, view.byteLength - at)));
}

/**
 * Decode a frame (format `frame`) without ever throwing: a valid envelope gives its payload and carrier;
 * anything else gives the frame unchanged and `carrier: null`.
 *
 * `text` is the frame type: `true` accepts only the text layout (in a string or its UTF-8 bytes), `false` only the
 * binary one. Left out (the type is not known), a string is a text frame and bytes may hold either layout.
 * @template {Payload} P
 * @param {P} wire
 * @param {CapOptions & {text?: boolean}} [options]
 * @returns {Decoded<P>}
 */
export function decode(wire, options = {}) {
  const unchanged = { payload: wire, carrier: null };
  try {
    const cap = options.maxHeaderBytes === undefined ? DEFAULT_MAX_HEADER_BYTES : options.maxHeaderBytes;
    const text = options.text;
    if (typeof wire === "string") {
      if (text === false || !wire.startsWith(TEXT_MAGIC)) return unchanged;
      const end = wire.slice(0, 4 + cap + 1).indexOf("\x1e", 4);
      if (end < 0) return unchanged;
      const carrier = parseHeader(wire.slice(4, end));
      return carrier ? { payload: rest(wire, end + 1), carrier } : unchanged;
    }
    if (!isArrayBuffer(wire) && !ArrayBuffer.isView(wire)) return unchanged;
    const b = bytesOf(/** @type {ArrayBuffer | ArrayBufferView} */ (wire));
    if (b.length < 4 || b[0] !== SEP || b[1] !== 0x77 || b[2] !== 0x74) return unchanged;
    let start, end, at;
    if (b[3] === 0x01 && text !== true) {
      if (b.length < 6) return unchanged;
      const size = (b[4] << 8) | b[5];
      if (size > cap || b.length < 6 + size) return unchanged;
      start = 6;
      at = end = 6 + size;
    } else if (b[3] === 0x31 && text !== false) {
      end = b.subarray(0, 4 + cap + 1).indexOf(SEP, 4);
      if (end < 0) return unchanged;
      start = 4;
      at = end + 1;
    } else {
      return unchanged; // another version, or the other frame type's layout
    }
    let header = "";
    for (let i = start; i < end; i++) {
      if (b[i] > 0x7e) return unchanged; // not printable ASCII: breaks the grammar
      header += String.fromCharCode(b[i]);
    }
    const carrier = parseHeader(header);
    return carrier ? { payload: rest(wire, at), carrier } : unchanged;
  } catch {
    return unchanged;
  }
}

// JSON-field format (section 6) ---------------------------------------------------------------------------------

/**
 * A string as JSON with every character outside printable ASCII escaped, as Python's `json.dumps` writes it.
 * @param {string} value
 * @returns {string}
 */
export function asciiJsonString(value) {
  let out = '"';
  for (let i = 0; i < value.length; i++) {
    const c = value.charCodeAt(i);
    if (c === 0x22) out += '\\"';
    else if (c === 0x5c) out += "\\\\";
    else if (c >= 0x20 && c < 0x7f) out += value[i];
    else if (c === 0x0a) out += "\\n";
    else if (c === 0x0d) out += "\\r";
    else if (c === 0x09) out += "\\t";
    else if (c === 0x08) out += "\\b";
    else if (c === 0x0c) out += "\\f";
    else out += "\\u" + c.toString(16).padStart(4, "0");
  }
  return out + '"';
}

/**
 * The index of the opening brace of a JSON-object payload (after JSON blanks), or -1.
 * @param {string | Uint8Array} wire
 * @returns {number}
 */
function jsonStart(wire) {
  let i = 0;
  const n = wire.length;
  if (typeof wire === "string") {
    while (i < n && " \t\n\r".includes(wire[i])) i++;
    return i < n && wire[i] === "{" ? i : -1;
  }
  while (i < n && (wire[i] === 0x20 || wire[i] === 0x09 || wire[i] === 0x0a || wire[i] === 0x0d)) i++;
  return i < n && wire[i] === 0x7b ? i : -1;
}

/**
 * Insert `"<field>":{carrier}` as the first member of a JSON-object payload. A payload that is not a JSON object
 * (by its first non-blank character) is returned unchanged. The rest is never parsed.
 * @template {string | ArrayBuffer | ArrayBufferView} P
 * @param {P} payload
 * @param {Carrier | null | undefined} carrier
 * @param {JsonOptions} [options]
 * @returns {P | Uint8Array}
 */
export function encodeJsonField(payload, carrier, options = {}) {
  const field = options.field === undefined ? DEFAULT_JSON_FIELD : options.field;
  const cap = checkCap(options.maxHeaderBytes);
  /** @type {string | Uint8Array} */
  const wire =
    typeof payload === "string" ? String(payload) : bytesOf(/** @type {ArrayBuffer | ArrayBufferView} */ (payload));
  const start = jsonStart(wire);
  if (start < 0) return payload;
  for (const [key, value] of Object.entries(carrier || {})) checkItem(key, value);
  const obj =
    "{" +
    Object.entries(carrier || {})
      .map(([k, v]) => `${asciiJsonString(k)}:${asciiJsonString(v)}`)
      .join(",") +
    "}";
  if (obj.length > cap) {
    throw new EnvelopeEncodeError(`carrier of ${obj.length} bytes of JSON exceeds the ${cap}-byte header cap`);
  }
  const member = asciiJsonString(field) + ":" + obj;
  if (typeof wire === "string") {
    const after = wire.slice(start + 1);
    const comma = after.replace(/^[ \t\n\r]*/, "")[0] === "}" ? "" : ",";
    return /** @type {P} */ (/** @type {unknown} */ (wire.slice(0, start + 1) + member + comma + after));
  }
  let j = start + 1;
  while (j < wire.length && (wire[j] === 0x20 || wire[j] === 0x09 || wire[j] === 0x0a || wire[j] === 0x0d)) j++;
  const comma = wire[j] === 0x7d ? "" : ",";
  const inserted = ENCODER.encode(member + comma);
  const out = new Uint8Array(wire.length + inserted.length);
  out.set(wire.subarray(0, start + 1));
  out.set(inserted, start + 1);
  out.set(wire.subarray(start + 1), start + 1 + inserted.length);
  return out;
}

/**
 * The carrier object at the start of `window` (section 6, exactly: printable ASCII, no blanks, keys written
 * literally, string values, no key twice, no lone surrogate) and its length, or `null`.
 * @param {string} window  at most `cap` characters, one per byte for bytes
 * @returns {[Carrier, number] | null}
 */
function jsonCarrier(window) {
  const found = JSON_CARRIER.exec(window);
  if (!found) return null;
  /** @type {Carrier} */
  const carrier = {};
  const members = found[0].length > 2 ? JSON.parse(found[0]) : {};
  const keys = found[0].match(JSON_KEYS) || [];
  if (new Set(keys).size !== keys.length) return null; // JSON.parse would keep the last of a repeated key
  for (const [key, value] of Object.entries(members)) {
    if (!isWellFormed(value)) return null;
    carrier[key] = value;
  }
  return [carrier, found[0].length];
}

/**
 * @param {string} value
 * @returns {boolean}  whether it has no lone surrogate (it has a UTF-8 form)
 */
function isWellFormed(value) {
  return !/[\ud800-\udbff](?![\udc00-\udfff])|(?<![\ud800-\udbff])[\udc00-\udfff]/.test(value);
}

/**
 * Remove the carrier member that `encodeJsonField` inserted; never throws. Only the canonical form is recognised:
 * the member first, right after the brace, with no blanks around its key and colon nor inside the carrier
 * object; a comma follows it unless only blanks and `}` do. Anything else is returned unchanged.
 * @template {Payload} P
 * @param {P} wire
 * @param {JsonOptions} [options]
 * @returns {Decoded<P>}
 */
export function decodeJsonField(wire, options = {}) {
  const unchanged = { payload: wire, carrier: null };
  try {
    const field = options.field === undefined ? DEFAULT_JSON_FIELD : options.field;
    const cap = options.maxHeaderBytes === undefined ? DEFAULT_MAX_HEADER_BYTES : options.maxHeaderBytes;
    const key = asciiJsonString(field) + ":";
    if (typeof wire === "string") {
      const start = jsonStart(wire);
      if (start < 0 || !wire.startsWith(key, start + 1)) return unchanged;
      const valueAt = start + 1 + key.length;
      const found = jsonCarrier(wire.slice(valueAt, valueAt + cap));
      if (!found) return unchanged;
      let after = wire.slice(valueAt + found[1]);
      if (after[0] === ",") {
        after = after.slice(1);
        if (after.replace(/^[ \t\n\r]*/, "")[0] === "}") return unchanged; // no comma before a closing brace
      } else if (after.replace(/^[ \t\n\r]*/, "")[0] !== "}") return unchanged;
      return { payload: /** @type {P} */ (wire.slice(0, start + 1) + after), carrier: found[0] };
    }
    if (!isArrayBuffer(wire) && !ArrayBuffer.isView(wire)) return unchanged;
    const b = bytesOf(/** @type {ArrayBuffer | ArrayBufferView} */ (wire));
    const start = jsonStart(b);
    if (start < 0) return unchanged;
    for (let i = 0; i < key.length; i++) if (b[start + 1 + i] !== key.charCodeAt(i)) return unchanged;
    const valueAt = start + 1 + key.length;
    let window = "";
    for (const x of b.subarray(valueAt, valueAt + cap)) window += String.fromCharCode(x); // one char per byte
    const found = jsonCarrier(window);
    if (!found) return unchanged;
    let at = valueAt + found[1];
    const blank = (/** @type {number} */ j) => b[j] === 0x20 || b[j] === 0x09 || b[j] === 0x0a || b[j] === 0x0d;
    let j;
    if (b[at] === 0x2c) {
      at += 1;
      for (j = at; j < b.length && blank(j); j++);
      if (b[j] === 0x7d) return unchanged;
    } else {
      for (j = at; j < b.length && blank(j); j++);
      if (b[j] !== 0x7d) return unchanged;
    }
    const out = new Uint8Array(b.length - (at - start - 1));
    out.set(b.subarray(0, start + 1));
    out.set(b.subarray(at), start + 1);
    return { payload: /** @type {P} */ (sameKind(wire, out)), carrier: found[0] };
  } catch {
    return unchanged;
  }
}

/**
 * `bytes` as the kind of `like`: an ArrayBuffer for an ArrayBuffer, a Buffer for a Buffer, else a Uint8Array.
 * @param {Payload} like
 * @param {Uint8Array} bytes
 * @returns {ArrayBuffer | Uint8Array}
 */
function sameKind(like, bytes) {
  if (isArrayBuffer(like)) {
    return /** @type {ArrayBuffer} */ (bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.byteLength));
  }
  const NodeBuffer = /** @type {any} */ (globalThis).Buffer;
  if (NodeBuffer && NodeBuffer.isBuffer(like)) return NodeBuffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  return bytes;
}

/**
 * A payload's size in bytes: UTF-8 bytes for text, bytes for binary (a Blob's size), `undefined` otherwise.
 * @param {unknown} payload
 * @returns {number | undefined}
 */
export function byteSize(payload) {
  if (typeof payload === "string") {
    let n = payload.length;
    for (let i = 0; i < payload.length; i++) {
      const c = payload.charCodeAt(i);
      if (c < 0x80) continue;
      if (c < 0x800) n += 1;
      else if (c >= 0xd800 && c < 0xdc00 && i + 1 < payload.length) {
        const d = payload.charCodeAt(i + 1);
        if (d >= 0xdc00 && d < 0xe000) {
          n += 2; // a pair: 4 bytes for 2 units
          i++;
        } else n += 2;
      } else n += 2;
    }
    return n;
  }
  if (isArrayBuffer(payload)) return payload.byteLength;
  if (ArrayBuffer.isView(payload)) return payload.byteLength;
  if (payload && typeof payload === "object" && typeof (/** @type {any} */ (payload).size) === "number") {
    return /** @type {any} */ (payload).size; // a Blob
  }
  return undefined;
}
