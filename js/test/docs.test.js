// The hand-copyable codec in docs/protocol.md section 11 agrees with the package's vectors (format frame).

import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { test } from "node:test";
import { fileURLToPath } from "node:url";

const HERE = dirname(fileURLToPath(import.meta.url));

function snippet() {
  const doc = readFileSync(join(HERE, "..", "..", "docs", "protocol.md"), "utf8");
  const start = doc.indexOf("## 11.");
  const end = doc.indexOf("\n## ", start + 1);
  const section = doc.slice(start, end < 0 ? undefined : end);
  const code = [...section.matchAll(/```js\n([\s\S]*?)```/g)].map((m) => m[1]).join("\n");
  assert.ok(code.includes("function decodeFrame") && code.includes("encodeText"), "section 11 has the minimal codec");
  return new Function(`${code}\nreturn { decodeFrame, encodeText };`)();
}

const data = (d) => (typeof d.text === "string" ? d.text : new Uint8Array(Buffer.from(d.base64, "base64")).buffer);
const same = (a, b) =>
  typeof a === "string" ? a === b : Buffer.from(new Uint8Array(a)).equals(Buffer.from(new Uint8Array(b)));

test("the section 11 snippet decodes and encodes like the package's vectors", () => {
  const { decodeFrame, encodeText } = snippet();
  const vectors = JSON.parse(readFileSync(join(HERE, "fixtures", "vectors.json"), "utf8"));
  const cap = vectors.defaults.max_header_bytes;
  let checked = 0;
  for (const c of vectors.decode) {
    if (c.format !== "frame" || (c.type === "text") !== ("text" in c.wire)) continue; // a text frame as bytes
    const wire = data(c.wire);
    const { payload, carrier } = decodeFrame(wire, c.options?.max_header_bytes ?? cap);
    if (c.expect === "unchanged") {
      assert.equal(carrier, null, c.id);
      assert.ok(same(payload, wire), c.id);
    } else {
      assert.deepEqual({ ...carrier }, c.expect.carrier, c.id);
      assert.ok(same(payload, data(c.expect.payload)), c.id);
    }
    checked++;
  }
  for (const c of vectors.encode) {
    if (c.format !== "frame" || c.type !== "text" || "error" in c || !("text" in c.payload)) continue;
    assert.equal(encodeText(c.payload.text, c.carrier), c.wire.text, c.id);
    checked++;
  }
  assert.ok(checked >= 20, `only ${checked} cases checked`);
});
