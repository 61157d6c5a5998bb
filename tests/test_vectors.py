"""The envelope's test vectors (docs/protocol/vectors.json) against wstrace.envelope, the reference codec.

Every case of the file is one test; a peer in another language runs the same file (docs/protocol.md,
"Test vectors").
"""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from wstrace.envelope import (
    DEFAULT_JSON_FIELD,
    DEFAULT_MAX_HEADER_BYTES,
    Decoded,
    decode,
    decode_json_field,
    encode,
    encode_json_field,
)
from wstrace.exceptions import EnvelopeEncodeError


DOCS = Path(__file__).resolve().parent.parent / "docs"
VECTORS = DOCS / "protocol" / "vectors.json"
DOC: dict[str, Any] = json.loads(VECTORS.read_text(encoding="utf-8"))
ENCODE: list[dict[str, Any]] = DOC["encode"]
DECODE: list[dict[str, Any]] = DOC["decode"]


def _value(value: dict[str, str]) -> str | bytes:
    """A frame's content: ``{"text": ...}`` for a text frame, ``{"base64": ...}`` for a binary one."""
    (kind,) = value
    return value["text"] if kind == "text" else base64.b64decode(value["base64"], validate=True)


def _options(case: dict[str, Any]) -> tuple[int, str]:
    options = {**DOC["defaults"], **case.get("options", {})}
    return options["max_header_bytes"], options["json_field"]


def _decode(case: dict[str, Any], wire: str | bytes) -> Decoded:
    cap, field = _options(case)
    if case["format"] == "json":
        return decode_json_field(wire, field=field, max_header=cap)
    return decode(wire, text=case["type"] == "text", max_header=cap)


def _as_bytes(value: str | bytes) -> bytes:
    return value.encode("utf-8") if isinstance(value, str) else value


def _is_object(payload: str | bytes) -> bool:
    """Whether the json format applies: the first character after JSON blanks is ``{``."""
    return _as_bytes(payload).lstrip(b" \t\n\r")[:1] == b"{"


# The file ------------------------------------------------------------------------------------------


def test_the_file_has_enough_well_formed_cases() -> None:
    """At least 80 cases, unique ids, a one-line reason each, and only the documented members."""
    assert DOC["spec"] == "1.1"
    assert DOC["defaults"] == {"max_header_bytes": DEFAULT_MAX_HEADER_BYTES, "json_field": DEFAULT_JSON_FIELD}
    cases = ENCODE + DECODE
    assert len(cases) >= 80
    ids = [case["id"] for case in cases]
    assert len(set(ids)) == len(ids), "ids are unique"
    for kind, group in (("enc", ENCODE), ("dec", DECODE)):
        for case in group:
            assert re.fullmatch(rf"{kind}-(frame|json)-(text|binary)-\d{{3}}", case["id"]), case["id"]
            assert case["id"].split("-")[1:3] == [case["format"], case["type"]], case["id"]
            reason = case["reason"]
            assert isinstance(reason, str) and reason.strip() and "\n" not in reason, case["id"]
            assert set(case.get("options", {})) <= {"max_header_bytes", "json_field"}, case["id"]
    frame_key = {"text": "text", "binary": "base64"}
    for case in ENCODE:
        assert set(case) - {"options"} in (
            {"id", "reason", "format", "type", "carrier", "payload", "wire"},
            {"id", "reason", "format", "type", "carrier", "payload", "error"},
        ), case["id"]
        assert list(case["payload"]) == [frame_key[case["type"]]], case["id"]
        assert "error" in case or list(case["wire"]) == [frame_key[case["type"]]], case["id"]
    for case in DECODE:
        assert set(case) - {"options"} == {"id", "reason", "format", "type", "wire", "expect"}, case["id"]
        assert list(case["wire"]) == [frame_key[case["type"]]], case["id"]
        expect = case["expect"]
        assert expect == "unchanged" or (
            set(expect) == {"carrier", "payload"} and list(expect["payload"]) == [frame_key[case["type"]]]
        ), case["id"]


def test_the_cases_cover_every_section_format_and_outcome() -> None:
    """Sections 2 and 5 to 8 are each cited, and every (direction, format, type) has cases, valid and not."""
    reasons = " ".join(case["reason"] for case in ENCODE + DECODE)
    for section in ("2", "5.1", "5.2", "6", "7", "7.1", "8", "9"):
        assert f"section {section}:" in reasons or f"section {section} (" in reasons, section
    for fmt in ("frame", "json"):
        for kind in ("text", "binary"):
            encodes = [c for c in ENCODE if (c["format"], c["type"]) == (fmt, kind)]
            decodes = [c for c in DECODE if (c["format"], c["type"]) == (fmt, kind)]
            assert any("wire" in c for c in encodes) and any(c["expect"] != "unchanged" for c in decodes)
            assert any(c["expect"] == "unchanged" for c in decodes)
            if fmt == "frame" or kind == "text":
                assert any("error" in c for c in encodes)


# The cases -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", ENCODE, ids=[case["id"] for case in ENCODE])
def test_encode(case: dict[str, Any]) -> None:
    cap, field = _options(case)
    payload, carrier, text = _value(case["payload"]), case["carrier"], case["type"] == "text"

    def run(sent: str | bytes) -> str | bytes:
        if case["format"] == "json":
            return encode_json_field(sent, carrier, field=field, max_header=cap)
        return encode(sent, carrier, text=text, max_header=cap)

    if "error" in case:
        with pytest.raises(EnvelopeEncodeError):
            run(payload)
        return
    wire = _value(case["wire"])
    assert run(payload) == wire
    if text:  # a text frame given as its UTF-8 bytes is the same frame
        assert run(_as_bytes(payload)) == _as_bytes(wire)
    # And it reads back.
    decoded = _decode(case, wire)
    if case["format"] == "json" and not _is_object(payload):
        assert wire == payload and decoded == Decoded(payload, None)
    else:
        assert decoded == Decoded(payload, carrier)


@pytest.mark.parametrize("case", DECODE, ids=[case["id"] for case in DECODE])
def test_decode(case: dict[str, Any]) -> None:
    wire = _value(case["wire"])
    expect = case["expect"]
    if expect == "unchanged":
        wanted = Decoded(wire, None)
    else:
        wanted = Decoded(_value(expect["payload"]), expect["carrier"])
    decoded = _decode(case, wire)
    assert decoded == wanted
    assert type(decoded.payload) is type(wire)
    if case["type"] == "text":  # a text frame handed over as its UTF-8 bytes decodes the same
        as_bytes = _decode(case, _as_bytes(wire))
        payload = _as_bytes(wanted.payload)
        assert as_bytes == Decoded(payload, wanted.carrier)


# The JavaScript of docs/protocol.md, section 11 -------------------------------------------------------

_JS_RUNNER = r"""
const doc = JSON.parse(require("fs").readFileSync(process.argv[2], "utf8"));
const val = (v) => ("text" in v ? v.text : new Uint8Array(Buffer.from(v.base64, "base64")).buffer);
const same = (a, b) =>
  typeof a === "string" || typeof b === "string" ? a === b : Buffer.compare(Buffer.from(a), Buffer.from(b)) === 0;
const capOf = (c) => (c.options || {}).max_header_bytes ?? doc.defaults.max_header_bytes;
const failed = [];
for (const c of doc.decode.filter((c) => c.format === "frame")) {
  const wire = val(c.wire), got = decodeFrame(wire, capOf(c));
  const ok = c.expect === "unchanged"
    ? got.carrier === null && same(got.payload, wire)
    : got.carrier !== null && same(got.payload, val(c.expect.payload))
      && JSON.stringify(Object.entries(got.carrier)) === JSON.stringify(Object.entries(c.expect.carrier));
  if (!ok) failed.push(c.id);
}
for (const c of doc.encode.filter((c) => c.format === "frame")) {
  const p = val(c.payload), enc = (carrier) =>
    c.type === "text" ? encodeText(p, carrier, capOf(c)) : encodeBinary(new Uint8Array(p), carrier, capOf(c));
  // A carrier the encoder must refuse is dropped: the message goes out in an empty envelope.
  if (!same(enc(c.carrier), "error" in c ? enc({}) : val(c.wire))) failed.push(c.id);
}
console.log(JSON.stringify(failed));
"""


@pytest.mark.skipif(shutil.which("node") is None, reason="Node.js is not installed")
def test_the_javascript_peer_of_section_11_passes_the_frame_vectors(tmp_path: Path) -> None:
    """The browser code the specification shows is held to the same cases as the reference."""
    text = (DOCS / "protocol.md").read_text(encoding="utf-8")
    section = text[text.index("## 11. ") : text.index("## 12. ")]
    blocks = re.findall(r"```js\n(.*?)```", section, re.S)
    assert len(blocks) == 2
    script = tmp_path / "peer.js"
    script.write_text("\n".join(blocks) + _JS_RUNNER, encoding="utf-8")
    node = shutil.which("node")
    assert node is not None
    out = subprocess.run([node, str(script), str(VECTORS)], capture_output=True, text=True, timeout=60, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []
