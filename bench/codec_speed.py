"""How fast the shared codec decodes a rating, on CPython (gateway) and on the MicroPython unix port.

The MicroPython figure includes its strict JSON and UTF-8 scan; a device decodes a few messages a minute,
so it matters only as a ceiling. The CPython figure bounds the gateway's ingest rate.
"""
from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

from protocol import codec
from simulator import micropython

RATING = codec.encode({"v": 1, "k": "rating", "dev": "W01-A", "boot": "0a1b2c3d", "seq": 42,
                       "id": "5f2c9a0e7b3d4c11", "t": 1764383400, "ms": 81234, "case": "3611002026112900017",
                       "lvl": "dissatisfied", "pub": True, "rsn": ["501", "505"]})
ROUNDS, COUNT = 5, 20000

MICROPYTHON_SCRIPT = """
import time
from protocol import codec
payload = %r
rates = []
for _ in range(%d):
    start = time.ticks_us()
    for _ in range(%d):
        codec.decode(payload)
    rates.append(%d * 1000000 // time.ticks_diff(time.ticks_us(), start))
rates.sort()
print(rates[len(rates) // 2])
"""


def cpython_rate() -> float:
    rates = []
    for _ in range(ROUNDS):
        start = time.perf_counter()
        for _ in range(COUNT):
            codec.decode(RATING)
        rates.append(COUNT / (time.perf_counter() - start))
    return statistics.median(rates)


def micropython_rate() -> int:
    count = COUNT // 10
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "bench.py"
        script.write_text(MICROPYTHON_SCRIPT % (RATING, ROUNDS, count, count))
        done = micropython.run([str(script)], path=[micropython.REPO], heapsize="96K", timeout=300)
    if done.returncode != 0:
        raise RuntimeError(done.stderr.decode())
    return int(done.stdout)


def figures():
    yield "codec_decode_rate_cpython", round(cpython_rate()), "msg/s", None
    yield "codec_decode_rate_micropython", micropython_rate(), "msg/s", None
