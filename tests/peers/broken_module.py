"""A module that fails to import, for the test of a ``WSTRACE_*`` callable naming it."""

from __future__ import annotations


raise RuntimeError("this module refuses to be imported")
