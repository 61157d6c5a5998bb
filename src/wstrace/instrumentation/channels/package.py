"""Versions of Django Channels this adapter supports (read by ``opentelemetry-instrument``)."""

from __future__ import annotations


_instruments = ("channels >= 4.1, < 5",)
_supports_metrics = True
