"""Gateway restart: from a SIGKILL to a healthy gateway again, under the load a hall puts on a restart.

While the gateway is down, 20,000 ratings queue at the broker for its session and the hall's 300 devices lose
their network; the gateway is started again at once (as systemd's Restart=always does) and the devices come
back in the same moment. Healthy means all three of: the case API takes a 办结 report, /healthz says the broker
is connected, and a rating reaches the province again. Also reported: when the backlog is stored.
"""
from __future__ import annotations

import asyncio
import json
import sqlite3
import statistics
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

from bench.gateway_ingest import prequeue
from gateway.access import key_entry
from protocol import codec
from simulator.broker import Broker, free_port
from simulator.hall import GatewayProcess
from simulator.province import Province
from simulator.virtual import VirtualDevice
from tests.helpers import APP_KEY, APP_SECRET, DEPT, HALL, prepare_database

DEVICES = 300
BACKLOG = 20_000
TRIALS = 3
KEY = "bench-window-key-0123456789"


def backlog(trial: int):
    """BACKLOG ratings from the hall's devices, to publish while the gateway is away."""
    for i in range(BACKLOG):
        dev = f"D{i % DEVICES:04d}"
        yield codec.topic(HALL, dev, "rating"), codec.encode({
            "v": 1, "k": "rating", "dev": dev, "boot": f"{trial:08x}", "seq": i + 1, "id": f"{trial:04x}{i:012x}",
            "t": int(time.time()), "ms": i, "case": None, "lvl": codec.LEVELS[i % 5], "pub": True})


class Devices:
    """The hall's evaluators on their own event loop, so their network can be cut and restored at once."""

    def __init__(self, port: int):
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, daemon=True).start()
        self.devices = self._call(self._start(port))

    async def _start(self, port: int) -> list[VirtualDevice]:
        return [VirtualDevice(f"D{n:04d}", HALL, "127.0.0.1", port).start() for n in range(DEVICES)]

    def _call(self, coroutine):
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(60)

    async def _each(self, action: str) -> None:
        for device in self.devices:
            getattr(device, action)()

    def unplug(self) -> None:
        self._call(self._each("unplug"))

    def replug(self) -> None:
        self._call(self._each("replug"))

    def online(self) -> int:
        return sum(device.online.is_set() for device in self.devices)

    async def _stop_all(self) -> None:
        await asyncio.gather(*(device.stop() for device in self.devices))

    def stop(self) -> None:
        self._call(self._stop_all())
        self.loop.call_soon_threadsafe(self.loop.stop)


def _get(url: str, data: bytes | None = None) -> int:
    request = urllib.request.Request(url, data=data, headers={"Authorization": f"Bearer {KEY}",
                                                              "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=2) as response:
            return response.status
    except urllib.error.HTTPError as e:
        return e.code
    except OSError:
        return 0


def _until(predicate, timeout: float = 120) -> float:
    """Seconds until `predicate` holds (polled every 10 ms)."""
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout:
            raise RuntimeError(f"not within {timeout} s")
        time.sleep(0.01)
    return time.monotonic()


def trial(n: int, gateway: GatewayProcess, devices: Devices, broker_port: int, province: Province,
          db_path: Path, api: str, monitor: str) -> dict:
    gateway.kill()
    devices.unplug()
    prequeue(broker_port, backlog(n))
    stored_before = _count(db_path)
    at_province = province.count()
    report = json.dumps({"project_no": f"RESTART{n}", "task_code": "361100-000-XK-001", "task_name": "不动产登记",
                         "dept_code": DEPT, "staff_no": "N0321", "window_no": "A01"}).encode()
    started = time.monotonic()
    gateway.start()
    devices.replug()
    api_at = _until(lambda: _get(f"{api}/api/v1/cases", report) == 200)
    connected_at = _until(lambda: _get(f"{monitor}/healthz") == 200)
    forwarding_at = _until(lambda: province.count() > at_province)
    stored_at = _until(lambda: _count(db_path) >= stored_before + BACKLOG, 300)
    return {"healthy": max(api_at, connected_at, forwarding_at) - started, "api": api_at - started,
            "backlog": stored_at - started, "online": devices.online()}


def _count(db_path: Path) -> int:
    with sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=30) as conn:
        return conn.execute("SELECT count(*) FROM ratings").fetchone()[0]


def figures():
    with tempfile.TemporaryDirectory() as tmp, Broker(Path(tmp) / "broker") as broker:
        work = Path(tmp)
        db_path = work / "gateway.db"
        prepare_database(db_path, [f"D{n:04d}" for n in range(DEVICES)])
        province = Province(work / "province.db", APP_KEY, APP_SECRET).start()
        api_port, monitor_port = free_port(), free_port()
        gateway = GatewayProcess(work, {
            "gateway.hall": HALL, "mqtt.port": broker.port, "store.path": str(db_path), "http.port": monitor_port,
            "api.port": api_port, "api.keys": [key_entry(KEY, ["window"], "bench")], "api.rate_per_minute": 100000,
            "upstream.url": province.url, "upstream.app_key": APP_KEY, "upstream.app_secret": APP_SECRET,
            "upstream.area_code": "361102"}).start()
        api, monitor = f"http://127.0.0.1:{api_port}", f"http://127.0.0.1:{monitor_port}"
        devices = None
        try:
            _until(lambda: _get(f"{monitor}/healthz") == 200, 60)  # the session exists at the broker
            devices = Devices(broker.port)
            _until(lambda: devices.online() == DEVICES, 60)
            results = [trial(n, gateway, devices, broker.port, province, db_path, api, monitor)
                       for n in range(TRIALS)]
        finally:
            try:
                if devices is not None:
                    devices.stop()
            finally:  # the gateway and the province go whatever the devices did
                gateway.stop()
                province.stop()
    for r in results:
        print(f"  restart: healthy {r['healthy']:.2f} s, case API {r['api']:.2f} s, backlog of {BACKLOG} stored "
              f"{r['backlog']:.2f} s, devices online {r['online']}", flush=True)
    yield "gateway_restart_s", round(statistics.median(r["healthy"] for r in results), 2), "s", "<= 5"
    yield "gateway_restart_api_s", round(statistics.median(r["api"] for r in results), 2), "s", None
    yield "gateway_restart_backlog_s", round(statistics.median(r["backlog"] for r in results), 2), "s", None
