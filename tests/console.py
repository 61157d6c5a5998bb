"""Reading spans printed by the SDK's console exporter in a child process."""

from __future__ import annotations

import json
from typing import Any


def console_spans(text: str) -> list[dict[str, Any]]:
    """Every span object found in ``text``, which may mix spans with other output."""
    decoder, spans, i = json.JSONDecoder(), [], 0
    while (start := text.find("{", i)) >= 0:
        try:
            obj, i = decoder.raw_decode(text, start)
        except json.JSONDecodeError:
            i = start + 1
            continue
        if isinstance(obj, dict) and "context" in obj:
            spans.append(obj)
    return spans
