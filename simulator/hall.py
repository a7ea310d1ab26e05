"""A hall on loopback: a private Mosquitto, the gateway as its own process (so it can be SIGKILLed), the
simulated province, and the calls a window system and a citizen's phone make to the gateway.

Used by `hcp-sim run`, `hcp-sim demo`, `hcp-sim gui` and the benchmarks. Every fault a scenario can inject
on the hall's side is here (`Hall.begin_fault`: broker restart, gateway kill, province outage, province
errors), and days passing; the devices' own faults (network and power cuts) are the fleet's.
"""
from __future__ import annotations

import json
import secrets
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path

from gateway import settings
from gateway.access import key_entry
from simulator import leash
from simulator.broker import Broker, free_port, stop_process
from simulator.province import Province
from simulator.scenario import Fault

HALL = "361102-xz"
AREA = "361102"
DEPT = "11361100MB1234567X"
APP_KEY = "sim-hall"
TASK = ("361100-000-XK-001", "不动产登记")


class HallError(RuntimeError):
    """A part of the hall did not come up or answer in time."""


class GatewayProcess:
    """`hcp-gateway run` as a separate process with its config file and log in `workdir`."""

    def __init__(self, workdir: Path, config_values: dict):
        self.workdir = Path(workdir)
        self.values = dict(config_values)
        self.config_path = self.workdir / "gateway.toml"
        self.command = [str(Path(sys.executable).parent / "hcp-gateway"), "run", "--config", str(self.config_path)]
        self.log_path = self.workdir / "gateway.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> "GatewayProcess":
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(settings.dump(self.values))
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self.command, stdout=log, stderr=log, cwd=self.workdir, **leash.options())
        return self

    def kill(self) -> None:
        """SIGKILL: no chance to commit, flush or say goodbye."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        stop_process(self.proc, 30)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


class Hall:
    """Broker, province and gateway of one hall, with the window system's and the phones' calls."""

    def __init__(self, workdir: Path, hall: str = HALL, gateway_values: dict | None = None):
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.hall = hall
        self.api_key = secrets.token_urlsafe(16)
        self.app_secret = secrets.token_urlsafe(24)
        self.offset_s = 0.0  # how far simulated days have moved the hall's clocks
        self.broker = Broker(self.workdir / "broker")
        self.province = Province(self.workdir / "province.db", APP_KEY, self.app_secret,
                                 clock=lambda: time.time() + self.offset_s)
        self.api_port, self.monitor_port = free_port(), free_port()
        self.db_path = self.workdir / "gateway.db"
        self._gateway_values = gateway_values or {}
        self.gateway: GatewayProcess | None = None

    # ---- lifecycle ----

    def start(self, timeout: float = 30) -> "Hall":
        self.broker.start()
        self.province.start()
        values = {"gateway.hall": self.hall, "mqtt.port": self.broker.port, "store.path": str(self.db_path),
                  "http.port": self.monitor_port, "api.port": self.api_port, "api.public_url": self.api_url,
                  "api.keys": [key_entry(self.api_key, ("window", "technician"), "sim-hall")],
                  "api.rate_per_minute": 100000, "api.page_rate_per_minute": 100000, "upstream.url": self.province.url,
                  "upstream.app_key": APP_KEY, "upstream.app_secret": self.app_secret, "upstream.area_code": AREA,
                  "upstream.backoff_base_s": 0.2, "upstream.backoff_max_s": 2.0, "upstream.timeout_s": 3.0,
                  **self._gateway_values}
        self.gateway = GatewayProcess(self.workdir / "gateway", values).start()
        self.wait_gateway(timeout)
        return self

    def stop(self) -> None:
        if self.gateway:
            self.gateway.stop()
        self.province.stop()
        self.broker.stop()

    def __enter__(self) -> "Hall":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    def healthy(self) -> dict | None:
        """The gateway's /healthz answer when it is up and connected to the broker, else None."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.monitor_port}/healthz", timeout=2) as answer:
                return json.loads(answer.read())
        except (OSError, ValueError):
            return None

    def wait_gateway(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while not self.healthy():
            if not self.gateway.running:
                raise HallError(f"the gateway exited: {self.gateway_log()[-1500:]}")
            if time.monotonic() > deadline:
                raise HallError(f"the gateway was not healthy within {timeout} s: {self.gateway_log()[-1500:]}")
            time.sleep(0.05)

    def gateway_log(self) -> str:
        path = self.gateway.log_path
        return path.read_text(errors="replace") if path.exists() else ""

    # ---- faults on the hall's side ----

    FAULTS = ("broker_restart", "gateway_kill", "province_outage", "province_errors")  # scenario fault kinds

    def begin_fault(self, fault: Fault) -> Callable[[], None] | None:
        """Inject a scenario fault of one of the kinds in FAULTS; return what ends it (None: it is over)."""
        if fault.kind == "broker_restart":
            self.restart_broker()
            return None
        if fault.kind == "gateway_kill":
            self.kill_gateway()
            return self.start_gateway
        if fault.kind == "province_outage":
            self.province_down()
            return self.province_up
        if fault.kind == "province_errors":
            self.province.faults.update({"error_rate": fault.rate})
            return lambda: self.province.faults.update({"error_rate": 0.0})
        raise ValueError(f"{fault.kind} is not a fault of the hall's (those are {', '.join(self.FAULTS)})")

    def kill_gateway(self) -> None:
        self.gateway.kill()

    def start_gateway(self) -> None:
        self.gateway.start()
        self.wait_gateway()

    def restart_broker(self) -> None:
        self.broker.restart()

    def province_down(self) -> None:
        self.province.down()

    def province_up(self) -> None:
        self.province.up()

    def days_pass(self, days: float) -> None:
        """Move the hall's clocks `days` ahead: the gateway restarts on the new time, the province follows."""
        self.gateway.stop()
        self.offset_s += days * 86400
        self.gateway.values["clock.offset_s"] = self.offset_s
        self.start_gateway()

    # ---- what the window system and citizens' phones call ----

    def register(self, dev: str, window_no: str, staff_no: str = "N0321") -> dict:
        return self.call("PUT", f"/api/v1/devices/{dev}", {"window_no": window_no, "dept_code": DEPT,
                                                             "staff_no": staff_no})

    def credentials(self, dev: str) -> dict:
        """The device's broker account and command key, as provisioning gets them."""
        return self.call("POST", f"/api/v1/devices/{dev}/credentials")

    def finish_case(self, case_ref: str, window_no: str, applicant: str = "张三丰", retry_s: float = 30) -> dict:
        """Report a case finished (办结), as a window system does: retried while the gateway is away."""
        body = {"project_no": case_ref, "task_code": TASK[0], "task_name": TASK[1], "dept_code": DEPT,
                "staff_no": "N0321", "window_no": window_no, "applicant_name": applicant}
        return self.call("POST", "/api/v1/cases", body, retry_s=retry_s)

    def call(self, method: str, path: str, body: dict | None = None, retry_s: float = 0) -> dict:
        """One case-API call with the hall's key; connection failures retried for `retry_s` seconds."""
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.api_url + path, data=data, method=method, headers={
            "Authorization": f"Bearer {self.api_key}", "Content-Type": "application/json"})
        return json.loads(_send(request, retry_s))

    def rate_by_phone(self, url: str, level: str, reasons: list[str] = (), retry_s: float = 30) -> str:
        """A citizen rates a case on its page (a form post, as a phone does): "stored", "already" (the case
        was rated before, perhaps by this call's first try whose answer was lost) or "refused"."""
        form = urllib.parse.urlencode([("level", level), *(("reason", r) for r in reasons)]).encode()
        try:
            page = _send(urllib.request.Request(url, data=form, method="POST"), retry_s).decode()
        except urllib.error.HTTPError as e:
            return "already" if e.code == 409 else "refused"
        except OSError:
            return "refused"
        return "stored" if "感谢您的评价" in page else "refused"

    # ---- what the checks read ----

    def query(self, sql: str, args: tuple = ()) -> list[tuple]:
        """Read the gateway's database (read-only, alongside the running gateway)."""
        return self._read(sql, args, None)

    def rows(self, sql: str, args: tuple = ()) -> list[sqlite3.Row]:
        """As `query`, each row also giving its columns by name (row["case_ref"])."""
        return self._read(sql, args, sqlite3.Row)

    def _read(self, sql: str, args: tuple, row_factory) -> list:
        conn = sqlite3.connect(f"file:{self.db_path}?mode=ro", uri=True, timeout=10)
        conn.row_factory = row_factory
        try:
            return conn.execute(sql, args).fetchall()
        finally:
            conn.close()


def _send(request: urllib.request.Request, retry_s: float) -> bytes:
    deadline = time.monotonic() + retry_s
    while True:
        try:
            with urllib.request.urlopen(request, timeout=10) as answer:
                return answer.read()
        except urllib.error.HTTPError:
            raise
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
