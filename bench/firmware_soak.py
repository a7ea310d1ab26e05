"""The firmware soak (simulator/soak.py) as figures: press -> feedback and press -> gateway ack over 2,000
cycles with a 500-rating offline stretch at 192K, and the smallest heap a 200-cycle soak passes in."""
from __future__ import annotations

import tempfile
from pathlib import Path

from flasher import build
from simulator import soak
from simulator.device import DeviceError

HEAPS_KB = (176, 160, 144, 128, 112, 96, 80)


def figures():
    with tempfile.TemporaryDirectory() as tmp:
        firmware = Path(tmp) / "firmware"
        build.build(firmware)
        full = soak.run(firmware, "192K", 2000, 500, say=lambda line: None)
        smallest = 192
        for kb in HEAPS_KB:
            try:
                soak.run(firmware, f"{kb}K", 200, 60, say=lambda line: None)
            except (soak.SoakFailed, DeviceError):
                break
            smallest = kb
    yield "firmware_min_heap_kb", smallest, "KB", "<= 128"
    yield "firmware_heap_growth_bytes", full.heap_growth(), "bytes", "none (tolerance 4096)"
    yield "press_feedback_median_ms", round(soak.SoakResult.percentile(full.feedback_ms, 0.5), 2), "ms", None
    yield "press_feedback_p99_ms", round(soak.SoakResult.percentile(full.feedback_ms, 0.99), 2), "ms", "<= 50"
    yield "press_ack_median_ms", round(soak.SoakResult.percentile(full.ack_ms, 0.5), 2), "ms", None
    yield "press_ack_p99_ms", round(soak.SoakResult.percentile(full.ack_ms, 0.99), 2), "ms", None
