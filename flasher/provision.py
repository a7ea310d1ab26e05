"""Provisioning: a board gets its firmware and its site file, the gateway learns the device, the board
reboots and is seen online. One roster row a board; a batch goes through a roster and reports each row.

Secrets (Wi-Fi and MQTT passwords) go only into the board's site.json: never printed, never logged.
"""
from __future__ import annotations

import csv
import json
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from flasher import deploy
from flasher.repl import RawRepl, ReplError
from protocol import codec

PLATFORMS = {"esp32s3_tft": "esp32", "esp32s3_oled": "esp32", "sim": "linux"}  # roster board -> sys.platform
COLUMNS = ("device", "hall", "window", "dept_code", "staff_no", "broker", "broker_port", "wifi_ssid",
           "wifi_password", "mqtt_user", "mqtt_password", "board", "serial_port")
REQUIRED = ("device", "hall", "window", "broker")


class ProvisionError(RuntimeError):
    """A step failed; the message says which and why, without any secret."""


@dataclass
class Row:
    line: int
    values: dict

    def __getitem__(self, name: str) -> str:
        return self.values.get(name) or ""

    def site(self, credentials: dict | None = None) -> dict:
        """site.json for this row; `credentials` (from the gateway) give the broker account and command key."""
        site = {"device": self["device"], "hall": self["hall"], "broker": self["broker"],
                "port": int(self["broker_port"] or 1883), "board": self["board"] or "esp32s3_tft"}
        if self["mqtt_user"]:
            site.update(user=self["mqtt_user"], password=self["mqtt_password"])
        elif credentials:
            site.update(user=credentials["mqtt_user"], password=credentials["mqtt_password"],
                        command_key=credentials["command_key"])
        if self["wifi_ssid"]:
            site["wifi"] = {"ssid": self["wifi_ssid"], "password": self["wifi_password"]}
        return site


def read_roster(path: Path) -> list[Row]:
    """The roster's rows; ProvisionError names the line and the column of the first problem."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            unknown = set(reader.fieldnames or ()) - set(COLUMNS)
            if unknown:
                raise ProvisionError(f"{path}: unknown columns {sorted(unknown)}; expected {', '.join(COLUMNS)}")
            rows = [Row(number, {k: (v or "").strip() for k, v in values.items()})
                    for number, values in enumerate(reader, start=2)]
    except OSError as e:
        raise ProvisionError(f"cannot read roster {path}: {e}") from None
    for row in rows:
        for name in REQUIRED:
            if not row[name]:
                raise ProvisionError(f"{path} line {row.line}: {name} is empty")
        if codec.DEVICE(row["device"]) or codec.HALL(row["hall"]):
            raise ProvisionError(f"{path} line {row.line}: device and hall are 1-32 of A-Z a-z 0-9 _ -")
    return rows


class Gateway:
    """The gateway's device API, as a technician's tool calls it."""

    def __init__(self, url: str, key: str):
        self.url, self.key = url.rstrip("/"), key

    def call(self, method: str, path: str, body: dict | None = None) -> dict:
        request = urllib.request.Request(self.url + path, method=method,
                                         data=json.dumps(body).encode() if body is not None else None,
                                         headers={"Authorization": f"Bearer {self.key}",
                                                  "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as e:
            raise ProvisionError(f"gateway refused {method} {path}: HTTP {e.code} {e.read()[:200]!r}") from None
        except OSError as e:
            raise ProvisionError(f"cannot reach the gateway at {self.url}: {e}") from None

    def register(self, row: Row) -> None:
        body = {"window_no": row["window"], "staff_no": row["staff_no"] or None, "dept_code": row["dept_code"] or None}
        self.call("PUT", f"/api/v1/devices/{row['device']}", body)

    def credentials(self, device: str) -> dict:
        """The device's broker account and command key, issued now (any earlier ones stop working)."""
        return self.call("POST", f"/api/v1/devices/{device}/credentials")

    def wait_online(self, device: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for entry in self.call("GET", "/api/v1/devices")["devices"]:
                if entry["dev"] == device and entry["state"] == "online" and entry["last_seen"]:
                    return
            time.sleep(0.5)
        raise ProvisionError(f"{device} never came online at the gateway within {timeout:.0f} s "
                             "(check Wi-Fi, broker address and credentials)")


def provision(url: str, row: Row, tree: Path | None, gateway: Gateway | None, wait_s: float = 60,
              progress=lambda name, done, total: None, ca: Path | None = None) -> str:
    """Deploy (when `tree` is given), register, write the site file (with the broker account and command key
    the gateway issues, and the hall CA when `ca` is given), reboot, wait online. Returns a summary."""
    repl = RawRepl(url)
    try:
        repl.enter()
        platform = repl.exec("import sys\nprint(sys.platform)").decode().strip()
        board = row["board"] or "esp32s3_tft"
        if PLATFORMS.get(board, platform) != platform:
            raise ProvisionError(f"wrong board kind: the roster says {board}, the board runs MicroPython for "
                                 f"{platform}")
        sent = deploy.deploy(repl, tree, progress).sent if tree else None
        credentials = None
        if gateway:
            gateway.register(row)
            if not row["mqtt_user"]:  # the hall's broker accounts are the gateway's to issue
                credentials = gateway.credentials(row["device"])
        site = row.site(credentials)
        if ca:  # the board trusts the hall CA and talks TLS to the broker
            repl.exec(f"f = open('ca.der', 'wb')\nf.write({Path(ca).read_bytes()!r})\nf.close()")
            site["ca"] = "ca.der"
        text = json.dumps(site)
        repl.exec(f"f = open('site.json.new', 'w')\nf.write({text!r})\nf.close()\n"
                  "import os\nos.rename('site.json.new', 'site.json')")
        repl.soft_reboot()
    finally:
        repl.close()
    if gateway and wait_s:
        gateway.wait_online(row["device"], wait_s)
    return (f"{len(sent)} files sent, " if sent is not None else "") + ("online" if gateway and wait_s else "done")


def batch(rows: list[Row], port_of, tree: Path | None, gateway: Gateway | None, wait_s: float = 60,
          before_each=lambda row: None, ca: Path | None = None) -> list[tuple[Row, bool, str]]:
    """Provision row after row; a failure is recorded and the batch goes on. Returns (row, ok, why)."""
    outcomes = []
    for row in rows:
        before_each(row)
        try:
            outcomes.append((row, True, provision(port_of(row), row, tree, gateway, wait_s, ca=ca)))
        except (ProvisionError, ReplError, OSError) as e:
            outcomes.append((row, False, str(e)))
    return outcomes
