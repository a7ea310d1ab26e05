"""What `make demo` runs: a whole hall on loopback, in a window when there is a screen, else headless.

A private Mosquitto, the gateway, the simulated provincial system and a simulated hall: evaluators running
the real firmware on the MicroPython unix port beside virtual ones, windows finishing cases (办结) through the
case API, citizens pressing or rating by QR later, faults on a timeline, and at the end the check that every
rating reached the province exactly once.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

from flasher import build
from simulator import scenario as scenarios
from simulator.broker import REPO
from simulator.fleet import Fleet, Result


def firmware_tree(work: Path) -> Path:
    """`make firmware`'s tree when it is there, else a fresh build."""
    built = REPO / "build" / "firmware"
    if (built / "main.py").exists() and (built / "font.bin").exists():
        return built
    build.build(work / "firmware")
    return work / "firmware"


def has_screen() -> bool:
    """True when a Tk window can be shown here."""
    if not os.environ.get("DISPLAY"):
        return False
    try:
        import tkinter

        tkinter.Tk().destroy()
    except Exception:  # noqa: BLE001 - no Tk, or no X server behind DISPLAY: either way, headless
        return False
    return True


def run_day(scenario: scenarios.Scenario, workdir: Path | None = None, screens: Path | None = None,
            say=print) -> Result:
    """Run one hall day headless (in `workdir`, kept, or a temporary one) and return the check's result."""
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(workdir) if workdir else Path(tmp)
        firmware = firmware_tree(work) if scenario.firmware_devices else None
        result = Fleet(scenario, work, firmware, screens, say).run()
    for case, reason in result.dead_letters:
        say(f"dead letter: {case}: {reason}")
    for problem in result.problems[:50]:
        say(f"VIOLATION: {problem}")
    say(result.summary())
    return result
