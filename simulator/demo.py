"""What `make demo` runs: the parts of the system that exist so far, end to end on loopback.

A private Mosquitto, the gateway, the simulated provincial system, and one evaluator running the real
firmware on the MicroPython unix port. The gateway prompts the evaluator with a case, the demo presses its
buttons as a citizen would, and the ratings go through the broker, the gateway's store and forwarder, to
the province. Cases from a window system and the simulated hall join as their issues land.
"""
from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

from flasher import build
from gateway import prompts, settings
from gateway.service import Gateway
from protocol import codec
from simulator.broker import REPO, Broker
from simulator.device import SimDevice
from simulator.province import Province

HALL, DEVICE = "361102-xz", "W01-A"
APP_KEY, APP_SECRET = "demo-hall", "demo-secret-not-for-production"
PRESSES = [(0, "DEMO-0001"), (1, "DEMO-0002"), (4, "DEMO-0003")]  # 非常满意, 满意, 非常不满意


def wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError(f"demo: timed out waiting for {what}")
        time.sleep(0.05)


def firmware_tree(work: Path) -> Path:
    """`make firmware`'s tree when it is there, else a fresh build."""
    built = REPO / "build" / "firmware"
    if (built / "main.py").exists() and (built / "font.bin").exists():
        return built
    build.build(work / "firmware")
    return work / "firmware"


def run(say=print) -> list[dict]:
    """Run the demo once; return the records the province stored."""
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        with Broker(work / "broker") as broker:
            province = Province(work / "province.db", APP_KEY, APP_SECRET).start()
            config = settings.load(None, {
                "gateway.hall": HALL, "mqtt.port": broker.port, "store.path": str(work / "gateway.db"),
                "http.port": 0, "api.port": 0, "upstream.url": province.url, "upstream.app_key": APP_KEY,
                "upstream.app_secret": APP_SECRET, "upstream.area_code": "361102"})
            gateway = Gateway(config).start()
            device = SimDevice(work / "evaluator", firmware_tree(work), DEVICE, HALL, broker.port)
            try:
                return _exchange(say, broker, province, gateway, device, work)
            finally:
                device.stop()
                gateway.stop()
                province.stop()


def _prompt(case: str) -> bytes:
    return codec.encode(prompts.prompt(case, "张*的 不动产登记", f"https://hcp.example.gov.cn/r/{case}", 30))


def _exchange(say, broker, province, gateway, device, work: Path) -> list[dict]:
    say(f"1. private Mosquitto on 127.0.0.1:{broker.port} (settings: gateway/mosquitto.conf)")
    say(f"2. gateway for hall {HALL}: database {work / 'gateway.db'}, "
        f"metrics http://127.0.0.1:{gateway.monitor.port}/metrics")
    say(f"3. simulated province at {province.url}")
    gateway.writer.call(lambda conn: conn.execute(
        "INSERT INTO devices (dev, hall, window_no, dept_code, staff_no) VALUES (?, ?, 'A12', ?, 'N0321')",
        (DEVICE, HALL, "11361100MB1234567X")))
    device.start()
    wait_for(lambda: gateway.ingest.counts["status"] >= 1, 30, "the evaluator online")
    say(f"4. evaluator {DEVICE}: the real firmware on the MicroPython unix port ({device.heapsize} heap), "
        f"flash in {device.flash}")
    for button, case in PRESSES:
        before = device.last_frame
        gateway.ingest.client.publish(codec.topic(HALL, DEVICE, "prompt"), _prompt(case), qos=1)
        device.wait_frame("prompt", after=before)
        device.press(button)
        if button == 4:
            device.wait_frame("reasons", after=before)
            time.sleep(0.3)
            device.press(1)  # 办事效率低
        thanks = device.wait_frame("thanks", after=before)
        say(f"   prompted case {case}, pressed {codec.LEVEL_LABELS[button]}, the screen thanked the citizen")
        device.wait_frame("idle", after=thanks["frame"], timeout=10)
    wait_for(lambda: province.count() == len(PRESSES), 30, "the province")
    records = province.records()
    say(f"5. the gateway stored {gateway.ingest.counts['stored']} ratings, acked them to the evaluator, and "
        "the province holds them (satisfaction 5 = 非常满意; pf 5 = hall evaluator):")
    for record in records:
        say("   " + json.dumps({k: record[k] for k in ("evalId", "pf", "satisfaction", "evalDetail", "assessTime")
                                if k in record}, ensure_ascii=False))
    say(f"pressed={len(PRESSES)} stored={gateway.ingest.counts['stored']} forwarded={len(records)} "
        f"duplicates=0 lost={len(PRESSES) - len(records)}")
    say("Next to land: cases from the window system and the citizen's QR page (issue 5), the simulated hall "
        "and fleet (issue 6).")
    return records
