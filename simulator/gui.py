"""`hcp-sim gui`: the desktop simulator. A hall on one screen.

Evaluators side by side, each the real firmware on the MicroPython unix port through the simulated board:
its screen at true pixel size (zoomable), the five buttons (click them, or keys 1-5 for the device last
clicked), the status LED, and what a technician does: pull and plug the network cable, cut and restore
power, and 办结 (a case finished, reported through the gateway's case API as the window system does). The
side panel shows what the gateway and the province hold. Labels are Chinese: hall staff read them.
"""
from __future__ import annotations

import base64
import concurrent.futures
import io
import os
import queue
import signal
import sys
import tempfile
import time
import tkinter as tk
from pathlib import Path

from protocol import codec
from simulator.demo import firmware_tree
from simulator.device import DeviceError, SimDevice
from simulator.hall import Hall

LED_COLOURS = {True: "#2ecc40", False: "#444444"}
REFRESH_MS = 100


class DevicePanel(tk.LabelFrame):
    """One evaluator: screen, LED, five buttons, network, power and 办结."""

    def __init__(self, master, app: "Simulator", device: SimDevice, window_no: str):
        super().__init__(master, text=f"窗口 {window_no} · 评价器 {device.device}", padx=6, pady=6)
        self.app, self.device, self.window_no = app, device, window_no
        self.shown_frame = -1
        self.photo: tk.PhotoImage | None = None
        self.screen = tk.Label(self, bd=0, bg="black")
        self.screen.grid(row=0, column=0, columnspan=5)
        self.led = tk.Canvas(self, width=18, height=18, highlightthickness=0)
        self.led_dot = self.led.create_oval(2, 2, 16, 16, fill=LED_COLOURS[False])
        self.led.grid(row=1, column=0, sticky="w", pady=4)
        self.state = tk.Label(self, text="启动中", anchor="w")
        self.state.grid(row=1, column=1, columnspan=4, sticky="w")
        self.buttons = []
        for index, label in enumerate(codec.LEVEL_LABELS):
            button = tk.Button(self, text=f"{index + 1} {label}", width=9,
                               command=lambda i=index: app.press(self, i))
            button.grid(row=2, column=index, padx=1)
            self.buttons.append(button)
        self.finish = tk.Button(self, text="办结", command=lambda: app.finish_case(self))
        self.finish.grid(row=3, column=0, pady=4, sticky="we")
        self.network = tk.Button(self, text="拔网线", command=lambda: app.toggle_network(self))
        self.network.grid(row=3, column=1, sticky="we")
        self.power = tk.Button(self, text="断电", command=lambda: app.toggle_power(self))
        self.power.grid(row=3, column=2, sticky="we")
        self.note = tk.Label(self, text="", anchor="w", fg="#555555")
        self.note.grid(row=4, column=0, columnspan=5, sticky="we")
        self.plugged = True
        for widget in (self, self.screen):
            widget.bind("<Button-1>", lambda _e: app.focus(self))

    def show(self, png: bytes, zoom: int) -> None:
        photo = tk.PhotoImage(data=base64.b64encode(png).decode())
        self.photo = photo.zoom(zoom) if zoom > 1 else photo
        self.screen.configure(image=self.photo)

    def light(self, lit: bool) -> None:
        self.led.itemconfigure(self.led_dot, fill=LED_COLOURS[lit])


class Simulator:
    """The window and its wiring to the hall; device and HTTP calls run on worker threads, never Tk's."""

    def __init__(self, root: tk.Tk, hall: Hall, devices: list[tuple[SimDevice, str]], zoom: int = 1):
        self.root, self.hall, self.zoom = root, hall, zoom
        self.work = concurrent.futures.ThreadPoolExecutor(8, "gui-work")
        self.updates: queue.Queue = queue.Queue()  # callables for the Tk thread
        self.cases = 0
        root.title("政务服务“好差评”评价器模拟器")
        hall_frame = tk.Frame(root)
        hall_frame.pack(side="left", fill="both", padx=6, pady=6)
        self.panels = []
        for column, (device, window_no) in enumerate(devices):
            panel = DevicePanel(hall_frame, self, device, window_no)
            panel.grid(row=column // 3, column=column % 3, padx=4, pady=4, sticky="n")
            self.panels.append(panel)
        self.focused = self.panels[0]
        side = tk.LabelFrame(root, text="网关与省级系统", padx=6, pady=6)
        side.pack(side="right", fill="both", expand=True, padx=6, pady=6)
        self.figures = tk.Label(side, text="", justify="left", anchor="nw", font=("TkFixedFont", 10))
        self.figures.pack(fill="x")
        self.recent = tk.Text(side, width=44, height=24, font=("TkFixedFont", 10))
        self.recent.pack(fill="both", expand=True)
        zoom_row = tk.Frame(side)
        zoom_row.pack(fill="x")
        tk.Label(zoom_row, text="屏幕缩放").pack(side="left")
        self.zoom_choice = tk.IntVar(value=zoom)
        for factor in (1, 2, 3):
            tk.Radiobutton(zoom_row, text=f"{factor}×", value=factor, variable=self.zoom_choice,
                           command=lambda f=factor: self.set_zoom(f)).pack(side="left")
        for key in "12345":
            root.bind(f"<Key-{key}>", lambda _e, i=int(key) - 1: self.press(self.focused, i))
        root.after(REFRESH_MS, self._refresh)
        root.after(0, self._side_panel)

    # ---- what the technician does ----

    def focus(self, panel: DevicePanel) -> None:
        self.focused = panel
        for other in self.panels:
            other.configure(fg="black")
        panel.configure(fg="#0074d9")

    def press(self, panel: DevicePanel, button: int) -> None:
        self.focus(panel)
        self._later(panel, lambda: panel.device.press(button))

    def finish_case(self, panel: DevicePanel) -> None:
        self.cases += 1
        case_ref = f"GUI{time.strftime('%m%d%H%M%S')}{self.cases:03d}"

        def report():
            answer = self.hall.finish_case(case_ref, panel.window_no, retry_s=5)
            return f"办件 {case_ref} 已办结" + ("" if answer["prompted"] else "(评价器离线)")
        self._later(panel, report)

    def toggle_network(self, panel: DevicePanel) -> None:
        panel.plugged = not panel.plugged
        panel.network.configure(text="拔网线" if panel.plugged else "接网线")
        self._later(panel, panel.device.replug if panel.plugged else panel.device.unplug)

    def toggle_power(self, panel: DevicePanel) -> None:
        if panel.device.running:
            panel.power.configure(text="上电")
            self._later(panel, panel.device.power_cut)
        else:
            panel.power.configure(text="断电")
            panel.shown_frame = -1
            self._later(panel, panel.device.start)

    def set_zoom(self, factor: int) -> None:
        self.zoom = factor
        for panel in self.panels:
            panel.shown_frame = -1

    # ---- keeping the window current ----

    def _later(self, panel: DevicePanel, action) -> None:
        """Run `action` on a worker; show its text, or its failure, under the device."""
        def run():
            try:
                said = action()
            except (DeviceError, OSError) as e:
                said = f"失败: {e}"
            if isinstance(said, str):
                self.updates.put(lambda: panel.note.configure(text=said))
        self.work.submit(run)

    def _refresh(self) -> None:
        """Apply what the workers prepared and follow the devices, every REFRESH_MS. It always comes round
        again, whatever one round raised: its timer is also what lets Tk's loop return to Python, where a
        SIGTERM (or Ctrl-C) takes effect."""
        try:
            self._refresh_once()
        finally:
            self.root.after(REFRESH_MS, self._refresh)

    def _refresh_once(self) -> None:
        while not self.updates.empty():
            self.updates.get_nowait()()
        for panel in self.panels:
            device = panel.device
            while not device.events.empty():
                event = device.events.get_nowait()
                if "led" in event:
                    panel.light(event["led"])
            state = ("运行中" if device.running else "已断电") + ("" if panel.plugged else " · 断网")
            panel.state.configure(text=state)
            frame = device.last_frame
            if device.running and frame != panel.shown_frame:
                panel.shown_frame = frame
                self.work.submit(self._grab, panel)

    def _grab(self, panel: DevicePanel) -> None:
        try:
            image = panel.device.screenshot(timeout=5)
        except (DeviceError, OSError):
            return
        png = io.BytesIO()
        image.save(png, "PNG")
        self.updates.put(lambda: panel.show(png.getvalue(), self.zoom))

    def _side_panel(self) -> None:
        try:
            self.work.submit(self._read_hall)
        finally:
            self.root.after(1000, self._side_panel)

    def _read_hall(self) -> None:
        try:
            q = self.hall.query
            ratings = q("SELECT received_at, origin, channel, level, coalesce(case_ref, '') FROM ratings "
                        "ORDER BY id DESC LIMIT 12")
            (pending,), = q("SELECT count(*) FROM outbox WHERE state = 'pending'")
            (dead,), = q("SELECT count(*) FROM outbox WHERE state = 'dead'")
            devices = q("SELECT dev, state, outbox FROM devices ORDER BY dev")
        except Exception:  # noqa: BLE001 - the database may not exist yet, or be busy: try again next second
            return
        province = self.hall.province.count()
        figures = (f"网关待上报: {pending}   死信: {dead}   省级已收: {province}\n"
                   + "\n".join(f"{dev}: {'在线' if state == 'online' else '离线'}  设备待发: {outbox or 0}"
                               for dev, state, outbox in devices))
        channel = {"device": "评价器", "qr": "扫码", "default": "默认"}
        lines = [f"{time.strftime('%H:%M:%S', time.localtime(at))} {channel.get(ch, ch)} "
                 f"{codec.LEVEL_LABELS[codec.LEVELS.index(level)]} {origin} {case}"
                 for at, origin, ch, level, case in ratings]

        def show():
            self.figures.configure(text=figures)
            self.recent.delete("1.0", "end")
            self.recent.insert("end", "最近评价\n" + "\n".join(lines))
        self.updates.put(show)

    def close(self) -> None:
        self.work.shutdown(wait=False, cancel_futures=True)
        for panel in self.panels:
            panel.device.stop()


def open_hall(workdir: Path, devices: int) -> tuple[Hall, list[tuple[SimDevice, str]]]:
    """Start a hall and `devices` real-firmware evaluators, registered at windows A01, A02, ..."""
    hall = Hall(workdir / "hall").start()
    firmware = firmware_tree(workdir)
    started = []
    for n in range(devices):
        dev, window_no = f"F{n + 1:03d}", f"A{n + 1:02d}"
        hall.register(dev, window_no)
        key = hall.credentials(dev)["command_key"]  # the device obeys only what the gateway signs with it
        hall.call("PUT", f"/api/v1/devices/{dev}/config", {"window": window_no})  # its idle screen names it
        device = SimDevice(workdir / "devices" / dev, firmware, dev, hall.hall, hall.broker.port,
                           site_extra={"command_key": key})
        started.append((device.start(), window_no))
    return hall, started


def _wake_on_signals(root: tk.Tk) -> None:
    """Let a signal wake Tk's loop: Python runs a signal's handler (SIGTERM: exit) only once Tk returns to it,
    and Tk, waiting for its next event, would not; the signal's byte on the wake-up pipe is such an event."""
    readable, writable = os.pipe()
    os.set_blocking(writable, False)
    signal.set_wakeup_fd(writable)
    root.tk.createfilehandler(readable, tk.READABLE, lambda *_: os.read(readable, 512))


def run(devices: int = 3, workdir: Path | None = None, zoom: int = 1, say=print) -> None:
    """Open the simulator window until it is closed."""
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(workdir) if workdir else Path(tmp)
        hall, started = open_hall(work, devices)
        terminated = []
        try:
            root = tk.Tk()
            _wake_on_signals(root)
            app = Simulator(root, hall, started, zoom)
            # SIGTERM closes the window as its close button does, from Tk's loop. hcp-sim's own handler raises
            # SystemExit wherever the main thread is: as the window opens, that is inside the worker pool starting
            # its first thread, which is then never told to end, and the interpreter waits for it forever.
            previous = signal.signal(signal.SIGTERM, lambda *_: (terminated.append(1), root.after_idle(root.destroy)))
            say(f"gateway database {hall.db_path}; rating pages and case API {hall.api_url} "
                f"(key {hall.api_key}); province {hall.province.url}/sim/records")
            root.protocol("WM_DELETE_WINDOW", root.destroy)
            root.mainloop()
            signal.signal(signal.SIGTERM, previous)
            app.close()
        finally:
            for device, _ in started:
                device.stop()
            hall.stop()
    if terminated:
        sys.exit(143)
