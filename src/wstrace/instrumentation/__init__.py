"""Adapters that instrument WebSocket libraries; one subpackage each, all the same shape.

Importing this package imports no WebSocket library.
"""

from __future__ import annotations


__all__: list[str] = []
