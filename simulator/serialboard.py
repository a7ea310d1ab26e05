"""A board as a technician's laptop sees it over USB: MicroPython's REPL on a serial line, here the unix
port on a pseudo-terminal, bridged to a loopback TCP port (pyserial opens it as socket://127.0.0.1:PORT).

Its working directory plays the board's flash. At "power on" it runs main.py if there is one (Ctrl-C stops
it and leaves the REPL, as on a board); when MicroPython exits (Ctrl-D at the REPL, or a reset) the board
boots again.
"""
from __future__ import annotations

import fcntl
import os
import pty
import select
import socket
import subprocess
import termios
import threading
from pathlib import Path

from simulator import micropython


class SerialBoard:
    def __init__(self, flash: Path, heapsize: str = "512K"):
        self.flash = Path(flash)
        self.flash.mkdir(parents=True, exist_ok=True)
        self.heapsize = heapsize
        self.boots = 0
        self._listener = socket.socket()
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(1)
        self.port = self._listener.getsockname()[1]
        self.url = f"socket://127.0.0.1:{self.port}"
        self._stop = threading.Event()
        self._client: socket.socket | None = None
        self._master = -1
        self._proc: subprocess.Popen | None = None
        self._lock = threading.Lock()

    def start(self) -> "SerialBoard":
        self._boot()
        threading.Thread(target=self._accept, daemon=True, name="serial-accept").start()
        threading.Thread(target=self._pump, daemon=True, name="serial-pump").start()
        return self

    def stop(self) -> None:
        self._stop.set()
        with self._lock:
            if self._proc and self._proc.poll() is None:
                self._proc.kill()
                self._proc.wait()
        self._listener.close()
        if self._client:
            self._client.close()

    def _boot(self) -> None:
        # The line keeps its signal handling: Ctrl-C interrupts a running main.py as a board's USB REPL does
        # (MicroPython switches the line to raw mode itself while its REPL reads).
        master, slave = pty.openpty()
        attributes = termios.tcgetattr(slave)
        attributes[1] &= ~termios.OPOST  # bytes out as written: no \n -> \r\n, as on a USB serial line
        termios.tcsetattr(slave, termios.TCSANOW, attributes)
        script = ["-i", "main.py"] if (self.flash / "main.py").exists() else []
        env = micropython.environment([Path("."), Path("lib")])
        with self._lock:
            self._proc = subprocess.Popen(micropython.command(script, self.heapsize), stdin=slave, stdout=slave,
                                          stderr=slave, cwd=self.flash, env=env, close_fds=True,
                                          preexec_fn=_own_terminal)
            os.close(slave)
            if self._master >= 0:
                os.close(self._master)
            self._master = master
        self.boots += 1

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if self._client:
                self._client.close()
            self._client = client

    def _pump(self) -> None:
        """Bytes both ways between the TCP client and the pty; a new boot when MicroPython exits."""
        while not self._stop.is_set():
            master, client = self._master, self._client
            sources = [master] + ([client] if client else [])
            try:
                readable, _, _ = select.select(sources, [], [], 0.1)
            except (OSError, ValueError):
                continue
            if master in readable:
                try:
                    data = os.read(master, 4096)
                except OSError:
                    data = b""
                if not data:  # MicroPython exited: the board resets and boots again
                    if self._proc:
                        self._proc.wait()
                    if not self._stop.is_set():
                        self._boot()
                    continue
                if client:
                    try:
                        client.sendall(data)
                    except OSError:
                        self._client = None
            if client and client in readable:
                try:
                    data = client.recv(4096)
                except OSError:
                    data = b""
                if not data:
                    self._client = None
                    continue
                os.write(master, data)


def _own_terminal() -> None:
    """In the child: a session of its own with the pty as controlling terminal, so Ctrl-C reaches it."""
    os.setsid()
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)
