"""What `make demo` runs: the parts of the system that exist so far, end to end on loopback.

A private Mosquitto, the gateway, the simulated provincial system, and one evaluator running the real
firmware on the MicroPython unix port. The demo reports cases finished (办结) through the gateway's case API
as a window system would; the gateway prompts the evaluator; the demo presses its buttons as a citizen
would, and rates one more case by phone on its QR page; the ratings go through the broker, the gateway's
store and forwarder, to the province. The simulated hall and its GUI join with their issue.
"""
from __future__ import annotations

import json
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

from flasher import build
from gateway import settings
from gateway.api import hash_key
from gateway.service import Gateway
from protocol import codec
from simulator.broker import REPO, Broker, free_port
from simulator.device import SimDevice
from simulator.province import Province

HALL, DEVICE = "361102-xz", "W01-A"
APP_KEY, APP_SECRET = "demo-hall", "demo-secret-not-for-production"
API_KEY = "demo-window-system-key"
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
            api_port = free_port()
            config = settings.load(None, {
                "gateway.hall": HALL, "mqtt.port": broker.port, "store.path": str(work / "gateway.db"),
                "http.port": 0, "api.port": api_port, "api.public_url": f"http://127.0.0.1:{api_port}",
                "api.keys": [hash_key(API_KEY)], "upstream.url": province.url, "upstream.app_key": APP_KEY,
                "upstream.app_secret": APP_SECRET, "upstream.area_code": "361102"})
            gateway = Gateway(config).start()
            device = SimDevice(work / "evaluator", firmware_tree(work), DEVICE, HALL, broker.port)
            try:
                return _exchange(say, broker, province, gateway, device, work)
            finally:
                device.stop()
                gateway.stop()
                province.stop()


def _finish_case(gateway, case: str) -> dict:
    """What a window system does when a case is done: POST it to the case API."""
    body = {"project_no": case, "task_code": "361100-000-XK-001", "task_name": "不动产登记",
            "dept_code": "11361100MB1234567X", "staff_no": "N0321", "window_no": "A12", "applicant_name": "张三丰"}
    request = urllib.request.Request(f"http://127.0.0.1:{gateway.api.port}/api/v1/cases", method="POST",
                                     data=json.dumps(body).encode(), headers={
                                         "Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def _rate_by_phone(url: str) -> str:
    """A citizen who walked away scans the QR later and rates on the page (a form post, as a phone does)."""
    form = urllib.parse.urlencode({"level": "satisfied", "comment": "很方便"}).encode()
    with urllib.request.urlopen(urllib.request.Request(url, data=form, method="POST"), timeout=10) as response:
        return response.read().decode()


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
        answer = _finish_case(gateway, case)
        device.wait_frame("prompt", after=before)
        device.press(button)
        if button == 4:
            device.wait_frame("reasons", after=before)
            time.sleep(0.3)
            device.press(1)  # 办事效率低
        thanks = device.wait_frame("thanks", after=before)
        say(f"   case {case} reported by the window system (prompted: {answer['prompted']}), "
            f"pressed {codec.LEVEL_LABELS[button]}, the screen thanked the citizen")
        device.wait_frame("idle", after=thanks["frame"], timeout=10)
    walked_away = _finish_case(gateway, "DEMO-0004")
    device.power_cut()  # nobody at the counter any more: the case is rated by phone from its QR page
    page = _rate_by_phone(walked_away["url"])
    say(f"   case DEMO-0004: rated by phone at {walked_away['url']}: "
        f"{'感谢您的评价' if '感谢您的评价' in page else page[:80]}")
    wait_for(lambda: province.count() == len(PRESSES) + 1, 30, "the province")
    records = province.records()
    say("5. the gateway stored them, acked the presses to the evaluator, and the province holds them "
        "(satisfaction 5 = 非常满意; pf 5 = hall evaluator, 3 = QR code):")
    for record in records:
        say("   " + json.dumps({k: record[k] for k in ("evalId", "pf", "satisfaction", "evalDetail", "assessTime")
                                if k in record}, ensure_ascii=False))
    stored = gateway.reader.execute("SELECT count(*) FROM ratings").fetchone()[0]
    say(f"pressed={len(PRESSES)} phone=1 stored={stored} forwarded={len(records)} "
        f"duplicates=0 lost={len(PRESSES) + 1 - len(records)}")
    say("Next to land: the simulated hall with its GUI and fleet (issue 6), device credentials and TLS (issue 8).")
    return records
