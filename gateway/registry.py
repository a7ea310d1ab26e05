"""The device registry: who may send (the gate's cache), registering, credentials, revoking, configuration.

The API's technician calls and the `hcp-gateway revoke` command come here; ingest asks the gate about every
message, and the downlink asks it for the key to sign with.
"""
from __future__ import annotations

import json
import sqlite3
import threading
import time
from pathlib import Path

from gateway import audit, brokerauth, db, prompts
from gateway.errors import Conflict, InvalidInput, NotFound
from protocol import codec

REGISTRY_FIELDS = ("window_no", "dept_code", "dept_name", "staff_no")
DEVICE_COLUMNS = ("dev, hall, window_no, dept_code, dept_name, staff_no, state, fw, boot, uptime_s, heap, rssi, "
                  "outbox, last_error, config_ver, config_sent, config, last_seen, revoked_at")


class DeviceGate:
    """Which devices may send (registered, not revoked: `mqtt.registered_only`) and the command key each is
    signed to with. A cache of the registry, read again whenever the registry's generation moved: every change
    bumps it, whoever makes it (this gateway, or `hcp-gateway revoke` from another process), and `poll` looks
    at it at most every POLL_S, so a revocation anywhere takes effect within a second."""

    POLL_S = 0.25

    def __init__(self, path: Path, enabled: bool):
        self.path = Path(path)
        self.enabled = enabled
        self.allowed: set[str] = set()
        self.revoked: set[str] = set()
        self.keys: dict[str, str] = {}
        self.generation = -1
        self._polled = float("-inf")
        self._conn: sqlite3.Connection | None = None
        self._lock = threading.Lock()

    def start(self) -> None:
        self._conn = db.connect(self.path, readonly=True).conn
        self.refresh()

    def stop(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def poll(self) -> None:
        """Refresh if the registry changed since the last look (cheap: one row read, not every turn)."""
        now = time.monotonic()
        if now - self._polled < self.POLL_S:
            return
        self._polled = now
        with self._lock:
            generation = self._conn.execute("SELECT generation FROM registry_generation").fetchone()[0]
        if generation != self.generation:
            self.refresh()

    def refresh(self) -> None:
        with self._lock:
            self._conn.execute("BEGIN")  # the rows and their generation from one snapshot
            try:
                generation = self._conn.execute("SELECT generation FROM registry_generation").fetchone()[0]
                rows = self._conn.execute("SELECT dev, revoked_at IS NOT NULL, command_key FROM devices").fetchall()
            finally:
                self._conn.execute("COMMIT")
            if generation < self.generation:  # another thread has already applied a newer snapshot
                return
            self.allowed = {dev for dev, revoked, _ in rows if not revoked}
            self.revoked = {dev for dev, revoked, _ in rows if revoked}
            self.keys = {dev: key for dev, revoked, key in rows if key and not revoked}
            self.generation = generation

    def admit(self, dev: str, command_key: str | None = None) -> None:
        """A device this gateway just registered, or gave a new key: at once, before the next poll."""
        if dev not in self.revoked:
            self.allowed.add(dev)
            if command_key:
                self.keys[dev] = command_key

    def key(self, dev: str) -> str | None:
        return self.keys.get(dev)

    def refusal(self, dev: str) -> str | None:
        """None if `dev` may send, else the reject code."""
        if not self.enabled or dev in self.allowed:
            return None
        return "revoked" if dev in self.revoked else "unknown_device"


class Registry:
    """The registry's operations for the running gateway (the case API's technician calls)."""

    def __init__(self, config: dict, writer, reader, gate: DeviceGate, downlink, clock):
        self.config, self.writer, self.reader = config, writer, reader
        self.gate, self.downlink, self.clock = gate, downlink, clock

    def devices(self, dev: str | None = None) -> list[dict]:
        """Registry entries with each device's last status; never its secrets."""
        return [dict(row) for row in self.reader.execute(
            f"SELECT {DEVICE_COLUMNS} FROM devices WHERE ? IS NULL OR dev = ? ORDER BY dev", (dev, dev))]

    def device(self, dev: str) -> dict:
        found = self.devices(dev)
        if not found:
            raise NotFound(f"no device {dev}")
        return found[0]

    def device_of_window(self, window_no: str) -> str | None:
        """The window's evaluator: the one seen last, if several are registered there."""
        row = self.reader.execute("SELECT dev FROM devices WHERE window_no = ? AND revoked_at IS NULL "
                                  "ORDER BY last_seen DESC", (window_no,)).fetchone()
        return row["dev"] if row else None

    def online(self, dev: str) -> bool:
        row = self.reader.execute("SELECT state FROM devices WHERE dev = ?", (dev,)).fetchone()
        return bool(row and row["state"] == "online")

    def register(self, dev: str, fields: dict) -> dict:
        """Register a device, or change its window, department or staff on duty (fields left out are kept)."""
        if codec.DEVICE(dev):
            raise InvalidInput("device id: 1-32 of A-Z a-z 0-9 _ -", "dev")
        for name in REGISTRY_FIELDS:
            if fields.get(name) is not None and not isinstance(fields[name], str):
                raise InvalidInput(f"{name} must be text", name)
        if fields.get("dept_code") and len(fields["dept_code"]) != 18:
            raise InvalidInput("dept_code: the 18-character unified social credit code", "dept_code")
        values = [fields.get(name) for name in REGISTRY_FIELDS]
        self.writer.call(lambda conn: conn.execute(
            "INSERT INTO devices (dev, hall, window_no, dept_code, dept_name, staff_no) VALUES (?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (dev) DO UPDATE SET window_no = coalesce(excluded.window_no, window_no), "
            "dept_code = coalesce(excluded.dept_code, dept_code), dept_name = coalesce(excluded.dept_name, "
            "dept_name), staff_no = coalesce(excluded.staff_no, staff_no)",
            (dev, self.config["gateway.hall"], *values)))
        self.gate.admit(dev)  # its first status may be on the way already
        return self.device(dev)

    def issue_credentials(self, dev: str) -> dict:
        """The device's broker account and command key, shown this once (provisioning writes them to it)."""
        try:
            issued = self.writer.call(lambda conn: brokerauth.issue(conn, dev))
        except brokerauth.UnknownDevice as e:
            raise NotFound(str(e)) from None
        except brokerauth.CredentialError as e:
            raise Conflict(str(e)) from None
        brokerauth.write_files(self.reader, self.config)
        self.gate.admit(dev, issued["command_key"])
        return issued

    def revoke(self, dev: str) -> dict:
        """Retire a device at once: its broker account goes, its messages are refused from now on."""
        if not self.writer.call(lambda conn: brokerauth.revoke(conn, dev, self.clock.now())):
            raise NotFound(f"no device {dev}")
        brokerauth.write_files(self.reader, self.config)
        self.gate.refresh()
        return self.device(dev)

    def configure(self, dev: str, changes: dict) -> dict:
        """Push a configuration (retained): the next version, with the window's standing QR filled in."""
        registered = self.device(dev)
        if registered["revoked_at"] is not None:
            raise Conflict(f"device {dev} is revoked")
        previous = json.loads(registered["config"] or "{}")
        message = {**{k: v for k, v in previous.items() if k not in ("v", "k", "ver")}, **changes,
                   "v": 1, "k": "config", "ver": (registered["config_sent"] or 0) + 1}
        if registered["window_no"] and "idle_qr" not in changes:
            url = self.config["api.public_url"].rstrip("/") + "/w/" + registered["window_no"]
            message["idle_qr"] = prompts.qr_matrix(url)
        try:
            payload = codec.encode(message)
        except codec.ProtocolError as e:
            raise InvalidInput(f"config: {e}", e.field) from None
        if len(payload) + codec.SIGNED_OVERHEAD > codec.MAX_MESSAGE:  # it goes out signed (protocol/codec.py)
            raise InvalidInput(f"config: {len(payload)} bytes leave no room for the device's mac; shorten the texts")
        self.writer.call(lambda conn: conn.execute("UPDATE devices SET config = ?, config_sent = ? WHERE dev = ?",
                                                   (payload.decode(), message["ver"], dev)))
        self.downlink.config(dev, payload)
        return self.device(dev)


def revoke_offline(path: Path, config: dict, dev: str, actor: str, now: float) -> None:
    """`hcp-gateway revoke`: retire a device from outside the running gateway, which notices within a second
    (the registry's generation moves); the broker reloads its accounts at once. NotFound if there is none."""
    database = db.connect(path)
    try:
        conn = database.conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            if not brokerauth.revoke(conn, dev, now):
                raise NotFound(f"no device {dev} in the registry")
            audit.append(conn, now, actor, "revoke_device", dev)
            conn.execute("COMMIT")
        finally:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
        brokerauth.write_files(database, config)
    finally:
        database.conn.close()
