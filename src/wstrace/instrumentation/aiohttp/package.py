"""Versions of aiohttp this adapter supports (read by ``opentelemetry-instrument``)."""

from __future__ import annotations


_instruments = ("aiohttp >= 3.9, < 4",)
_supports_metrics = True
