"""Versions of tornado this adapter supports (read by ``opentelemetry-instrument``)."""

from __future__ import annotations


_instruments = ("tornado >= 6.3, < 7",)
_supports_metrics = True
