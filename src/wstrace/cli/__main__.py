"""``python -m wstrace.cli``."""

from __future__ import annotations

from wstrace.cli import main


raise SystemExit(main())
