"""A private Mosquitto broker on loopback, for the demo, the simulator and the tests."""
from __future__ import annotations

import getpass
import shutil
import socket
import subprocess
import time
from pathlib import Path

from simulator import leash

REPO = Path(__file__).resolve().parent.parent
GATEWAY_SETTINGS = REPO / "gateway" / "mosquitto.conf"


def gateway_settings() -> tuple[str, ...]:
    """The broker settings the gateway relies on, as shipped in gateway/mosquitto.conf."""
    lines = GATEWAY_SETTINGS.read_text().splitlines()
    return tuple(line for line in lines if line.strip() and not line.startswith("#"))


class BrokerError(RuntimeError):
    """The broker could not be found or started."""


def find_program(name: str) -> str:
    """Locate a system program, looking in /usr/sbin too (where Debian puts mosquitto)."""
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/local/sbin")
    if not found:
        raise BrokerError(f"{name} is not installed; run `make test` or `apt-get install mosquitto mosquitto-clients`")
    return found


def stop_process(proc: subprocess.Popen | None, timeout: float) -> None:
    """SIGTERM (a clean stop), and SIGKILL if it has not ended within `timeout` seconds."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, timeout: float, proc: subprocess.Popen | None = None) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            return False
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return True
        except OSError:
            time.sleep(0.02)
    return False


class Broker:
    """One mosquitto process with its own config, persistence and log in `workdir`.

    `settings` are mosquitto.conf lines; by default the gateway's (gateway/mosquitto.conf).
    The port stays the same across restart(), so clients can reconnect.
    """

    def __init__(self, workdir: Path, port: int | None = None, settings: tuple[str, ...] | None = None,
                 accounts: tuple[Path, Path] | None = None, tls: dict | None = None):
        self.workdir = Path(workdir)
        self.accounts = accounts  # (password_file, acl_file): no anonymous clients, each account its topics
        self.pid_path = self.workdir / "mosquitto.pid"  # the gateway signals this pid to reload accounts
        self.tls = tls  # the hall CA's files (gateway/hallca.py): the listener speaks TLS only
        self.port = port or free_port()
        self.settings = gateway_settings() if settings is None else settings
        self.proc: subprocess.Popen | None = None
        self.log_path = self.workdir / "mosquitto.log"

    @property
    def conf_path(self) -> Path:
        return self.workdir / "mosquitto.conf"

    def write_config(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        lines = [
            f"listener {self.port} 127.0.0.1",
            *((f"cafile {self.tls['ca']}", f"certfile {self.tls['certfile']}", f"keyfile {self.tls['keyfile']}",
               "tls_version tlsv1.2") if self.tls else ()),
            *(("allow_anonymous false", f"password_file {self.accounts[0]}", f"acl_file {self.accounts[1]}",
                "use_username_as_clientid true") if self.accounts else ("allow_anonymous true",)),
            # Run as whoever started it: as root, mosquitto would switch to its own user, which can neither write
            # the log and persistence in this folder nor read the account files the gateway keeps.
            f"user {getpass.getuser()}",
            f"persistence_location {self.workdir}/",
            f"log_dest file {self.log_path}",
            "log_type error",
            "log_type warning",
            "log_type notice",
            *self.settings,
        ]
        self.conf_path.write_text("\n".join(lines) + "\n")

    def start(self, timeout: float = 10.0) -> "Broker":
        self.write_config()
        self.proc = subprocess.Popen(
            [find_program("mosquitto"), "-c", str(self.conf_path)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            cwd=self.workdir,
            **leash.options(),
        )
        if not wait_for_port(self.port, timeout, self.proc):
            self.stop()
            raise BrokerError(f"mosquitto did not start on port {self.port}: {self.log_tail()}")
        self.pid_path.write_text(str(self.proc.pid))
        return self

    def stop(self) -> None:
        """Stop cleanly: mosquitto saves its persistent sessions and queues on SIGTERM."""
        stop_process(self.proc, 10)
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def log_tail(self, lines: int = 20) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        if self.proc and self.proc.stderr and self.proc.poll() is not None:
            text += self.proc.stderr.read().decode(errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    def __enter__(self) -> "Broker":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

