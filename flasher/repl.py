"""MicroPython's raw REPL over a serial line (pyserial: a USB port, or socket://host:port for a bridge)."""
from __future__ import annotations

import time

import serial

CTRL_A, CTRL_B, CTRL_C, CTRL_D = b"\x01", b"\x02", b"\x03", b"\x04"


class ReplError(RuntimeError):
    """The board did not answer as a MicroPython REPL, or the code run there failed (its traceback follows)."""


class RawRepl:
    def __init__(self, url: str, timeout: float = 10.0):
        try:
            self.port = serial.serial_for_url(url, baudrate=115200, timeout=0.05)
        except (serial.SerialException, OSError) as e:
            raise ReplError(f"cannot open {url}: {e}") from None
        self.url = url
        self.timeout = timeout

    def close(self) -> None:
        self.port.close()

    def enter(self) -> None:
        """Interrupt whatever runs and switch to the raw REPL."""
        self._write(b"\r" + CTRL_C + CTRL_C)
        time.sleep(0.1)
        self.port.reset_input_buffer()
        self._write(b"\r" + CTRL_A)
        self._read_until(b"raw REPL; CTRL-B to exit\r\n>", "no MicroPython raw REPL answered")

    def exec(self, code: str, timeout: float | None = None) -> bytes:
        """Run code on the board; return what it printed, or raise ReplError with the board's traceback."""
        self._write(code.encode() + CTRL_D)
        self._read_until(b"OK", "the board did not accept the code", timeout)
        out = self._read_until(CTRL_D, "the code did not finish", timeout)[:-1]
        error = self._read_until(CTRL_D, "no error report", timeout)[:-1]
        self._read_until(b">", "no prompt after the code", timeout)
        if error:
            raise ReplError(error.decode(errors="replace").strip())
        return out

    def soft_reboot(self) -> None:
        """Leave the raw REPL and restart the board's MicroPython, which then runs boot.py and main.py."""
        self._write(CTRL_B)
        time.sleep(0.1)
        self._write(CTRL_D)

    def _write(self, data: bytes) -> None:
        try:
            self.port.write(data)
        except (serial.SerialException, OSError) as e:
            raise ReplError(f"lost the board on {self.url}: {e}") from None

    def _read_until(self, marker: bytes, what: str, timeout: float | None = None) -> bytes:
        data = b""
        deadline = time.monotonic() + (timeout or self.timeout)
        while not data.endswith(marker):
            try:
                chunk = self.port.read(max(1, self.port.in_waiting))
            except (serial.SerialException, OSError) as e:
                raise ReplError(f"lost the board on {self.url}: {e}") from None
            data += chunk
            if not chunk and time.monotonic() > deadline:
                raise ReplError(f"{what} on {self.url} (got {data[-120:]!r})")
        return data
