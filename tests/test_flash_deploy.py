"""hcp-flash deploy against a real MicroPython raw REPL: the unix port on a pseudo-terminal bridged to TCP
(pyserial's socket:// URL), its working directory playing the board's flash."""
from __future__ import annotations

import hashlib
import json
import shutil
import socket
import threading

import pytest
from click.testing import CliRunner

from flasher import deploy
from flasher.cli import main as hcp_flash
from flasher.repl import RawRepl, ReplError
from simulator.serialboard import SerialBoard
from tests.helpers import HALL, wait_until


@pytest.fixture
def board(tmp_path):
    running = SerialBoard(tmp_path / "flash").start()
    yield running
    running.stop()


def test_deploy_verifies_then_sends_only_what_changed(board, firmware_tree, tmp_path):
    tree = tmp_path / "tree"
    shutil.copytree(firmware_tree, tree)
    (board.flash / "site.json").write_text('{"device": "W01"}')  # the device's own data
    (board.flash / "old_module.mpy").write_bytes(b"gone in this release")
    repl = RawRepl(board.url)
    first = deploy.deploy(repl, tree)
    assert sorted(first.sent) == sorted(deploy.local_files(tree)) and first.removed == ["old_module.mpy"]
    for name, path in deploy.local_files(tree).items():
        assert hashlib.sha256((board.flash / name).read_bytes()).digest() == hashlib.sha256(path.read_bytes()).digest()
    assert (board.flash / "site.json").read_text() == '{"device": "W01"}'

    (tree / "screens.mpy").write_bytes((tree / "screens.mpy").read_bytes() + b"\0")  # a new build of one file
    second = deploy.deploy(repl, tree)
    assert second.sent == ["screens.mpy"] and second.removed == []
    assert len(second.unchanged) == len(first.sent) - 1
    repl.close()


def test_an_interrupted_deploy_is_finished_by_a_rerun(board, firmware_tree):
    repl = RawRepl(board.url)

    def pull_the_cable(name, done, total):
        if name == "font.bin" and done > 40000:
            raise KeyboardInterrupt  # midway through the largest file

    with pytest.raises(KeyboardInterrupt):
        deploy.deploy(repl, firmware_tree, pull_the_cable)
    assert (board.flash / "font.bin.part").exists() and not (board.flash / "font.bin").exists()
    repl.close()
    again = RawRepl(board.url)
    result = deploy.deploy(again, firmware_tree)
    assert "font.bin.part" in result.removed and "font.bin" in result.sent
    assert not (board.flash / "font.bin.part").exists()
    assert deploy.remote_files(again) == {n: hashlib.sha256(p.read_bytes()).hexdigest()
                                         for n, p in deploy.local_files(firmware_tree).items()}
    again.close()


def test_deployed_firmware_boots_and_comes_online(board, firmware_tree, broker, gateway_factory):
    gateway = gateway_factory()
    (board.flash / "site.json").write_text(json.dumps({"device": "W07", "hall": HALL, "broker": "127.0.0.1",
                                                       "port": broker.port}))
    result = CliRunner().invoke(hcp_flash, ["deploy", "--port", board.url, "--tree", str(firmware_tree)])
    assert result.exit_code == 0, result.output
    assert "rebooted" in result.output
    wait_until(lambda: gateway.registry.online("W07"),
               timeout=30, what="the freshly deployed board online at the gateway")


def test_clear_errors_for_a_missing_port_and_a_silent_one(tmp_path, firmware_tree):
    result = CliRunner().invoke(hcp_flash, ["deploy", "--port", str(tmp_path / "ttyNONE"), "--tree",
                                            str(firmware_tree)])
    assert result.exit_code == 1 and "cannot open" in result.output and "Traceback" not in result.output
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(1)
    accepted = []
    threading.Thread(target=lambda: accepted.append(silent.accept()), daemon=True).start()  # says nothing
    with pytest.raises(ReplError, match="no MicroPython raw REPL answered"):
        RawRepl(f"socket://127.0.0.1:{silent.getsockname()[1]}", timeout=1.5).enter()
    silent.close()


def test_a_roster_batch_provisions_boards_and_reports_the_broken_one(tmp_path, firmware_tree, broker,
                                                                       gateway_factory):
    from gateway.access import key_entry

    gateway = gateway_factory(**{"api.keys": [key_entry("technician-key", ["technician"], "tech")]})
    boards = [SerialBoard(tmp_path / f"board{i}").start() for i in range(4)]
    dead = socket.socket()  # a fifth board that never answers
    dead.bind(("127.0.0.1", 0))
    dead.listen(1)
    kept = []
    threading.Thread(target=lambda: kept.append(dead.accept()), daemon=True).start()
    ports = [b.url for b in boards[:2]] + [f"socket://127.0.0.1:{dead.getsockname()[1]}"] + [b.url for b in boards[2:]]
    roster = tmp_path / "roster.csv"
    def write_roster():
        lines = ["device,hall,window,dept_code,staff_no,broker,broker_port,wifi_password,board,serial_port"]
        for i, port in enumerate(ports):
            lines.append(f"W1{i},{HALL},A1{i},11361100MB1234567X,N10{i},127.0.0.1,{broker.port},s3cr3t-wifi,sim,{port}")
        roster.write_text("\n".join(lines) + "\n")

    write_roster()
    command = ["batch", "--roster", str(roster), "--yes", "--tree", str(firmware_tree), "--wait", "30",
               "--gateway", f"http://127.0.0.1:{gateway.api.port}", "--api-key", "technician-key"]
    try:
        result = CliRunner().invoke(hcp_flash, command)
        assert result.exit_code == 1, result.output
        table = {line.split()[0]: line for line in result.output.splitlines()[1:6]}
        assert all("OK" in table[f"W1{i}"] and "online" in table[f"W1{i}"] for i in (0, 1, 3, 4)), result.output
        assert "FAILED" in table["W12"] and "no MicroPython raw REPL answered" in table["W12"]
        assert "4 provisioned, 1 failed" in result.output
        assert "s3cr3t" not in result.output  # secrets never echoed
        states = dict(gateway.reader.execute("SELECT dev, window_no FROM devices WHERE state = 'online'").fetchall())
        assert states == {"W10": "A10", "W11": "A11", "W13": "A13", "W14": "A14"}
        site = json.loads((tmp_path / "board0" / "site.json").read_text())
        assert (site["device"], site["port"], site["user"]) == ("W10", broker.port, "W10")
        # Its broker account and command key came from the gateway; the board went online with them, the
        # gateway signs what it sends it with that key, and neither secret was echoed.
        (key,), = gateway.reader.execute("SELECT command_key FROM devices WHERE dev = 'W10'").fetchall()
        assert site["command_key"] == key and site["password"] not in result.output and key not in result.output

        boards.append(SerialBoard(tmp_path / "board5").start())  # the broken board is swapped
        ports[2] = boards[-1].url
        write_roster()
        again = CliRunner().invoke(hcp_flash, command)
        assert again.exit_code == 0 and "5 provisioned, 0 failed" in again.output, again.output
        assert "0 files sent, online" in again.output  # the boards done before get nothing again
    finally:
        for b in boards:
            b.stop()
        dead.close()


def test_ports_name_board_kinds_and_tell_a_repl_from_silence(board):
    from flasher import ports

    assert ports.kind_of(0x303A, 0x1001) == "ESP32-S3 (native USB)"
    assert ports.kind_of(0x1A86, 0x7523) == "CH340 USB-UART bridge"
    assert ports.kind_of(None, None) == "not USB"
    assert ports.answers_repl(board.url)
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(1)
    kept = []
    threading.Thread(target=lambda: kept.append(silent.accept()), daemon=True).start()
    assert not ports.answers_repl(f"socket://127.0.0.1:{silent.getsockname()[1]}", timeout=1.0)
    silent.close()
    assert CliRunner().invoke(hcp_flash, ["ports"]).exit_code == 0


def test_base_image_reports_a_missing_port_clearly(tmp_path):
    image = tmp_path / "ESP32_GENERIC_S3.bin"
    image.write_bytes(b"\xe9" + b"\0" * 1023)
    result = CliRunner().invoke(hcp_flash, ["base-image", "--port", str(tmp_path / "ttyNONE"), "--image", str(image)])
    assert result.exit_code == 1 and "esptool" in result.output and "Traceback" not in result.output


def test_the_wrong_board_kind_is_refused(board, tmp_path, firmware_tree):
    from flasher import provision

    roster = tmp_path / "roster.csv"
    roster.write_text(f"device,hall,window,broker,board\nW20,{HALL},A20,127.0.0.1,esp32s3_tft\n")
    [row] = provision.read_roster(roster)
    with pytest.raises(provision.ProvisionError, match="wrong board kind: the roster says esp32s3_tft"):
        provision.provision(board.url, row, firmware_tree, None)
    assert not (board.flash / "main.py").exists()  # nothing was written to it
