"""What `make demo` runs: the parts of the system that exist so far, end to end on loopback.

A private Mosquitto, the gateway, the simulated provincial system; the shared codec under the real
MicroPython unix port makes ratings as the device will; they travel through the broker at QoS 1, are
stored and acked by the gateway, and forwarded to the province. The firmware and the simulated hall join
as their issues land.
"""
from __future__ import annotations

import json
import queue
import tempfile
import time
from pathlib import Path

import paho.mqtt.client as mqtt

from gateway import settings
from gateway.service import Gateway
from protocol import codec
from simulator import micropython
from simulator.broker import Broker
from simulator.province import Province

HALL, DEVICE = "361102-xz", "W01-A"
APP_KEY, APP_SECRET = "demo-hall", "demo-secret-not-for-production"
PRESSES = [("very_satisfied", []), ("satisfied", []), ("dissatisfied", ["502"])]

# Runs on MicroPython: build ratings exactly as the firmware will, one payload per line.
DEVICE_SCRIPT = """
from protocol import codec
for seq, (level, reasons) in enumerate(%r, 1):
    msg = {"v": 1, "k": "rating", "dev": "%s", "boot": "0a1b2c3d", "seq": seq, "id": "5f2c9a0e%%08x" %% seq,
           "t": %d, "ms": 81234 + seq, "case": None, "lvl": level, "pub": True}
    if reasons:
        msg["rsn"] = reasons
    print(codec.encode(msg).decode())
"""


def device_payloads() -> list[bytes]:
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "press.py"
        script.write_text(DEVICE_SCRIPT % (PRESSES, DEVICE, int(time.time())))
        done = micropython.run([str(script)], path=[micropython.REPO], heapsize="96K")
    if done.returncode != 0:
        raise RuntimeError(f"MicroPython failed: {done.stdout.decode()} {done.stderr.decode()}")
    return done.stdout.split()


def wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError(f"demo: timed out waiting for {what}")
        time.sleep(0.05)


def run(say=print) -> list[dict]:
    """Run the demo once; return the records the province stored."""
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        with Broker(work / "broker") as broker:
            province = Province(work / "province.db", APP_KEY, APP_SECRET).start()
            config = settings.load(None, {
                "gateway.hall": HALL, "mqtt.port": broker.port, "store.path": str(work / "gateway.db"),
                "http.port": 0, "upstream.url": province.url, "upstream.app_key": APP_KEY,
                "upstream.app_secret": APP_SECRET, "upstream.area_code": "361102"})
            gateway = Gateway(config).start()
            try:
                return _exchange(say, broker, province, gateway, work)
            finally:
                gateway.stop()
                province.stop()


def _exchange(say, broker, province, gateway, work: Path) -> list[dict]:
    say(f"1. private Mosquitto on 127.0.0.1:{broker.port} (settings: gateway/mosquitto.conf)")
    say(f"2. gateway for hall {HALL}: database {work / 'gateway.db'}, "
        f"metrics http://127.0.0.1:{gateway.monitor.port}/metrics")
    say(f"3. simulated province at {province.url}")
    gateway.writer.call(lambda conn: conn.execute(
        "INSERT INTO devices (dev, hall, window_no, dept_code, staff_no) VALUES (?, ?, 'A12', ?, 'N0321')",
        (DEVICE, HALL, "11361100MB1234567X")))
    payloads = device_payloads()
    say(f"4. MicroPython ({micropython.binary()}) encoded {len(payloads)} presses as the device will, e.g.:\n"
        f"   {payloads[-1].decode()}")

    acks: queue.Queue = queue.Queue()
    device = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=DEVICE)
    device.on_message = lambda c, u, m: acks.put(codec.decode(m.payload))
    device.connect("127.0.0.1", broker.port)
    device.subscribe(codec.topic(HALL, DEVICE, "ack"), qos=1)
    device.loop_start()
    try:
        for payload in payloads:
            device.publish(codec.topic(HALL, DEVICE, "rating"), payload, qos=1)
        acked: set[str] = set()
        while len(acked) < len(payloads):
            acked.update(acks.get(timeout=20)["ids"])
    finally:
        device.loop_stop()
    say(f"5. the gateway stored them and acked {len(acked)} ratings to the device")
    wait_for(lambda: province.count() == len(payloads), 20, "the province")
    records = province.records()
    say("6. the province holds them (satisfaction 5 = 非常满意; pf 5 = hall evaluator):")
    for record in records:
        say("   " + json.dumps({k: record[k] for k in ("evalId", "pf", "satisfaction", "evalDetail", "assessTime")
                                if k in record}, ensure_ascii=False))
    say(f"pressed={len(payloads)} stored={gateway.ingest.counts['stored']} forwarded={len(records)} "
        f"duplicates=0 lost={len(payloads) - len(records)}")
    say("Next to land: the firmware on the MicroPython unix port (issue 3), cases and QR prompts (issue 5), "
        "the simulated hall and fleet (issue 6).")
    return records
