"""A 1,000,000-rating backlog: the gateway's memory while it sits in the store, and how fast it drains.

The backlog is written straight into the gateway's database (as after a long provincial outage). The
gateway runs as its own process, first with the province down (its memory is sampled while it retries),
then the simulated province (`hcp-sim province`, its own process) comes up and the backlog drains.
"""
from __future__ import annotations

import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.gateway_ingest import HALL
from gateway import db, ratings
from gateway.workdays import WorkCalendar
from simulator.broker import Broker, free_port, wait_for_port
from tests.helpers import APP_KEY, APP_SECRET, DEPT, GatewayProcess, wait_until

BACKLOG = 1_000_000
DEVICES = 1000
FILL_BATCH = 10_000


def fill(path: Path, count: int) -> None:
    database = db.connect(path)
    db.migrate(database)
    conn = database.conn
    conn.execute("PRAGMA synchronous = OFF")  # setting up the bench, not measuring it
    conn.executemany("INSERT INTO devices (dev, hall, window_no, dept_code, staff_no) VALUES (?, ?, ?, ?, ?)",
                     [(f"D{i:04d}", HALL, f"A{i:04d}", DEPT, "N0321") for i in range(DEVICES)])
    now = time.time()
    calendar = WorkCalendar()
    for start in range(0, count, FILL_BATCH):
        batch = [ratings.from_device({"dev": f"D{i % DEVICES:04d}", "id": f"{i:016x}", "boot": "0a1b2c3d",
                                      "seq": i // DEVICES + 1, "case": None, "lvl": "satisfied", "pub": True,
                                      "t": now}, now)
                 for i in range(start, min(count, start + FILL_BATCH))]
        conn.execute("BEGIN")
        ratings.store_many(conn, batch, calendar, 10)
        conn.execute("COMMIT")
    conn.close()


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def pending(path: Path) -> int:
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as conn:
        return conn.execute("SELECT count(*) FROM outbox WHERE state = 'pending'").fetchone()[0]


def sampled_rss(gateway: GatewayProcess, seconds: float) -> float:
    peak, end = 0.0, time.monotonic() + seconds
    while time.monotonic() < end:
        peak = max(peak, rss_mb(gateway.proc.pid))
        time.sleep(0.25)
    return peak


def figures():
    with tempfile.TemporaryDirectory() as tmp, Broker(Path(tmp) / "broker") as broker:
        work = Path(tmp)
        province_port = free_port()
        values = {"gateway.hall": HALL, "mqtt.port": broker.port, "http.port": 0, "api.port": 0,
                  "upstream.url": f"http://127.0.0.1:{province_port}", "upstream.app_key": APP_KEY,
                  "upstream.app_secret": APP_SECRET, "upstream.backoff_max_s": 1.0}

        (work / "idle").mkdir()
        idle = GatewayProcess(work / "idle", {**values, "store.path": str(work / "idle" / "g.db")}).start()
        idle_rss = sampled_rss(idle, 5)
        idle.stop()

        (work / "backlog").mkdir()
        path = work / "backlog" / "g.db"
        fill(path, BACKLOG)
        gateway = GatewayProcess(work / "backlog", {**values, "store.path": str(path)}).start()
        province = None
        try:
            backlog_rss = sampled_rss(gateway, 8)
            province = subprocess.Popen([str(Path(sys.executable).parent / "hcp-sim"), "province", "--db",
                                         str(work / "province.db"), "--port", str(province_port), "--app-key",
                                         APP_KEY, "--app-secret", APP_SECRET], stderr=subprocess.DEVNULL)
            wait_for_port(province_port, 10)
            start = time.perf_counter()
            wait_until(lambda: pending(path) == 0, timeout=900, what="the backlog drained", interval=0.5)
            took = time.perf_counter() - start
        finally:
            gateway.stop()
            if province:
                province.terminate()
                province.wait()
    yield "drain_rate", round(BACKLOG / took), "ratings/s", ">= 10000"
    yield "backlog_rss_mb", round(backlog_rss, 1), "MB", f"flat: idle gateway {idle_rss:.1f} MB"
    yield "idle_rss_mb", round(idle_rss, 1), "MB", None
