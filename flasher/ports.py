"""Serial ports a technician may have a board on, with the board kind told by its USB ids."""
from __future__ import annotations

from dataclasses import dataclass

from serial.tools import list_ports

from flasher.repl import RawRepl, ReplError

# (vendor id, product id) -> what is on the other end
USB_KINDS = {
    (0x303A, 0x1001): "ESP32-S3 (native USB)",
    (0x303A, 0x4001): "ESP32-S3 (native USB, MicroPython)",
    (0x10C4, 0xEA60): "CP210x USB-UART bridge",
    (0x1A86, 0x7523): "CH340 USB-UART bridge",
    (0x1A86, 0x55D4): "CH9102 USB-UART bridge",
}


@dataclass
class Port:
    device: str
    kind: str
    description: str
    micropython: bool | None = None  # None: not probed


def kind_of(vid: int | None, pid: int | None) -> str:
    if vid is None:
        return "not USB"
    return USB_KINDS.get((vid, pid), f"unknown USB device {vid:04x}:{pid:04x}")


def scan(probe: bool = False) -> list[Port]:
    """The serial ports there are; with `probe`, whether each answers a MicroPython raw REPL."""
    found = []
    for info in sorted(list_ports.comports(), key=lambda p: p.device):
        port = Port(info.device, kind_of(info.vid, info.pid), info.description or "")
        if probe:
            port.micropython = answers_repl(info.device)
        found.append(port)
    return found


def answers_repl(url: str, timeout: float = 2.0) -> bool:
    try:
        repl = RawRepl(url, timeout=timeout)
    except ReplError:
        return False
    try:
        repl.enter()
        repl.port.write(b"\x02")  # back to the friendly REPL, as we found it
        return True
    except ReplError:
        return False
    finally:
        repl.close()
