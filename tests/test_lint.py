"""The code passes ruff (pyflakes, pycodestyle, isort, bugbear) as configured in pyproject.toml."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO


def test_ruff_finds_nothing():
    done = subprocess.run([str(Path(sys.executable).parent / "ruff"), "check", "--no-cache", str(REPO)],
                          capture_output=True, text=True, timeout=120, cwd=REPO)
    assert done.returncode == 0, done.stdout + done.stderr
