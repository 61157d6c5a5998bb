"""Versions of python-socketio this adapter supports (read by ``opentelemetry-instrument``)."""

from __future__ import annotations


_instruments = ("python-socketio >= 5.11, < 6",)
_supports_metrics = True
