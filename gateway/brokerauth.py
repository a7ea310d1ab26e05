"""The hall broker's accounts: one per device and one for the gateway, kept by the gateway.

Credentials are issued at provisioning (a random broker password and a command key, shown once); the
registry keeps only the password's hash (Mosquitto's PBKDF2-SHA512 form) and the key. From the registry the
gateway writes Mosquitto's `password_file` and `acl_file` and makes the broker reload them (SIGHUP):

- a device may publish only to hcp/v1/{hall}/{its id}/up/+ and read only hcp/v1/{hall}/{its id}/down/+;
- the gateway's account reads and writes the hall's tree;
- a revoked device has no account: its connection is refused.

The broker must run with `use_username_as_clientid true`, so no one can take another device's session.
"""
from __future__ import annotations

import base64
import hashlib
import logging
import os
import secrets
import signal
import sqlite3
from pathlib import Path

log = logging.getLogger("gateway.brokerauth")
PBKDF2_ITERATIONS = 101  # what mosquitto_passwd writes for $7$ entries


class CredentialError(ValueError):
    """A device that may not have credentials (revoked)."""


class UnknownDevice(CredentialError):
    """No such device in the registry."""


def mosquitto_hash(password: str, salt: bytes | None = None) -> str:
    """A password_file hash: $7$ITERATIONS$SALT$PBKDF2-SHA512, both base64."""
    salt = salt or os.urandom(12)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, PBKDF2_ITERATIONS, 64)
    return f"$7${PBKDF2_ITERATIONS}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def issue(conn: sqlite3.Connection, dev: str) -> dict:
    """New credentials for a registered device (replacing any before): returned once, the password not kept."""
    row = conn.execute("SELECT revoked_at FROM devices WHERE dev = ?", (dev,)).fetchone()
    if row is None:
        raise UnknownDevice(f"no device {dev}; register it first")
    if row[0] is not None:
        raise CredentialError(f"device {dev} is revoked; register it under a new id")
    password, command_key = secrets.token_urlsafe(18), secrets.token_hex(16)
    conn.execute("UPDATE devices SET mqtt_hash = ?, command_key = ? WHERE dev = ?",
                 (mosquitto_hash(password), command_key, dev))
    return {"mqtt_user": dev, "mqtt_password": password, "command_key": command_key}


def revoke(conn: sqlite3.Connection, dev: str, now: float) -> bool:
    """Retire a device (stolen, broken): no account, no command key. False if there is no such device."""
    return conn.execute("UPDATE devices SET revoked_at = coalesce(revoked_at, ?), mqtt_hash = NULL, "
                        "command_key = NULL WHERE dev = ?", (now, dev)).rowcount == 1


def render(rows: list[tuple[str, str]], hall: str, gateway_user: str, gateway_password: str) -> tuple[str, str]:
    """The password file and ACL for devices [(dev, mqtt_hash)] and the gateway's own account."""
    passwords = [f"{gateway_user}:{mosquitto_hash(gateway_password)}"]
    passwords += [f"{dev}:{digest}" for dev, digest in rows]
    acl = [f"user {gateway_user}", f"topic readwrite hcp/v1/{hall}/#", "",
           "# every other account is a device: its own up topics to write, its own down topics to read",
           f"pattern write hcp/v1/{hall}/%u/up/+", f"pattern read hcp/v1/{hall}/%u/down/+"]
    return "\n".join(passwords) + "\n", "\n".join(acl) + "\n"


def write_files(reader, config: dict) -> bool:
    """Write the broker's password file and ACL from the registry and make the broker reload them.
    False when the gateway is not set to manage the broker's accounts (broker.password_file empty)."""
    password_path, acl_path = config["broker.password_file"], config["broker.acl_file"]
    if not password_path:
        return False
    rows = reader.execute("SELECT dev, mqtt_hash FROM devices WHERE mqtt_hash IS NOT NULL AND revoked_at IS NULL "
                          "ORDER BY dev").fetchall()
    passwords, acl = render(rows, config["gateway.hall"], config["mqtt.username"], config["mqtt.password"])
    for path, text in ((password_path, passwords), (acl_path, acl)):
        _replace(Path(path), text)
    _reload(config["broker.pid_file"])
    log.info("broker accounts written: %d devices", len(rows))
    return True


def _replace(path: Path, text: str) -> None:
    """Write the whole file or nothing: the broker never reads half of it."""
    part = path.with_name(path.name + ".part")
    fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)
        out.flush()
        os.fsync(out.fileno())
    os.replace(part, path)


def _reload(pid_file: str) -> None:
    if not pid_file:
        return
    try:
        os.kill(int(Path(pid_file).read_text().strip()), signal.SIGHUP)
    except (OSError, ValueError) as e:
        log.error("could not make the broker reload its accounts (pid file %s): %s", pid_file, e)
