"""The headless fleet: scenario files, the CI hall day end to end, and the check itself."""
from __future__ import annotations

import re
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from simulator import scenario as scenarios
from simulator.fleet import Fleet
from simulator.hall import Hall, HallError
from simulator.leash import processes_under

BIN = Path(sys.executable).parent


def test_the_ci_hall_day_keeps_every_rating_through_broker_restart_gateway_kill_and_province_outage(
        tmp_path, firmware_tree):
    day = scenarios.load(Path("ci"))
    kinds = {f.kind for f in day.faults}
    assert {"broker_restart", "gateway_kill", "province_outage", "power_cut", "network_cut"} <= kinds
    assert day.firmware_devices >= 3 and day.virtual_devices >= 200
    fleet = Fleet(day, tmp_path, firmware_tree, say=print)
    result = fleet.run()

    assert result.ok, result.problems[:20]
    assert (result.duplicates, result.lost, result.wrong, result.dead_letters) == (0, 0, 0, [])
    # Every channel was exercised, and every case is at the province exactly once.
    assert result.pressed > 300 and result.phone > 5 and result.defaults > 5
    assert result.forwarded == result.cases == result.stored
    # Each real-firmware device confirmed at least the presses its citizens were given, faults or not.
    assert sorted(fleet.guaranteed) == ["F001", "F002", "F003"] and min(fleet.guaranteed.values()) >= 3
    confirmed = {dev: len(levels) for dev, levels in fleet.confirmed_real.items()}
    assert all(confirmed[dev] >= presses for dev, presses in fleet.guaranteed.items()), (confirmed, fleet.guaranteed)
    # The faults really happened: the gateway started three times (first, after its SIGKILL, after the days
    # passed), submissions failed while the province was away, devices came back after the broker restart.
    log = (tmp_path / "hall" / "gateway" / "gateway.log").read_text()
    assert log.count("gateway for hall") == 3
    failed = fleet.hall.query("SELECT count(*) FROM forward_attempts WHERE outcome != 'ok'")[0][0]
    assert failed > 0
    assert all(d.connects >= 2 for d in fleet.virtual)
    # Every device had a command key; every prompt and ack the gateway sent carried the right mac.
    assert all(d.command_key and d.unsigned == 0 for d in fleet.virtual)


def test_overlapping_faults_lose_nothing_and_leave_one_gateway(tmp_path, firmware_tree):
    """Issue 18: the gateway SIGKILLed while the broker restarts, the province is down and a fifth of the
    evaluators are cut off; killed again while still down and just after it came back; power cuts, 5xx from the
    province, another outage. Every case at the province once, defaults issued after the days pass, every start
    at once (no thread to wait for), no gateway started twice and nothing left running."""
    day = scenarios.load(Path("overlap"))
    assert set(scenarios.FAULT_KINDS) == {f.kind for f in day.faults}
    fleet = Fleet(day, tmp_path, firmware_tree, say=print)
    result = fleet.run()
    print(result.summary())

    assert result.ok, result.problems[:20]
    assert (result.duplicates, result.lost, result.wrong, result.unreported, result.orphans) == (0, 0, 0, 0, 0)
    assert result.dead_letters == []
    assert result.forwarded == result.cases == result.stored
    assert result.pressed > 200 and result.phone > 5 and result.defaults > 20
    # Three restarts after kills (one kill fell while the gateway was down already), then the days passing.
    log = (tmp_path / "hall" / "gateway" / "gateway.log").read_text()
    assert log.count("gateway for hall") == len(fleet.hall.gateway_starts) == 5
    assert "Address already in use" not in log
    assert max(fleet.hall.gateway_starts) < 10
    confirmed = {dev: len(levels) for dev, levels in fleet.confirmed_real.items()}
    assert all(confirmed[dev] >= presses for dev, presses in fleet.guaranteed.items()), (confirmed, fleet.guaranteed)


def test_a_gateway_that_cannot_start_again_fails_the_day_at_once(tmp_path, monkeypatch):
    """Another process takes the case API's port while the gateway is down: its start says so, the day ends
    there (not after its 60 s) with that error, and nothing of it is left running."""
    squatter = socket.socket()
    kill = Hall.kill_gateway

    def kill_and_squat(hall):
        kill(hall)
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # its port has connections in TIME_WAIT
        squatter.bind(("127.0.0.1", hall.api_port))
        squatter.listen()
    monkeypatch.setattr(Hall, "kill_gateway", kill_and_squat)
    day = scenarios.parse({"seconds": 60, "days_after": 20, "devices": {"firmware": 0, "virtual": 5},
                           "faults": [{"at": 1, "kind": "gateway_kill", "for": 1}]})
    began = time.monotonic()
    with squatter, pytest.raises(HallError, match="api.port .* is taken"):
        Fleet(day, tmp_path, say=print).run()
    assert time.monotonic() - began < 30
    assert processes_under(tmp_path) == []


def test_a_firmware_window_has_its_citizens_from_the_seed_alone(tmp_path):
    """Who comes to a real-firmware window, when, and what they press depend on the scenario and its seed,
    never on how the day's timing falls: every window has pressing citizens."""
    day = scenarios.load(Path("ci"))
    first = Fleet(day, tmp_path / "a", firmware=tmp_path)
    again = Fleet(day, tmp_path / "b", firmware=tmp_path)
    windows = [first._firmware_citizens(n) for n in range(day.firmware_devices)]
    assert windows == [again._firmware_citizens(n) for n in range(day.firmware_devices)]
    assert windows[0] != windows[1]
    for citizens in windows:
        assert len(citizens) == round(day.cases_per_minute * day.seconds / 60)
        assert sum(1 for c in citizens if c.plan == "press") >= 3
        assert all(0 <= c.at < day.seconds for c in citizens)
        assert [c.at for c in citizens] == sorted(c.at for c in citizens)


def test_the_check_finds_a_record_the_province_lost(tmp_path):
    """The invariant check can fail: remove one record at the province before it runs."""
    class Tampered(Fleet):
        def check(self):
            province = self.hall.province
            with province._lock:
                province._db.execute("DELETE FROM records WHERE rowid = (SELECT min(rowid) FROM records)")
            return super().check()

    day = scenarios.parse({"seconds": 6, "days_after": 20, "devices": {"firmware": 0, "virtual": 5},
                           "citizens": {"cases_per_minute": 30.0, "think_s": [0.1, 0.3]}})
    result = Tampered(day, tmp_path, say=print).run()
    assert not result.ok
    assert result.lost == 1 and result.cases == result.forwarded + 1
    assert "is not at the province" in result.problems[0]


def test_the_check_tells_a_case_never_reported_from_a_case_lost(tmp_path, monkeypatch):
    """A case the window system could never get to the gateway is `unreported`, not `lost`: the day fails and
    its summary shows both counts."""
    from simulator import fleet as fleet_module

    finish = Hall.finish_case

    def never_the_first(hall, case_ref, *args, **kwargs):
        if case_ref == "SIM0000001":
            raise ConnectionRefusedError("the window system's line to the gateway is down")
        return finish(hall, case_ref, *args, **kwargs)
    monkeypatch.setattr(Hall, "finish_case", never_the_first)
    monkeypatch.setattr(fleet_module, "REPORT_DRAIN_S", 2.0)
    day = scenarios.parse({"seconds": 6, "days_after": 20, "devices": {"firmware": 0, "virtual": 5},
                           "citizens": {"cases_per_minute": 30.0, "think_s": [0.1, 0.3]}})
    result = Fleet(day, tmp_path, say=print).run()
    assert not result.ok
    assert (result.unreported, result.lost) == (1, 0) and result.cases == result.forwarded
    assert "case SIM0000001 was never reported to the gateway" in result.problems[0]
    assert "unreported=1 orphans=0 duplicates=0 lost=0" in result.summary()


@pytest.mark.parametrize("document, message", [
    ({"seconds": "long"}, "seconds must be float"),
    ({"devices": {"virtual": -1}}, "devices.virtual must be between 0 and 50000"),
    ({"devices": {"virtul": 3}}, "unknown key devices.virtul"),
    ({"citizens": {"mix": {"happy": 1}}}, "citizens.mix.happy: levels are very_satisfied"),
    ({"citizens": {"think_s": [3, 1]}}, "citizens.think_s must be [low, high] seconds"),
    ({"faults": [{"at": 3, "kind": "meteor"}]}, "kind must be one of broker_restart"),
    ({"faults": [{"kind": "gateway_kill"}]}, "`at` (seconds after opening) is required"),
    ({"faults": [{"at": 3, "kind": "gateway_kill", "during": 2}]}, "unknown key during"),
])
def test_a_bad_scenario_is_refused_with_where_and_why(document, message):
    with pytest.raises(scenarios.ScenarioError, match=re.escape(message)):
        scenarios.parse(document)


def test_scenarios_load_by_name_shorten_and_repeat():
    day = scenarios.load(Path("demo"))
    assert day.firmware_devices == 2 and day.faults
    short = day.with_seconds(15)
    assert short.seconds == 15 and all(f.at < 15 for f in short.faults) and len(short.faults) < len(day.faults)
    thrice = day.repeated(3)
    assert thrice.seconds == 3 * day.seconds and thrice.virtual_devices == day.virtual_devices
    assert [f.at for f in thrice.faults] == [f.at + n * day.seconds for n in range(3) for f in day.faults]


def test_run_refuses_a_missing_scenario_file(tmp_path):
    done = subprocess.run([str(BIN / "hcp-sim"), "run", str(tmp_path / "nope.toml")], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 1
    assert "does not exist (built-in: ci, demo, overlap)" in done.stderr


def test_headless_demo_prints_the_summary_and_saves_screens(tmp_path):
    done = subprocess.run([str(BIN / "hcp-sim"), "demo", "--headless", "--seconds", "15", "--screens",
                           str(tmp_path / "screens")], capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    summary = re.search(r"pressed=(\d+) .*stored=(\d+) forwarded=(\d+) .*duplicates=0 lost=0$", done.stdout, re.M)
    assert summary, done.stdout[-2000:]
    assert int(summary[1]) > 0 and summary[2] == summary[3]
    shots = sorted(p.name for p in (tmp_path / "screens").iterdir())
    assert shots and all(re.fullmatch(r"F00[12]-\d{6}\.\d{3}-[a-z]+\.png", name) for name in shots), shots[:5]
    assert {"idle", "prompt"} <= {name.rsplit("-", 1)[1][:-4] for name in shots}


def terminate_leaves_nothing(command: list[str], work: Path, ready: str, env=None, sig=signal.SIGTERM) -> None:
    """Start an hcp-sim command for `work`, wait for its `ready` line, send `sig`: it must exit, and every
    process it started (broker, gateway, two real-firmware devices, the leash's guard) must end with it."""
    from tests.helpers import wait_until

    started = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=env)
    try:
        for line in started.stdout:
            if ready in line:
                break
        assert len(processes_under(work)) >= 4, processes_under(work)
        guard = f"hcp-sim leash of {started.pid}"
        assert len(processes_under(guard)) == 1
        started.send_signal(sig)
        assert started.wait(timeout=60) != 0
        wait_until(lambda: not processes_under(work) and not processes_under(guard), 20,
                   "every process it started gone")
    finally:
        started.kill()
        started.wait()


def test_sigterm_ends_a_run_with_every_process_it_started(tmp_path):
    work = tmp_path / "run"
    terminate_leaves_nothing([str(BIN / "hcp-sim"), "run", "demo", "--workdir", str(work)], work, "open:")


def test_sigkill_of_a_run_ends_every_process_it_started(tmp_path):
    """SIGKILLed, hcp-sim cannot stop anything itself: the leash's guard ends its broker, gateway and devices."""
    work = tmp_path / "run"
    terminate_leaves_nothing([str(BIN / "hcp-sim"), "run", "demo", "--workdir", str(work)], work, "open:",
                             sig=signal.SIGKILL)


def test_one_gateway_at_a_time_and_a_taken_port_fails_the_start(tmp_path):
    """Kills and starts from many threads at once leave one gateway and lose none; a start that finds the
    gateway's port taken says so and leaves nothing running."""
    with Hall(tmp_path / "hall") as hall:
        config = hall.gateway.config_path
        first = hall.gateway.proc
        hall.start_gateway()  # running: not started again
        assert hall.gateway.proc is first
        with pytest.raises(HallError, match="one gateway at a time"):
            hall.gateway.start()
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda n: hall.kill_gateway() if n % 2 else hall.start_gateway(), range(24)))
        hall.start_gateway()
        assert processes_under(config) == [hall.gateway.proc.pid]
        assert hall.healthy()

        hall.kill_gateway()
        with socket.socket() as squatter:
            squatter.bind(("127.0.0.1", hall.api_port))
            squatter.listen()
            with pytest.raises(HallError, match=f"api.port {hall.api_port} is taken"):
                hall.start_gateway()
            assert processes_under(config) == []
        hall.start_gateway()
        assert processes_under(config) == [hall.gateway.proc.pid]
    assert processes_under(tmp_path) == []
