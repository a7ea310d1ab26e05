"""What TLS to the hall broker costs the evaluator, measured on the MicroPython unix port: MicroPython heap
for the tls module, context and stream, and process memory for mbedTLS's buffers (on the ESP32 those come
from the IDF heap beside MicroPython's). One connection with the hall CA verified and one CONNECT/CONNACK."""
from __future__ import annotations

import json
import statistics
import tempfile
from pathlib import Path

from gateway import hallca
from simulator import micropython
from simulator.broker import Broker

REPO = Path(__file__).resolve().parent.parent
RUNS = 5


def figures():
    with tempfile.TemporaryDirectory() as tmp:
        files = hallca.init(Path(tmp) / "ca", "bench", ["127.0.0.1"])
        with Broker(Path(tmp) / "broker", tls={k: str(v) for k, v in files.items()}) as broker:
            results = []
            for _ in range(RUNS):
                done = micropython.run([str(REPO / "bench" / "tls_cost.py"), str(broker.port), str(files["ca_der"])],
                                       path=[REPO], heapsize="192K", timeout=60)
                if done.returncode != 0:
                    raise RuntimeError(done.stdout.decode() + done.stderr.decode())
                results.append(json.loads(done.stdout.decode().strip().splitlines()[-1]))
    assert all(r["connack"] == 0x20 for r in results)
    yield "firmware_tls_heap_kb", round(statistics.median(r["heap_bytes"] for r in results) / 1024, 1), "KB", None
    yield "firmware_tls_rss_kb", statistics.median(r["rss_kb"] for r in results), "KB", None
