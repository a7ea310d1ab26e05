"""The firmware (and the codec it imports) type-checks against the MicroPython stubs, not CPython's."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO

CHECKER = str(Path(sys.executable).parent / "basedpyright")
CONFIG = REPO / "firmware" / "pyrightconfig.json"


def typecheck(project: Path) -> dict:
    done = subprocess.run([CHECKER, "-p", str(project), "--outputjson"], capture_output=True, text=True,
                          timeout=300, cwd=REPO)
    return json.loads(done.stdout)


def test_firmware_typechecks_against_micropython_stubs():
    report = typecheck(CONFIG)
    errors = [d for d in report["generalDiagnostics"] if d["severity"] == "error"]
    assert report["summary"]["filesAnalyzed"] >= 1
    assert errors == []


def test_checker_uses_micropython_stubs(tmp_path):
    # CPython's json.loads takes parse_constant; MicroPython's does not. Without the stubs in effect this
    # file would pass, so an error here proves the firmware is checked against MicroPython's library.
    project = tmp_path / "firmware"
    project.mkdir()
    (project / "probe.py").write_text("import json\njson.loads('1', parse_constant=print)\n")
    config = json.loads(CONFIG.read_text())
    config.update(include=["."], typeshedPath=str(REPO / "build" / "typings"),
                  stubPath=str(REPO / "build" / "typings"), extraPaths=[])
    (project / "pyrightconfig.json").write_text(json.dumps(config))
    report = typecheck(project / "pyrightconfig.json")
    messages = [d["message"] for d in report["generalDiagnostics"]]
    assert any("parse_constant" in m for m in messages), messages
