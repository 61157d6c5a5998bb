"""``wstrace demo``: an AI voice assistant, device and server over WebSockets, traced end to end.

The application (:mod:`.device`, :mod:`.server`, :mod:`.engines`) reads like any websockets application: its
WebSocket spans come from ``WebsocketsInstrumentor``, and its own tracing is what a user writes (a span per
turn, ``wstrace.stream`` per AI stage, the traced queue and thread pool). With ``--stack socketio`` the device
speaks Socket.IO and the server is :mod:`.gateway` and :mod:`.assistant`, two processes behind Redis.
:mod:`.run` orchestrates the processes and reads the trace back; :mod:`.telemetry` sets up the SDK. See
``docs/demo.md``.

Importing this package imports nothing else: the server process is started as ``-m wstrace.demo.server_process``.
"""

from __future__ import annotations
