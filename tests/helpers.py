"""Test helpers: waiting on conditions, a device that behaves like the firmware on the wire, gateway configs."""
from __future__ import annotations

import queue
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt

from gateway import settings
from protocol import codec
from simulator.hall import GatewayProcess  # noqa: F401 - tests start the gateway as its own process

HALL = "361102-xz"
APP_KEY, APP_SECRET = "hall-key", "hall-secret-0123456789"
DEPT = "11361100MB1234567X"


def wait_until(predicate, timeout: float = 20.0, what: str = "condition", interval: float = 0.02):
    """Poll `predicate` until it returns something truthy; fail with `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def leaks(folder, secrets: list[str]) -> list[str]:
    """Every log file under `folder` holding one of `secrets`."""
    found = []
    for path in sorted(Path(folder).rglob("*.log")):
        text = path.read_text(encoding="utf-8", errors="replace")
        found += [f"{secret[:1]}… in {path}" for secret in secrets if secret in text]
    return found


def gateway_config(broker_port: int, db_path, province_url: str = "", **overrides) -> dict:
    values = {"gateway.hall": HALL, "mqtt.port": broker_port, "store.path": str(db_path), "http.port": 0,
              "api.port": 0,
              "upstream.url": province_url, "upstream.app_key": APP_KEY, "upstream.app_secret": APP_SECRET,
              "upstream.area_code": "361102", "upstream.backoff_base_s": 0.05, "upstream.backoff_max_s": 0.5,
              "upstream.timeout_s": 2.0,
              "mqtt.registered_only": False}  # most tests use devices nobody registered; tests/test_security.py does
    values.update(overrides)
    return settings.load(None, values)


def register_device(writer, dev: str, window_no: str = "A01", dept_code: str = DEPT, staff_no: str = "N0321"):
    writer.call(lambda conn: conn.execute(
        "INSERT INTO devices (dev, hall, window_no, dept_code, staff_no) VALUES (?, ?, ?, ?, ?) "
        "ON CONFLICT (dev) DO UPDATE SET window_no = excluded.window_no, dept_code = excluded.dept_code, "
        "staff_no = excluded.staff_no", (dev, HALL, window_no, dept_code, staff_no)))


class WireDevice:
    """A device on the wire as the firmware behaves: ratings kept until the gateway acks them, resent after
    a reconnect or when `resend()` is called. Records every ack and reject it receives."""

    def __init__(self, port: int, dev: str, boot: str = "0a1b2c3d"):
        self.dev, self.boot = dev, boot
        self.seq = 0
        self.unacked: dict[str, bytes] = {}
        self.acked: set[str] = set()
        self.rejects: queue.Queue = queue.Queue()
        self.times: queue.Queue = queue.Queue()
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=dev, clean_session=False)
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = lambda *a: self._subscribed.set()
        self.client.on_message = self._on_message
        self.client.reconnect_delay_set(0.1, 1)
        self.client.connect("127.0.0.1", port, keepalive=10)
        self.client.loop_start()
        assert self._subscribed.wait(10), "device did not subscribe"

    def _on_connect(self, client, userdata, flags, reason_code, properties):
        client.subscribe(codec.subscription(HALL, self.dev, codec.DOWN), qos=1)
        self.resend()

    def _on_message(self, client, userdata, message):
        msg = codec.decode(message.payload)
        if msg["k"] == "ack":
            with self._lock:
                for rating_id in msg["ids"]:
                    self.unacked.pop(rating_id, None)
                    self.acked.add(rating_id)
        elif msg["k"] == "reject":
            with self._lock:
                self.unacked.pop(msg["ref"], None)
            self.rejects.put(msg)
        elif msg["k"] == "time":
            self.times.put(msg)

    def rating(self, level: str = "satisfied", case: str | None = None, reasons=None, t: int | None = None) -> dict:
        with self._lock:
            self.seq += 1
            msg = {"v": 1, "k": "rating", "dev": self.dev, "boot": self.boot, "seq": self.seq,
                   "id": f"{self.boot}{self.seq:08x}", "t": int(time.time()) if t is None else t, "ms": self.seq,
                   "case": case, "lvl": level, "pub": True}
            if reasons:
                msg["rsn"] = reasons
            return msg

    def press(self, level: str = "satisfied", case: str | None = None, reasons=None) -> str:
        """Record a rating (as the outbox does) and publish it; return its id."""
        msg = self.rating(level, case, reasons)
        payload = codec.encode(msg)
        with self._lock:
            self.unacked[msg["id"]] = payload
        self.client.publish(codec.topic(HALL, self.dev, "rating"), payload, qos=1)
        return msg["id"]

    def send_raw(self, payload: bytes, kind: str = "rating") -> None:
        self.client.publish(codec.topic(HALL, self.dev, kind), payload, qos=1)

    def resend(self) -> None:
        with self._lock:
            pending = list(self.unacked.values())
        for payload in pending:
            self.client.publish(codec.topic(HALL, self.dev, "rating"), payload, qos=1)

    def all_acked(self) -> bool:
        with self._lock:
            return not self.unacked

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def prepare_database(path, devices: list[str]) -> None:
    """Create the gateway's database with these devices registered, as provisioning would."""
    from gateway import db

    database = db.connect(path)
    db.migrate(database)
    for dev in devices:
        database.execute("INSERT INTO devices (dev, hall, window_no, dept_code, staff_no) VALUES (?, ?, ?, ?, ?)",
                         (dev, HALL, f"A{dev[-2:]}", DEPT, "N0321"))
    database.conn.close()
