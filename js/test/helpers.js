// Shared by the node:test files: an OpenTelemetry SDK with an in-memory exporter, and a real wstrace Python server
// (tests/peers/js_server.py) or an un-instrumented one (tests/peers/bare.py) in a child process.

import { spawn } from "node:child_process";
import { existsSync } from "node:fs";
import { createInterface } from "node:readline";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

import { context, propagation, trace } from "@opentelemetry/api";
import { AsyncLocalStorageContextManager } from "@opentelemetry/context-async-hooks";
import { CompositePropagator, W3CBaggagePropagator, W3CTraceContextPropagator } from "@opentelemetry/core";
import { BasicTracerProvider, InMemorySpanExporter, SimpleSpanProcessor } from "@opentelemetry/sdk-trace-base";

export const REPO = resolve(dirname(fileURLToPath(import.meta.url)), "..", "..");

/** The Python that runs the servers: $WSTRACE_PYTHON, else the repository's .venv, else python3. */
export const PYTHON =
  process.env.WSTRACE_PYTHON || (existsSync(join(REPO, ".venv/bin/python")) ? join(REPO, ".venv/bin/python") : "python3");

/** The SDK, registered globally once per test file (each file runs in a process of its own). */
export function telemetry() {
  const exporter = new InMemorySpanExporter();
  const provider = new BasicTracerProvider({ spanProcessors: [new SimpleSpanProcessor(exporter)] });
  trace.setGlobalTracerProvider(provider);
  context.setGlobalContextManager(new AsyncLocalStorageContextManager().enable());
  propagation.setGlobalPropagator(
    new CompositePropagator({ propagators: [new W3CTraceContextPropagator(), new W3CBaggagePropagator()] }),
  );
  return { exporter, provider, tracer: trace.getTracer("test") };
}

/** A finished JS span as plain data, shaped like the Python server's span lines. */
export function record(span) {
  const sc = span.spanContext();
  const parent = span.parentSpanContext ?? (span.parentSpanId ? { spanId: span.parentSpanId } : undefined);
  return {
    name: span.name,
    kind: ["INTERNAL", "SERVER", "CLIENT", "PRODUCER", "CONSUMER"][span.kind],
    trace_id: sc.traceId,
    span_id: sc.spanId,
    parent_span_id: parent?.spanId ?? null,
    attributes: { ...span.attributes },
    links: span.links.map((l) => ({
      trace_id: l.context.traceId,
      span_id: l.context.spanId,
      attributes: { ...l.attributes },
    })),
    status: ["UNSET", "OK", "ERROR"][span.status.code],
    events: span.events.map((e) => e.name),
    start: span.startTime[0] * 1e9 + span.startTime[1],
    end: span.endTime[0] * 1e9 + span.endTime[1],
  };
}

/** Wait until `check()` returns something truthy; fail after `ms`. */
export async function until(check, ms = 10000, what = "condition") {
  const deadline = Date.now() + ms;
  for (;;) {
    const found = check();
    if (found) return found;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/**
 * Start a Python peer: `js_server.py` (instrumented by wstrace) with `args`, or `bare.py server`.
 * Resolves once it listens; `spans` and `messages` fill as it prints them.
 */
export async function startServer(args = [], { bare = false } = {}) {
  const script = join(REPO, "tests", "peers", bare ? "bare.py" : "js_server.py");
  // The server's options are its arguments: no WSTRACE_* or OTEL_* setting of the caller's leaks into it.
  const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !/^(WSTRACE_|OTEL_)/.test(k)));
  const child = spawn(PYTHON, [script, ...(bare ? ["server"] : args)], {
    cwd: REPO,
    env: { ...env, PYTHONPATH: [join(REPO, "src"), REPO, process.env.PYTHONPATH].filter(Boolean).join(":") },
    stdio: ["pipe", "pipe", "pipe"],
  });
  const server = { child, port: 0, http: 0, spans: [], messages: [], lines: [], stderr: "" };
  child.stderr.on("data", (d) => (server.stderr += d));
  const ready = new Promise((resolveReady, reject) => {
    child.on("exit", (code) => reject(new Error(`server exited with ${code}: ${server.stderr}`)));
    createInterface({ input: child.stdout }).on("line", (line) => {
      server.lines.push(line);
      const text = bare ? line.replace(/^PEER /, "") : line;
      let event;
      try {
        event = JSON.parse(text);
      } catch {
        return;
      }
      if (event.event === "listening") {
        server.port = event.port;
        server.http = event.http;
        resolveReady(server);
      } else if (event.event === "span") server.spans.push(event);
      else if (event.event === "message") server.messages.push(event);
    });
  });
  server.stop = async () => {
    if (child.exitCode !== null) return;
    const exited = new Promise((r) => child.once("exit", r));
    child.stdin.end();
    const timer = setTimeout(() => child.kill("SIGKILL"), bare ? 0 : 5000);
    await exited;
    clearTimeout(timer);
  };
  let timer;
  try {
    const late = new Promise((_, reject) => {
      timer = setTimeout(() => reject(new Error("server did not start: " + server.stderr)), 20000);
    });
    await Promise.race([ready, late]);
  } catch (error) {
    child.kill("SIGKILL");
    throw error;
  } finally {
    clearTimeout(timer);
  }
  return server;
}

/** Resolve when `socket` (a ws or WHATWG WebSocket) fires `event`. */
export function once(socket, event) {
  return new Promise((resolveEvent, reject) => {
    const onError = (e) => reject(e?.error ?? e);
    if (typeof socket.once === "function") {
      socket.once(event, (...args) => resolveEvent(args));
      if (event !== "error") socket.once("error", onError);
    } else {
      socket.addEventListener(event, (e) => resolveEvent([e]), { once: true });
      if (event !== "error" && event !== "close") socket.addEventListener("error", onError, { once: true });
    }
  });
}
