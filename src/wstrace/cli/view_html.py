"""``wstrace view --html``: one self-contained page with a waterfall per trace and a details panel per span.

A folded run (:mod:`wstrace.cli.fold`) is one summary row; clicking it shows the rows it stands for, which
travel in the page with it.

The page loads nothing: CSS and JavaScript are inline, and its Content-Security-Policy allows only those two
blocks (by hash), so even a span name that slipped past escaping could run no script. The spans travel as
JSON in a ``<script type="application/json">`` block and are put on the page with ``textContent`` only.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import re
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from wstrace.cli.fold import service


if TYPE_CHECKING:
    from wstrace.cli.export import SpanRecord
    from wstrace.cli.view import Row, Trace


__all__ = ["format_value", "render_html", "value_type"]

SIZE = "messaging.message.body.size"


_TYPE_NAMES: tuple[tuple[type[Any], str], ...] = (
    (bool, "bool"),  # before int, which bool is
    (int, "int"),
    (float, "double"),
    (str, "string"),
    (bytes, "bytes"),
    (Mapping, "map"),
)


def value_type(value: Any) -> str:
    """The OTLP type name of an attribute value."""
    if value is None:
        return "empty"
    for kind, name in _TYPE_NAMES:
        if isinstance(value, kind):
            return name
    return "array"


def format_value(value: Any) -> str:
    """An attribute value as text: strings as they are, arrays and maps with quoted strings inside."""
    if isinstance(value, str):
        return value
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, bytes):
        return "0x" + value.hex()
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{json.dumps(str(k))}: {_inner(v)}" for k, v in value.items()) + "}"
    if isinstance(value, (tuple, list)):
        return "[" + ", ".join(_inner(item) for item in value) + "]"
    return str(value)


def _inner(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False) if isinstance(value, str) else format_value(value)


def _attributes(attributes: Mapping[str, Any]) -> list[list[str]]:
    return [[str(key), value_type(value), format_value(value)] for key, value in attributes.items()]


def _ms(ns: int) -> float:
    return round(ns / 1e6, 6)


def _page_data(traces: Sequence[Trace], source: str) -> dict[str, Any]:
    shown = {span.span_id for trace in traces for span in trace.every_span()}
    # Every service of the page, in order of first appearance: a service's place is its colour.
    services = list(dict.fromkeys(service(span) for trace in traces for span in trace.every_span()))
    resources: dict[str, int] = {}
    resource_list: list[list[list[str]]] = []
    out: list[dict[str, Any]] = []

    def resource_index(span: SpanRecord) -> int:
        resource = _attributes(span.resource)
        key = json.dumps(resource)
        if key not in resources:  # every span of a process carries the same resource: send it once
            resources[key] = len(resource_list)
            resource_list.append(resource)
        return resources[key]

    def entries(rows: Sequence[Row], trace: Trace) -> list[dict[str, Any]]:
        total = trace.duration_ns
        found = []
        for row in rows:
            span = row.span
            offset = span.start_ns - trace.start_ns
            entry: dict[str, Any] = {
                "name": span.name,
                "kind": span.kind.lower(),
                "service": service(span),
                "depth": row.depth,
                "offsetMs": _ms(offset),
                "durationMs": _ms(span.duration_ns),
                "left": 100 * offset / total if total else 0,
                "width": 100 * span.duration_ns / total if total else 100,
            }
            if row.folded:  # a summary row: what it stands for goes with it, shown on click
                size = span.attributes.get(SIZE)
                entry.update(
                    {"hiddenSpans": row.hidden_spans, "size": size, "folded": entries(row.folded, trace)},
                )
                found.append(entry)
                continue
            entry.update(
                {
                    "spanId": span.span_id,
                    "parentSpanId": span.parent_span_id or "",
                    "orphan": row.orphan,
                    "status": span.status,
                    "statusMessage": span.status_message,
                    "scope": " ".join(filter(None, (span.scope, span.scope_version))),
                    "attributes": _attributes(span.attributes),
                    "events": [
                        {
                            "name": event.name,
                            "offsetMs": _ms(event.time_ns - trace.start_ns),
                            "attributes": _attributes(event.attributes),
                        }
                        for event in span.events
                    ],
                    "links": [
                        {
                            "traceId": link.trace_id,
                            "spanId": link.span_id,
                            "inPage": link.span_id in shown,
                            "attributes": _attributes(link.attributes),
                        }
                        for link in span.links
                    ],
                    "resource": resource_index(span),
                }
            )
            found.append(entry)
        return found

    for trace in traces:
        started = datetime.fromtimestamp(trace.start_ns / 1e9, tz=timezone.utc)
        out.append(
            {
                "traceId": trace.trace_id,
                "root": trace.root_name,
                "started": started.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + " UTC",
                "durationMs": _ms(trace.duration_ns),
                "sessions": list(trace.sessions),
                "services": list(dict.fromkeys(filter(None, map(service, trace.every_span())))),
                "spanCount": trace.spans,
                "spans": entries(trace.rows, trace),
            }
        )
    return {"source": source, "traces": out, "resources": resource_list, "services": services}


def _count(n: int, noun: str) -> str:
    return f"{n:,} {noun}{'s' * (n != 1)}"


def _script_json(data: object) -> str:
    # "<" as \u003c: no "</script>" or "<!--" can end or confuse the data block, and JSON.parse reads it back.
    return json.dumps(data, ensure_ascii=False, allow_nan=False).replace("<", "\\u003c")


def _hash(source: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(source.encode("utf-8")).digest()).decode("ascii") + "'"


def render_html(traces: Sequence[Trace], *, source: str = "") -> str:
    """The whole page for ``traces``; ``source`` (the file name) goes in its title."""
    spans = sum(t.spans for t in traces)  # every span, also those folded behind a summary row
    summary = f"{source + ' · ' if source else ''}{_count(len(traces), 'trace')} · {_count(spans, 'span')}"
    policy = (
        f"default-src 'none'; style-src {_hash(_STYLE)}; script-src {_hash(_SCRIPT)}; "
        "img-src 'none'; base-uri 'none'; form-action 'none'"
    )
    values = {
        "policy": html.escape(policy),
        "title": html.escape(f"wstrace · {source}" if source else "wstrace"),
        "summary": html.escape(summary),
        "style": _STYLE,
        "script": _SCRIPT,
        "data": _script_json(_page_data(traces, source)),
    }
    # One pass over the template, so no value (a file name holding "{data}", say) is substituted into again.
    return _FIELD.sub(lambda match: values[match.group(1)], _PAGE)


_FIELD = re.compile(r"\{(policy|title|summary|style|script|data)\}")
_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="Content-Security-Policy" content="{policy}">
<title>{title}</title>
<style>{style}</style>
</head>
<body>
<header><h1>wstrace</h1><p class="summary">{summary}</p></header>
<main id="traces"></main>
<noscript><p>This page draws the traces with JavaScript; please enable it.</p></noscript>
<script type="application/json" id="wstrace-data">{data}</script>
<script>{script}</script>
</body>
</html>
"""

_STYLE = """
:root {
  --bg: #ffffff; --fg: #1f2328; --muted: #656d76; --line: #d8dee4; --panel: #f6f8fa;
  --hover: #f3f6f9; --open: #ddf4ff; --bar: #2f81f7; --error: #cf222e; --orphan: #9a6700;
  --s0: #2f81f7; --s1: #8250df; --s2: #1a7f37; --s3: #bc4c00; --s4: #bf3989; --s5: #1b7c83; --s6: #953800;
  --s7: #6e7781;
  color-scheme: light dark;
  font: 14px/1.4 system-ui, -apple-system, "Segoe UI", sans-serif;
}
@media (prefers-color-scheme: dark) {
  :root {
    --bg: #0d1117; --fg: #e6edf3; --muted: #8d96a0; --line: #30363d; --panel: #161b22;
    --hover: #1c2128; --open: #12263f; --bar: #4493f8; --error: #f85149; --orphan: #d29922;
    --s0: #4493f8; --s1: #a371f7; --s2: #3fb950; --s3: #f0883e; --s4: #db61a2; --s5: #39c5cf; --s6: #d29922;
    --s7: #8b949e;
  }
}
body { margin: 0; padding: 16px 24px 40px; background: var(--bg); color: var(--fg); }
h1 { font-size: 18px; margin: 0; }
.summary { color: var(--muted); margin: 2px 0 16px; }
.mono, .trace-id, .time, td.value, .link-id { font-family: ui-monospace, SFMono-Regular, Menlo, monospace; }
[hidden] { display: none !important; }
.trace { border: 1px solid var(--line); border-radius: 6px; margin-bottom: 20px; overflow-x: auto;
  display: grid; grid-template-columns: minmax(220px, 32%) max-content minmax(120px, 1fr) max-content; }
.trace > *, .folded > * { grid-column: 1 / -1; }
.grid, .folded { display: grid; grid-template-columns: minmax(220px, 32%) max-content minmax(120px, 1fr) 16em;
  grid-template-columns: subgrid; align-items: center; }
.trace-head { padding: 8px 12px; background: var(--panel); border-bottom: 1px solid var(--line); }
.trace-head h2 { font-size: 14px; margin: 0; font-weight: 600; }
.trace-head .root { margin-left: 10px; }
.trace-head .facts { color: var(--muted); font-size: 12px; }
.trace-head .services { font-size: 12px; margin-top: 2px; }
.trace-head .services .service { margin-right: 14px; }
.service { white-space: nowrap; padding: 0 8px; font-size: 12px; }
.service::before { content: ""; display: inline-block; width: 9px; height: 9px; margin-right: 5px;
  border-radius: 2px; background: var(--svc, var(--bar)); }
.axis .service::before { display: none; }
.s0 { --svc: var(--s0); } .s1 { --svc: var(--s1); } .s2 { --svc: var(--s2); } .s3 { --svc: var(--s3); }
.s4 { --svc: var(--s4); } .s5 { --svc: var(--s5); } .s6 { --svc: var(--s6); } .s7 { --svc: var(--s7); }
.axis { color: var(--muted); font-size: 11px; border-bottom: 1px solid var(--line); height: 20px; }
.axis .track { height: 20px; }
.tick { position: absolute; top: 3px; white-space: nowrap; transform: translateX(-50%); }
.tick.start { transform: none; }
.tick.end { transform: translateX(-100%); }
.axis .track { container-type: inline-size; }
@container (max-width: 400px) { .tick.quarter { display: none; } }
@container (max-width: 200px) { .tick.half { display: none; } }
.row { cursor: pointer; border-bottom: 1px solid var(--line); }
.row:hover { background: var(--hover); }
.row:focus { outline: 2px solid var(--bar); outline-offset: -2px; }
.row[aria-expanded="true"] { background: var(--open); }
.label { white-space: nowrap; overflow: hidden; text-overflow: ellipsis; padding: 3px 8px; }
.kind { color: var(--muted); font-size: 11px; margin-left: 6px; }
.orphan-mark { color: var(--orphan); margin-right: 4px; }
.track { position: relative; height: 24px; margin: 0 8px; }
.bar { position: absolute; top: 6px; height: 12px; min-width: 2px; background: var(--svc, var(--bar));
  border-radius: 2px; }
.row.error .bar { background: var(--error); }
.row.error .name { color: var(--error); font-weight: 600; }
.time { font-size: 12px; color: var(--muted); text-align: right; padding: 0 12px 0 8px; white-space: nowrap; }
.details { padding: 8px 16px 12px; background: var(--panel); border-bottom: 1px solid var(--line); }
.details h3 { font-size: 11px; margin: 10px 0 4px; text-transform: uppercase; letter-spacing: .05em;
  color: var(--muted); }
.details dl { display: grid; grid-template-columns: max-content 1fr; gap: 2px 12px; margin: 0; font-size: 12px; }
.details dt { color: var(--muted); }
.details dd { margin: 0; word-break: break-all; }
.details table { border-collapse: collapse; margin: 2px 0 8px; font-size: 12px; }
.details th, .details td { border: 1px solid var(--line); padding: 2px 8px; text-align: left; vertical-align: top; }
.details th { color: var(--muted); font-weight: 600; }
td.type { color: var(--muted); }
td.value { white-space: pre-wrap; word-break: break-all; }
.none { color: var(--muted); margin: 0; font-size: 12px; }
.event, .link { font-size: 12px; margin-top: 4px; }
.event-time { color: var(--muted); }
.link button { margin-left: 8px; font-size: 11px; }
.row.fold .name { color: var(--muted); font-style: italic; }
.row.fold .bar { opacity: .5;
  background: repeating-linear-gradient(90deg, var(--svc, var(--bar)) 0 3px, transparent 3px 5px); }
.fold-mark { display: inline-block; width: 1em; color: var(--muted); }
.row.fold[aria-expanded="true"] .fold-mark { transform: rotate(90deg); }
.fold-size { color: var(--muted); font-size: 11px; margin-left: 6px; }
.flash { animation: flash 1.2s ease-out; }
@keyframes flash { from { background: var(--open); } to { background: transparent; } }
"""

_SCRIPT = """
"use strict";
(() => {
  const data = JSON.parse(document.getElementById("wstrace-data").textContent);
  const main = document.getElementById("traces");

  const el = (tag, className, text) => {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  };
  const ms = (value) =>
    value.toLocaleString("en-US", { minimumFractionDigits: 3, maximumFractionDigits: 3 }) + " ms";
  // A service's colour: its place among the page's services.
  const colour = (service) => service ? "s" + (data.services.indexOf(service) % 8) : "";
  const serviceTag = (service) => {
    const tag = el("span", "service " + colour(service), service || "-");
    if (!service) tag.title = "no service.name in the span's resource";
    return tag;
  };

  const table = (rows) => {
    const node = el("table", "attributes");
    const head = node.createTHead().insertRow();
    for (const title of ["key", "type", "value"]) head.appendChild(el("th", "", title));
    const body = node.createTBody();
    for (const [key, type, value] of rows) {
      const tr = body.insertRow();
      tr.appendChild(el("td", "key", key));
      tr.appendChild(el("td", "type", type));
      tr.appendChild(el("td", "value", value));
    }
    return node;
  };
  const heading = (panel, title, count) => panel.appendChild(el("h3", "", title + " (" + count + ")"));
  const attributes = (panel, rows) => panel.appendChild(rows.length ? table(rows) : el("p", "none", "none"));

  const toggle = (row, open) => {
    const panel = row.nextElementSibling;
    const show = open === undefined ? panel.hidden : open;
    panel.hidden = !show;
    row.setAttribute("aria-expanded", String(show));
  };

  const goTo = (spanId) => {
    const row = main.querySelector('.row[data-span-id="' + CSS.escape(spanId) + '"]');
    if (!row) return;
    for (let group = row.parentElement; group && group !== main; group = group.parentElement) {
      if (group.classList.contains("folded")) toggle(group.previousElementSibling, true);  // its summary row
    }
    toggle(row, true);
    row.scrollIntoView({ block: "center" });
    row.focus();
    row.classList.remove("flash");
    void row.offsetWidth;  // restart the animation
    row.classList.add("flash");
  };

  const details = (span) => {
    const panel = el("div", "details");
    panel.hidden = true;
    const facts = el("dl");
    const status = span.status + (span.statusMessage ? ": " + span.statusMessage : "");
    const rows = [
      ["span id", span.spanId],
      ["parent", span.parentSpanId ? span.parentSpanId + (span.orphan ? " (not in the file)" : "") : "none"],
      ["kind", span.kind],
      ["service", span.service || "none"],
      ["status", status],
      ["scope", span.scope || "none"],
      ["start", "+" + ms(span.offsetMs)],
      ["duration", ms(span.durationMs)],
    ];
    for (const [key, value] of rows) {
      facts.appendChild(el("dt", "", key));
      facts.appendChild(el("dd", "", value));
    }
    panel.appendChild(facts);
    heading(panel, "Attributes", span.attributes.length);
    attributes(panel, span.attributes);
    heading(panel, "Events", span.events.length);
    for (const event of span.events) {
      const line = el("div", "event");
      line.appendChild(el("span", "event-name", event.name));
      line.appendChild(el("span", "event-time", "  +" + ms(event.offsetMs)));
      panel.appendChild(line);
      if (event.attributes.length) panel.appendChild(table(event.attributes));
    }
    heading(panel, "Links", span.links.length);
    for (const link of span.links) {
      const line = el("div", "link");
      line.appendChild(el("span", "link-id", link.traceId + " / " + link.spanId));
      if (link.inPage) {
        const button = el("button", "", "show span");
        button.type = "button";
        button.addEventListener("click", (event) => {
          event.stopPropagation();
          goTo(link.spanId);
        });
        line.appendChild(button);
      }
      panel.appendChild(line);
      if (link.attributes.length) panel.appendChild(table(link.attributes));
    }
    const resource = data.resources[span.resource] || [];
    heading(panel, "Resource", resource.length);
    attributes(panel, resource);
    panel.addEventListener("click", (event) => event.stopPropagation());
    return panel;
  };

  const axis = (total) => {
    const line = el("div", "grid axis");
    line.appendChild(el("div", "label", "span"));
    line.appendChild(el("div", "service", "service"));
    const track = el("div", "track");
    // Round figures, as precise as the trace is short; the quarters make way on a narrow track.
    const digits = total >= 100 ? 0 : total >= 10 ? 1 : total >= 1 ? 2 : 3;
    const label = (value) =>
      value.toLocaleString("en-US", { minimumFractionDigits: digits, maximumFractionDigits: digits }) + " ms";
    const places = { 0: "start", 0.25: "quarter", 0.5: "half", 0.75: "quarter", 1: "end" };
    for (const fraction of [0, 0.25, 0.5, 0.75, 1]) {
      const tick = el("span", "tick " + places[fraction], label(total * fraction));
      tick.style.left = fraction * 100 + "%";
      track.appendChild(tick);
    }
    line.appendChild(track);
    line.appendChild(el("div", "time", "start · duration"));
    return line;
  };

  const plural = (count, noun) => count.toLocaleString("en-US") + " " + noun + (count === 1 ? "" : "s");

  // A span's row opens its details panel (the next element); a summary row of a folded run shows the rows
  // it stands for (the next element too: their group).
  const spanRow = (span) => {
    const fold = span.folded !== undefined;
    const classes = ["grid row", fold ? "fold" : "", span.status === "ERROR" ? "error" : "", colour(span.service)];
    const row = el("div", classes.filter(Boolean).join(" "));
    row.tabIndex = 0;
    row.setAttribute("role", "button");
    row.setAttribute("aria-expanded", "false");
    if (!fold) row.dataset.spanId = span.spanId;
    const label = el("div", "label");
    label.style.paddingLeft = 8 + 16 * span.depth + "px";
    if (fold) label.appendChild(el("span", "fold-mark", "\\u25b8"));
    if (span.orphan) {
      const mark = el("span", "orphan-mark", "\\u22ef");
      mark.title = "parent span not in the file";
      label.appendChild(mark);
    }
    label.appendChild(el("span", "name", span.name));
    label.appendChild(el("span", "kind", span.kind));
    const size = fold && span.size ? "size=" + span.size : "";
    if (size) label.appendChild(el("span", "fold-size", size));
    const hint = fold ? "click to show the " + plural(span.hiddenSpans, "span") : "";
    label.title = [span.name, size, hint].filter(Boolean).join("  ");
    row.appendChild(label);
    row.appendChild(el("div", "service", span.service || "-"));  // its colour is the row's
    const track = el("div", "track");
    const bar = el("div", "bar");
    bar.style.left = Math.min(span.left, 100) + "%";
    bar.style.width = Math.min(span.width, 100 - Math.min(span.left, 100)) + "%";
    track.appendChild(bar);
    row.appendChild(track);
    row.appendChild(el("div", "time", "+" + ms(span.offsetMs) + " · " + ms(span.durationMs)));
    row.addEventListener("click", () => toggle(row));
    row.addEventListener("keydown", (event) => {
      if (event.key === "Enter" || event.key === " ") {
        event.preventDefault();
        toggle(row);
      }
    });
    return row;
  };

  const addRows = (parent, spans) => {
    for (const span of spans) {
      parent.appendChild(spanRow(span));
      if (span.folded === undefined) {
        parent.appendChild(details(span));
      } else {
        const group = el("div", "folded");
        group.hidden = true;
        addRows(group, span.folded);
        parent.appendChild(group);
      }
    }
  };

  for (const trace of data.traces) {
    const section = el("section", "trace");
    section.dataset.traceId = trace.traceId;
    const head = el("div", "trace-head");
    const title = el("h2");
    title.appendChild(el("span", "trace-id", trace.traceId));
    title.appendChild(el("span", "root", trace.root));
    head.appendChild(title);
    const facts = [trace.started, ms(trace.durationMs), plural(trace.spanCount, "span")];
    for (const session of trace.sessions) facts.push("session " + session);
    head.appendChild(el("div", "facts", facts.join("  ·  ")));
    if (trace.services.length) {
      const legend = el("div", "services");
      for (const service of trace.services) legend.appendChild(serviceTag(service));
      head.appendChild(legend);
    }
    section.appendChild(head);
    section.appendChild(axis(trace.durationMs));
    addRows(section, trace.spans);
    main.appendChild(section);
  }
})();
"""
