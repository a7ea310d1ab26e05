"""How many evaluators one gateway serves: virtual devices (simulator/virtual.py), each window finishing one
case a minute through the case API and its citizen pressing a level, the gateway as its own process with
the broker and the simulated province on loopback. The fleet grows step by step while the p99 from press
to province stays under 2 s and nothing is lost; `max_devices` is the largest step that held.
"""
from __future__ import annotations

import statistics
import tempfile
from pathlib import Path

from simulator import scenario as scenarios
from simulator.fleet import Fleet

STEPS = (1000, 2500, 5000, 10000)
SECONDS = 60
P99_LIMIT_S = 2.0


def run_step(devices: int, work: Path):
    day = scenarios.parse({"name": f"{devices} devices", "seconds": SECONDS, "days_after": 0,
                           "devices": {"firmware": 0, "virtual": devices},
                           "citizens": {"cases_per_minute": 1.0, "walk_away": 0.0, "think_s": [0.5, 2.0]}})
    return Fleet(day, work, say=lambda _text: None).run()


def figures():
    held = 0
    for devices in STEPS:
        with tempfile.TemporaryDirectory() as tmp:
            result = run_step(devices, Path(tmp))
        latencies = sorted(result.latencies)
        p99 = latencies[int(len(latencies) * 0.99) - 1] if latencies else float("inf")
        print(f"  {devices} devices: {len(latencies)} presses, press->province median "
              f"{statistics.median(latencies) if latencies else float('nan'):.3f} s, p99 {p99:.3f} s, "
              f"lost {result.lost}, duplicates {result.duplicates}", flush=True)
        if p99 >= P99_LIMIT_S or not result.ok:
            break
        held = devices
    yield "max_devices", held, "devices", ">= 10000 at 1 rating/device/min, p99 press->province < 2 s"
