"""Errors raised by wstrace's explicit APIs.

Instrumented code paths never raise these into the host application; they are
for callers of the codec and the core who pass bad input on purpose or by
mistake. The tree::

    WstraceError
    ├── ConfigError            (also ValueError) a bad option value
    └── EnvelopeError          (also ValueError)
        ├── EnvelopeEncodeError  a carrier that cannot be encoded
        └── EnvelopeDecodeError  a frame that claims to be an envelope but is not
"""

from __future__ import annotations


__all__ = [
    "ConfigError",
    "EnvelopeDecodeError",
    "EnvelopeEncodeError",
    "EnvelopeError",
    "WstraceError",
]


class WstraceError(Exception):
    """Root of every error wstrace raises."""


class ConfigError(WstraceError, ValueError):
    """An option was given a value outside its documented range."""


class EnvelopeError(WstraceError, ValueError):
    """The message envelope could not be encoded or decoded."""


class EnvelopeEncodeError(EnvelopeError):
    """The carrier cannot be put in an envelope (too large, or not text)."""


class EnvelopeDecodeError(EnvelopeError):
    """A frame starts like an envelope but its header is malformed."""
