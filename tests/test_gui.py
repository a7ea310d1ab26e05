"""The desktop simulator under Xvfb: real clicks and key presses through the X server, a real screenshot."""
from __future__ import annotations

import os
import subprocess

import pytest
import zxingcpp
from PIL import ImageGrab

from tests.helpers import wait_until


@pytest.fixture
def display(monkeypatch):
    """A private Xvfb screen; DISPLAY points at it for the test."""
    xvfb = subprocess.Popen(["Xvfb", "-displayfd", "1", "-screen", "0", "1600x1000x24", "-nolisten", "tcp"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    number = xvfb.stdout.readline().decode().strip()
    assert number.isdigit(), "Xvfb did not start"
    monkeypatch.setenv("DISPLAY", f":{number}")
    yield f":{number}"
    xvfb.terminate()
    xvfb.wait()


def test_gui_click_shows_the_prompt_and_the_rating_reaches_the_province(display, tmp_path):
    import tkinter as tk

    from simulator import gui

    hall, started = gui.open_hall(tmp_path, 1)
    root = tk.Tk()
    app = gui.Simulator(root, hall, started)
    panel = app.panels[0]

    def pumped(predicate):
        def check():
            root.update()
            return predicate()
        return check

    def click(widget):
        x, y = widget.winfo_rootx() + widget.winfo_width() // 2, widget.winfo_rooty() + widget.winfo_height() // 2
        subprocess.run(["xdotool", "mousemove", str(x), str(y), "click", "1"], check=True, env=os.environ)

    try:
        wait_until(pumped(lambda: panel.photo is not None and hall.query(
            "SELECT state FROM devices WHERE dev = 'F001'") == [("online",)]), 30, "the device on screen, online")
        click(panel.finish)
        prompt = wait_until(pumped(lambda: hall.query("SELECT token FROM tokens")), 10, "the case reported")
        url = f"{hall.api_url}/r/{prompt[0][0]}"

        def qr_on_screen():
            x, y = panel.screen.winfo_rootx(), panel.screen.winfo_rooty()
            shot = ImageGrab.grab(bbox=(x, y, x + panel.screen.winfo_width(), y + panel.screen.winfo_height()),
                                  xdisplay=display)
            return [r.text for r in zxingcpp.read_barcodes(shot)]
        # Idle, the screen shows the window's standing QR (/w/A01); the prompt replaces it with the case's.
        wait_until(pumped(lambda: qr_on_screen() == [url]), 15, "the prompt's QR code in the window")

        click(panel.buttons[0])  # 1 非常满意
        wait_until(pumped(lambda: hall.province.count() == 1), 20, "the rating at the province")
        assert [r["satisfaction"] for r in hall.province.records()] == [5]

        click(panel.finish)  # the next citizen uses the keyboard: key 2 is 满意 on the device last clicked
        wait_until(pumped(lambda: len(hall.query("SELECT token FROM tokens")) == 2), 10, "the second case")
        wait_until(pumped(lambda: panel.device.frames and panel.device.frames[-1]["kind"] == "prompt"), 10,
                   "the second prompt")
        subprocess.run(["xdotool", "key", "2"], check=True, env=os.environ)
        wait_until(pumped(lambda: hall.province.count() == 2), 20, "the key press at the province")
        assert sorted(r["satisfaction"] for r in hall.province.records()) == [4, 5]
        wait_until(pumped(lambda: "满意" in app.recent.get("1.0", "end") and "省级已收: 2" in app.figures["text"]),
                   10, "the side panel showing both ratings")
    finally:
        app.close()
        root.destroy()
        hall.stop()


def test_the_gui_ends_with_every_process_it_started(display, tmp_path):
    from tests.test_fleet import BIN, terminate_leaves_nothing

    work = tmp_path / "gui"
    terminate_leaves_nothing([str(BIN / "hcp-sim"), "gui", "--devices", "2", "--workdir", str(work)], work,
                             "gateway database", env=os.environ)
