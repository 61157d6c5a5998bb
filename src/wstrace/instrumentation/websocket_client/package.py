"""Versions of websocket-client this adapter supports (read by ``opentelemetry-instrument``)."""

from __future__ import annotations


_instruments = ("websocket-client >= 1.6, < 2",)
_supports_metrics = True
