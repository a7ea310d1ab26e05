"""The console commands, run as a user runs them."""
from __future__ import annotations

import functools
import json
import sys
from pathlib import Path

from click.testing import CliRunner

from flasher.cli import main as hcp_flash
from gateway.cli import main as hcp_gateway

BIN = Path(sys.executable).parent


def test_gateway_decode_prints_the_decoded_message():
    result = CliRunner().invoke(hcp_gateway, ["decode", "hcp/v1/H1/W01/up/status",
                                              '{"v":1,"k":"status","dev":"W01","state":"online","x":1}'])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output) == {"hall": "H1", "dev": "W01",
                                         "message": {"v": 1, "k": "status", "dev": "W01", "state": "online"}}


def test_gateway_decode_names_the_error_and_exits_2():
    result = CliRunner().invoke(hcp_gateway, ["decode", "hcp/v1/H1/W01/up/status"],
                                input='{"v":1,"k":"status","dev":"W02","state":"online"}')
    assert result.exit_code == 2
    assert "rejected: topic_mismatch (dev)" in result.output


def test_flash_build_reports_a_compile_error_without_traceback(tmp_path, monkeypatch):
    from flasher import build
    broken = tmp_path / "firmware"
    broken.mkdir()
    (broken / "main.py").write_text("while True print(1)\n")
    monkeypatch.setattr(build, "build", functools.partial(build.build, firmware=broken))
    result = CliRunner().invoke(hcp_flash, ["build", "--out", str(tmp_path / "out")])
    assert result.exit_code == 1
    assert "main.py: MicroPython cannot compile it" in result.output
    assert "Traceback" not in result.output


