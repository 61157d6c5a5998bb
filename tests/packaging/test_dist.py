"""Ready to publish: the sdist and the wheel build and pass ``twine check``; the docs build as a site, strictly."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def test_sdist_and_wheel_build_and_pass_twine_check(tmp_path: Path) -> None:
    built = subprocess.run(
        [sys.executable, "-m", "build", "--outdir", str(tmp_path), str(ROOT)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert built.returncode == 0, built.stderr[-3000:]
    dists = sorted(p.name for p in tmp_path.iterdir())
    assert len(dists) == 2 and dists[0].endswith("-py3-none-any.whl") and dists[1].endswith(".tar.gz"), dists
    checked = subprocess.run(
        [str(BIN / "twine"), "check", "--strict", *(str(tmp_path / d) for d in dists)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert checked.stdout.count("PASSED") == 2


def test_the_docs_build_as_a_site_with_no_broken_link(tmp_path: Path) -> None:
    """``mkdocs build --strict``: a broken link, a missing anchor or a page left out of the nav fails."""
    built = subprocess.run(
        [str(BIN / "mkdocs"), "build", "--strict", "--site-dir", str(tmp_path / "site")],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        cwd=ROOT,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert built.returncode == 0, built.stderr[-3000:]
    assert (tmp_path / "site" / "protocol" / "index.html").is_file()
