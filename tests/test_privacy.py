"""The privacy scan itself: tests/conftest.py runs it over every log of the run when the run ends (the
`every_log` fixture), whatever order the tests ran in. Here: it finds what it must find."""
from __future__ import annotations

import tempfile
from pathlib import Path

from tests.conftest import APPLICANT_CERT, APPLICANT_NAME
from tests.helpers import leaks


def test_the_check_finds_a_leak():
    with tempfile.TemporaryDirectory() as folder:
        (Path(folder) / "gateway.log").write_text(f"case for {APPLICANT_NAME}, 证件 {APPLICANT_CERT}\n")
        assert len(leaks(Path(folder), [APPLICANT_NAME, APPLICANT_CERT])) == 2


def test_the_scan_reads_this_runs_logs(tmp_path_factory, every_log):
    """The scan looks where the run writes: the in-process records are among the logs under the base folder."""
    assert every_log in list(tmp_path_factory.getbasetemp().rglob("*.log"))
