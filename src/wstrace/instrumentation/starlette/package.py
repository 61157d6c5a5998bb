"""Versions of Starlette this adapter supports (read by ``opentelemetry-instrument``)."""

from __future__ import annotations


_instruments = ("starlette >= 0.37, < 2",)
_supports_metrics = True
