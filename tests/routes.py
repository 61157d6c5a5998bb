"""The ``routes`` option the suite runs with: every request path is its own route.

The test applications serve a handful of fixed paths, and most tests name spans by them
(``receive /chat``). Without a router or the ``routes`` option wstrace names no route, as
OpenTelemetry's HTTP conventions do; ``tests/test_routes.py`` checks that default.
"""

from __future__ import annotations


ROUTES_ENV = "tests.routes:path_as_route"


def path_as_route(path: str) -> str:
    return path
