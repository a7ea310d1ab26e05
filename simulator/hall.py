"""A hall on loopback: a private Mosquitto, the gateway as its own process (so it can be SIGKILLed), the
simulated province, and the calls a window system and a citizen's phone make to the gateway.

Used by `hcp-sim run`, `hcp-sim demo`, `hcp-sim gui` and the benchmarks. Every fault a scenario can inject
on the hall's side is here (`Hall.begin_fault`: broker restart, gateway kill, province outage, province
errors), and days passing; the devices' own faults (network and power cuts) are the fleet's.

One gateway at a time: every change to the gateway's life (start, kill, stop, days passing) holds the hall's
one lock, a start refuses while the process it started last is alive, and a start that finds the gateway's
ports taken says so and fails instead of leaving two gateways fighting over them.
"""
from __future__ import annotations

import json
import queue
import secrets
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from concurrent.futures import Future
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
        """Start the gateway; HallError, and nothing started, while the last one started is alive or while
        another process holds its ports."""
        if self.running:
            raise HallError(f"the gateway (pid {self.proc.pid}) is running: one gateway at a time")
        for key in ("api.port", "http.port"):
            port = self.values.get(key)
            if port and _taken(self.values.get(key.split(".")[0] + ".host", "127.0.0.1"), port):
                others = leash.processes_under(self.config_path)
                raise HallError(f"the gateway's {key} {port} is taken (gateway processes of this config still "
                                f"alive: {others or 'none'}): not starting a second gateway")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(settings.dump(self.values))
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self.command, stdout=log, stderr=log, cwd=self.workdir, **leash.options())
        return self

    def kill(self) -> int | None:
        """SIGKILL: no chance to commit, flush or say goodbye. The pid killed, None if none was running."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()
            return self.proc.pid
        return None

    def stop(self) -> None:
        stop_process(self.proc, 30)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


def _taken(host: str, port: int) -> bool:
    """Whether a process listens on host:port (a port left in TIME_WAIT is free to the gateway, as to this)."""
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return True
    return False


class Hall:
    """Broker, province and gateway of one hall, with the window system's and the phones' calls."""

    def __init__(self, workdir: Path, hall: str = HALL, gateway_values: dict | None = None,
                 say: Callable[[str], None] = lambda text: None):
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
        self.say = say
        self._life = threading.RLock()  # held by every change to the gateway's life: one at a time
        self.gateway_starts: list[float] = []  # seconds from each start to a healthy gateway

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
        self.gateway = GatewayProcess(self.workdir / "gateway", values)
        self.start_gateway(timeout)
        return self

    def stop(self) -> None:
        with self._life:
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
        """Until the gateway this hall started answers healthy (its own process: checked first, so no other
        process on its port can answer for it)."""
        deadline = time.monotonic() + timeout
        while True:
            if not self.gateway.running:
                raise HallError(f"the gateway exited: {self.gateway_log()[-1500:]}")
            if self.healthy():
                return
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
        with self._life:
            pid = self.gateway.kill()
            self.say(f"gateway pid {pid} SIGKILLed" if pid else "gateway_kill: no gateway was running")

    def start_gateway(self, timeout: float = 30) -> None:
        """Start the gateway unless it is running, and wait until it is healthy. HallError if it cannot start
        or is not healthy in time; then it is not left running."""
        with self._life:
            if self.gateway.running:
                self.say(f"the gateway (pid {self.gateway.proc.pid}) is running already: not started again")
                return
            began = time.monotonic()
            self.gateway.start()
            try:
                self.wait_gateway(timeout)
            except BaseException:
                self.gateway.kill()
                raise
            took = time.monotonic() - began
            self.gateway_starts.append(took)
            self.say(f"gateway pid {self.gateway.proc.pid} started, healthy after {took:.2f} s")

    def restart_broker(self) -> None:
        self.broker.restart()

    def province_down(self) -> None:
        self.province.down()

    def province_up(self) -> None:
        self.province.up()

    def days_pass(self, days: float) -> None:
        """Move the hall's clocks `days` ahead: the gateway restarts on the new time, the province follows."""
        with self._life:
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


class WindowSystem:
    """The hall's window system as it reports finished cases (办结) to the gateway's case API: in the order they
    come, on threads of its own. A case it cannot report (the gateway away, or answering 5xx) stays in its queue
    and is tried again until the gateway takes it, as a real window system's outbox does: the gateway being
    away never costs a case, nor a thread the rest of the hall needs."""

    RETRY_S = 0.2

    def __init__(self, hall: Hall, workers: int = 8):
        self.hall = hall
        self.refused: list[tuple[str, str]] = []  # (case, why) the case API refused for good (4xx)
        self._queue: queue.Queue = queue.Queue()
        self._pending: dict[str, Future] = {}  # case -> its report, until the gateway has taken it or refused it
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._workers = [threading.Thread(target=self._work, name=f"window-system-{n}", daemon=True)
                         for n in range(workers)]
        for worker in self._workers:
            worker.start()

    def report(self, case_ref: str, window_no: str, reported: Callable[[dict], None] | None = None) -> Future:
        """Take a finished case. The future is done with the case API's answer once the gateway has the case
        (`reported(answer)` runs just before), or with None when it refused it or the window system closed."""
        done: Future = Future()
        with self._lock:
            self._pending[case_ref] = done
        self._queue.put((case_ref, window_no, reported, done))
        return done

    def unreported(self) -> list[tuple[str, str]]:
        """(case, why) of every case taken that the gateway does not have: still queued, or refused."""
        with self._lock:
            return [(ref, "still in the window system's queue") for ref in self._pending] + self.refused

    def drain(self, timeout: float) -> bool:
        """Until every case taken has been reported (or refused); False if the time ran out first."""
        deadline = time.monotonic() + timeout
        while self._pending:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.1)
        return True

    def close(self) -> None:
        """Stop reporting; what is still queued stays unreported."""
        self._closed.set()
        for _ in self._workers:
            self._queue.put(None)
        for worker in self._workers:
            worker.join(15)

    def _work(self) -> None:
        while (item := self._queue.get()) is not None:
            case_ref, window_no, reported, done = item
            answer = self._until_taken(case_ref, window_no)
            if answer is not None and reported:
                reported(answer)
            if answer is not None or not self._closed.is_set():
                with self._lock:
                    del self._pending[case_ref]
            done.set_result(answer)

    def _until_taken(self, case_ref: str, window_no: str) -> dict | None:
        while not self._closed.is_set():
            try:
                return self.hall.finish_case(case_ref, window_no, retry_s=0)
            except urllib.error.HTTPError as e:
                if e.code < 500 and e.code != 429:
                    with self._lock:
                        self.refused.append((case_ref, f"refused: {e.code} {e.read()[:300].decode(errors='replace')}"))
                    return None
            except OSError:  # refused, reset or timed out: the gateway is away
                pass
            self._closed.wait(self.RETRY_S)
        return None


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
