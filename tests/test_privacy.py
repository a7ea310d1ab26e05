"""Runs last (by name): no log the test run wrote holds an applicant's name or certificate number.

The tests send both with cases (tests/conftest.py); the gateway may show the name only masked (张*丰) and
must never write either to a log: not the in-process gateways' records, not the gateway processes' log files,
not the devices' consoles and error rings, not the brokers' logs.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

from tests.conftest import APPLICANT_CERT, APPLICANT_NAME


def leaks(folder: Path) -> list[str]:
    """Every log file under `folder` holding the name or the certificate number."""
    found = []
    for path in sorted(folder.rglob("*.log")):
        text = path.read_text(encoding="utf-8", errors="replace")
        found += [f"{secret[:1]}… in {path}" for secret in (APPLICANT_NAME, APPLICANT_CERT) if secret in text]
    return found


def test_no_log_of_this_run_holds_an_applicants_name_or_certificate_number(tmp_path_factory, every_log):
    base = tmp_path_factory.getbasetemp()
    logs = list(base.rglob("*.log"))
    assert every_log in logs and sum(path.stat().st_size for path in logs) > 0, "the run wrote no logs to look at"
    assert leaks(base) == []


def test_the_check_finds_a_leak():
    with tempfile.TemporaryDirectory() as folder:
        (Path(folder) / "gateway.log").write_text(f"case for {APPLICANT_NAME}, 证件 {APPLICANT_CERT}\n")
        assert len(leaks(Path(folder))) == 2
