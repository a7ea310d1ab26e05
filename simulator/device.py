"""One evaluator running the real firmware on the MicroPython unix port, driven the way a person would.

The host listens on a loopback port; the firmware's simulated board (firmware/boards/sim.py) connects to
it, takes button levels and network plugs from it, and reports every frame it shows. Its flash is a folder.
"""
from __future__ import annotations

import base64
import json
import queue
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

from PIL import Image

from simulator import leash, micropython

RESET_EXIT = 75  # firmware/boards/sim.py: the board asked to be reset


class DeviceError(RuntimeError):
    """The device did not start, answer or show what was expected in time."""


class SimDevice:
    def __init__(self, workdir: Path, firmware: Path, device: str, hall: str, broker_port: int,
                 heapsize: str = "192K", size: tuple[int, int] = (320, 240), site_extra: dict | None = None):
        self.flash = Path(workdir)
        self.firmware = Path(firmware).resolve()
        self.device, self.hall = device, hall
        self.heapsize = heapsize
        self.size = size
        self.flash.mkdir(parents=True, exist_ok=True)
        site = {"device": device, "hall": hall, "broker": "127.0.0.1", "port": broker_port, **(site_extra or {})}
        (self.flash / "site.json").write_text(json.dumps(site))
        font = self.flash / "font.bin"
        if not font.exists():
            font.symlink_to(self.firmware / "font.bin")
        self.frames: list[dict] = []  # every frame shown: {"frame", "kind", "t", "host_t"}
        self.prompts: list[int] = []  # the frame of each prompt that arrived (it lit the LED); this boot
        self.events: queue.Queue = queue.Queue()
        self._screens: queue.Queue = queue.Queue()
        self._pieces: list[bytes] = []
        self._frame_seen = threading.Condition()
        self._send_lock = threading.Lock()  # presses, plugs and screen requests come from several threads
        self._power = threading.RLock()  # switching on and off, from several threads: one process at a time
        self.proc: subprocess.Popen | None = None
        self._conn: socket.socket | None = None
        self.boots = 0
        self.plugged = True  # the network cable: it stays out across power cuts

    # ---- power ----

    def start(self, timeout: float = 20) -> "SimDevice":
        """Switch on. DeviceError if it is on already: one process per device, none lost."""
        with self._power:
            if self.running:
                raise DeviceError(f"{self.device} is on already (pid {self.proc.pid})")
            return self._boot(timeout)

    def switch_on(self) -> None:
        """Switch on unless it is on (when two power cuts overlap, both end)."""
        with self._power:
            if not self.running:
                self._boot(20)

    def _boot(self, timeout: float) -> "SimDevice":
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        listener.settimeout(timeout)
        env = micropython.environment([self.firmware, self.firmware / "lib"])
        env.update(HCP_SIM_CONTROL=str(listener.getsockname()[1]), HCP_SIM_FLASH=str(self.flash),
                   HCP_SIM_WIDTH=str(self.size[0]), HCP_SIM_HEIGHT=str(self.size[1]))
        self._log = open(self.flash / "console.log", "ab")
        self.proc = subprocess.Popen(micropython.command([str(self.firmware / "main.py")], self.heapsize),
                                     env=env, stdout=self._log, stderr=subprocess.STDOUT, cwd=self.flash,
                                     **leash.options())
        try:
            self._conn, _ = listener.accept()
        except OSError:
            self.power_cut()
            raise DeviceError(f"{self.device} did not start: {self.console()[-2000:]}") from None
        finally:
            listener.close()
        self._conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with self._frame_seen:
            self.boots += 1
            self.frames, self.prompts = [], []  # frame numbers start again at each boot
            self._frame_seen.notify_all()
        threading.Thread(target=self._read, args=(self._conn, self.proc), name=f"sim-{self.device}",
                         daemon=True).start()
        if not self.plugged:
            self._send({"net": False})
        return self

    def power_cut(self) -> None:
        """SIGKILL: the process dies mid-whatever, as a board does when its power goes."""
        with self._power:
            if self.proc and self.proc.poll() is None:
                self.proc.send_signal(signal.SIGKILL)
                self.proc.wait()
            self._close()

    def stop(self) -> None:
        self.power_cut()

    def console(self) -> str:
        path = self.flash / "console.log"
        return path.read_text(errors="replace") if path.exists() else ""

    # ---- what a person does ----

    def press(self, button: int, hold_ms: int = 120, bounce: int = 0) -> float:
        """Press and release a button (0 = 非常满意 ... 4 = 非常不满意); return the host time it went down.

        `bounce` adds that many contact bounces (1 ms apart) on the way down and up, as a real switch has.
        """
        for _ in range(bounce):
            self._send({"button": button, "down": True})
            time.sleep(0.001)
            self._send({"button": button, "down": False})
            time.sleep(0.001)
        down_at = time.monotonic()
        self._send({"button": button, "down": True})
        time.sleep(hold_ms / 1000)
        for _ in range(bounce):
            self._send({"button": button, "down": False})
            time.sleep(0.001)
            self._send({"button": button, "down": True})
            time.sleep(0.001)
        self._send({"button": button, "down": False})
        return down_at

    def press_until(self, button: int, kinds: tuple[str, ...], after: int, timeout: float = 10,
                    hold_ms: int = 120) -> dict:
        """Press a button and keep it down until the screen answers with a frame of one of `kinds` (shown after
        frame `after`), at least `hold_ms`; return that frame. As a person does: a press the evaluator did not
        seem to notice is held, not repeated. (The firmware polls its buttons every few ms; on a host short of
        CPU its process can sleep through a short press whose down and up then arrive together.)"""
        boot = self.boots
        self._send({"button": button, "down": True})
        try:
            time.sleep(hold_ms / 1000)
            return self.wait_frame(kinds, after=after, timeout=timeout, boot=boot)
        finally:
            try:
                self._send({"button": button, "down": False})
            except (DeviceError, OSError):
                pass  # the power or the device went meanwhile: nothing left to release

    def unplug(self) -> None:
        self.plugged = False
        if self.running:
            self._send({"net": False})

    def replug(self) -> None:
        self.plugged = True
        if self.running:
            self._send({"net": True})

    # ---- what a person sees ----

    def screenshot(self, timeout: float = 10) -> Image.Image:
        while not self._screens.empty():
            self._screens.get_nowait()
        self._send({"screen": 1})
        try:
            shot = self._screens.get(timeout=timeout)
        except queue.Empty:
            raise DeviceError(f"{self.device} sent no screen") from None
        data = shot["data"]
        width, height = shot["width"], shot["height"]
        pixels = bytearray()
        for byte in data:  # GS4_HMSB: the high nibble is the left pixel
            pixels += bytes((byte >> 4, byte & 0x0F))
        image = Image.frombytes("P", (width, height), bytes(pixels))
        palette = []
        for rgb in shot["palette"]:
            palette += [(rgb >> 16) & 0xFF, (rgb >> 8) & 0xFF, rgb & 0xFF]
        image.putpalette(palette)
        return image.convert("RGB")

    def wait_frame(self, kind: str | tuple[str, ...] | None, after: int = 0, timeout: float = 10,
                   boot: int | None = None) -> dict:
        """The first frame of `kind` (or of one of several kinds; None: of any kind) shown after frame number
        `after`. With `boot` (the number of boots, as `mark` gives it), only a frame of that boot will do: when
        the device has started again meanwhile (frame numbers start again at each boot), DeviceError at once."""
        kinds = (kind,) if isinstance(kind, str) else kind
        deadline = time.monotonic() + timeout
        with self._frame_seen:
            while True:
                if boot is not None and boot != self.boots:
                    raise DeviceError(f"{self.device} started again before it showed {kind}")
                for frame in self.frames:
                    if frame["frame"] > after and (kinds is None or frame["kind"] in kinds):
                        return frame
                left = deadline - time.monotonic()
                if left <= 0:
                    shown = [f["kind"] for f in self.frames[-5:]]
                    raise DeviceError(f"{self.device} did not show {kind} (last: {shown})")
                self._frame_seen.wait(left)

    def mark(self) -> tuple[int, int]:
        """Where the device is now, for `wait_prompt` and `wait_frame`: (boots so far, its last frame)."""
        with self._frame_seen:
            return self.boots, self.frames[-1]["frame"] if self.frames else 0

    def wait_prompt(self, since: tuple[int, int], timeout: float = 10) -> int:
        """The frame of the first prompt that arrived after `since` (a `mark`): a prompt message was received,
        drawn, and lit the LED. The once-a-second countdown redraws of a prompt already shown do not count, so a
        new prompt is told from the old one it replaces."""
        boot, after = since
        deadline = time.monotonic() + timeout
        with self._frame_seen:
            while True:
                later = [frame for frame in self.prompts if self.boots != boot or frame > after]
                if later:
                    return later[0]
                left = deadline - time.monotonic()
                if left <= 0:
                    raise DeviceError(f"{self.device} showed no new prompt in {timeout:g} s")
                self._frame_seen.wait(left)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def last_frame(self) -> int:
        with self._frame_seen:
            return self.frames[-1]["frame"] if self.frames else 0

    # ---- the control link ----

    def _send(self, message: dict) -> None:
        if self._conn is None:
            raise DeviceError(f"{self.device} is not running")
        with self._send_lock:
            self._conn.sendall(json.dumps(message).encode() + b"\n")

    def _read(self, conn: socket.socket, proc: subprocess.Popen) -> None:
        buffer = b""
        while True:
            try:
                chunk = conn.recv(65536)
            except OSError:
                chunk = b""
            if not chunk:
                if proc.wait() == RESET_EXIT and self._conn is conn:  # the board reset itself: boot again
                    self._close()
                    self.start()
                return
            buffer += chunk
            while b"\n" in buffer:
                line, buffer = buffer.split(b"\n", 1)
                self._handle(json.loads(line), time.monotonic())

    def _handle(self, message: dict, at: float) -> None:
        if "frame" in message:
            with self._frame_seen:
                self.frames.append({**message, "host_t": at})
                self._frame_seen.notify_all()
        elif message.get("led"):  # the application lights the LED when a prompt arrives, just after drawing it
            with self._frame_seen:
                self.prompts.append(self.frames[-1]["frame"] if self.frames else 0)
                self._frame_seen.notify_all()
            self.events.put(message)
        elif "screen_piece" in message:
            self._pieces.append(base64.b64decode(message["screen_piece"]))
        elif "screen" in message:
            pieces, self._pieces = self._pieces, []
            self._screens.put({**message["screen"], "data": b"".join(pieces)})
        else:
            self.events.put(message)

    def _close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()
        if getattr(self, "_log", None):
            self._log.close()
            self._log = None

