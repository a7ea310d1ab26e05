"""Run every benchmark; print `name: value unit` per figure and write them to a JSON file.

Each benchmark module has `figures()`, yielding (name, value, unit, goal-or-None).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from bench import (
    codec_speed,
    firmware_soak,
    firmware_tls,
    fleet_capacity,
    fleet_overlap,
    gateway_drain,
    gateway_ingest,
    gateway_latency,
    gateway_restart,
)

BENCHMARKS = [codec_speed, gateway_ingest, gateway_latency, gateway_drain, gateway_restart, firmware_soak, firmware_tls,
              fleet_capacity, fleet_overlap]


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("build/bench.json"), help="where to write the figures")
    args = parser.parse_args()
    results = {}
    for module in BENCHMARKS:
        for name, value, unit, goal in module.figures():
            print(f"{name}: {value:g} {unit}" + (f" (goal: {goal})" if goal else ""), flush=True)
            results[name] = {"value": value, "unit": unit, "goal": goal}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
