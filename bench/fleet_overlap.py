"""The overlapping-fault hall day (simulator/scenarios/overlap.toml, issue 18) in its long form: its fault
timeline five times over in one day, 3 real-firmware and 200 virtual evaluators. The gateway is SIGKILLed
while the broker restarts, the province is down and a fifth of the evaluators are cut off, again while it
is down and just after it came back, among power cuts and 5xx answers; then days pass. Figures: the day's
counts, what must be zero (lost, duplicates, unreported cases, processes left behind), how long the
gateway's starts took and how long any fault's call waited for a thread (the minute issue 18 found).
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

from simulator import scenario as scenarios
from simulator.demo import firmware_tree
from simulator.fleet import Fleet

REPEAT = 5


def figures():
    day = scenarios.load(Path("overlap")).repeated(REPEAT)
    began = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        fleet = Fleet(day, work, firmware_tree(work), say=lambda _text: None)
        result = fleet.run()
    took = time.monotonic() - began
    print(f"  {day.name} x{REPEAT}, {day.seconds:g} s, {len(day.faults)} faults: {result.summary()}", flush=True)
    for problem in result.problems[:10]:
        print(f"  VIOLATION: {problem}", flush=True)
    for name in ("cases", "pressed", "phone", "defaults", "stored", "forwarded"):
        yield f"overlap_{name}", getattr(result, name), "ratings" if name != "cases" else "cases", None
    yield "overlap_lost", result.lost, "cases", "0"
    yield "overlap_duplicates", result.duplicates, "records", "0"
    yield "overlap_unreported", result.unreported, "cases", "0"
    yield "overlap_orphans", result.orphans, "processes", "0"
    yield "overlap_gateway_start_max_s", round(max(fleet.hall.gateway_starts), 2), "s", "<= 2"
    yield "overlap_thread_wait_max_s", round(max(fleet.hall_call_waits), 3), "s", "<= 0.5"
    yield "overlap_day_s", round(took, 1), "s", None
