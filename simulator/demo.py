"""What `make demo` runs: the parts of the system that exist so far, end to end on loopback.

Today: a private Mosquitto; the shared codec under the real MicroPython unix port makes a rating as the
device will; it travels through the broker at QoS 1 on the device's topic; the gateway side decodes it and
shows the provincial record it maps to. Firmware, gateway and province join as their issues land.
"""
from __future__ import annotations

import json
import queue
import tempfile
from pathlib import Path

import paho.mqtt.client as mqtt

from protocol import codec, upstream
from simulator import micropython
from simulator.broker import Broker

HALL, DEVICE = "361102-xz", "W01-A"

# Runs on MicroPython: build a rating exactly as the firmware will, print the payload.
DEVICE_SCRIPT = """
from protocol import codec
print(codec.encode({"v": 1, "k": "rating", "dev": "%s", "boot": "0a1b2c3d", "seq": 1,
    "id": "5f2c9a0e7b3d4c11", "t": 1764383400, "ms": 81234, "case": "3611002026112900017",
    "lvl": "dissatisfied", "pub": True, "rsn": ["502"]}).decode())
""" % DEVICE


def device_payload() -> bytes:
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "press.py"
        script.write_text(DEVICE_SCRIPT)
        done = micropython.run([str(script)], path=[micropython.REPO], heapsize="96K")
    if done.returncode != 0:
        raise RuntimeError(f"MicroPython failed: {done.stderr.decode()}")
    return done.stdout.strip()


def run(say=print) -> dict:
    """Run the demo once; return the upstream record the rating maps to."""
    with tempfile.TemporaryDirectory() as tmp, Broker(Path(tmp)) as broker:
        say(f"1. private Mosquitto on 127.0.0.1:{broker.port}")
        payload = device_payload()
        say(f"2. MicroPython {micropython.binary()} encoded a press ({len(payload)} bytes):\n   {payload.decode()}")

        arrived: queue.Queue = queue.Queue()
        gateway = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="demo-gateway")
        gateway.on_connect = lambda c, u, f, rc, p: c.subscribe(codec.subscription(HALL, "+", codec.UP), qos=1)
        gateway.on_subscribe = lambda c, u, mid, rc, p: arrived.put("subscribed")
        gateway.on_message = lambda c, u, m: arrived.put((m.topic, m.payload))
        gateway.connect("127.0.0.1", broker.port)
        gateway.loop_start()
        try:
            arrived.get(timeout=10)
            device = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=DEVICE)
            device.connect("127.0.0.1", broker.port)
            device.loop_start()
            device.publish(codec.topic(HALL, DEVICE, "rating"), payload, qos=1).wait_for_publish(10)
            device.loop_stop()
            topic, received = arrived.get(timeout=10)
        finally:
            gateway.loop_stop()
        hall, dev, msg = codec.decode_from(topic, received)
        say(f"3. the gateway side received it on {topic} and decoded level {msg['lvl']} "
            f"({codec.LEVEL_LABELS[codec.LEVELS.index(msg['lvl'])]}) for case {msg['case']}")

    profile = upstream.Profile(area_code="361102")
    record = upstream.to_record(
        {"eval_id": upstream.eval_id(profile.source, dev, msg["id"]), "level": msg["lvl"], "channel": "device",
         "assessed_at": msg["t"], "public": msg["pub"], "reasons": msg.get("rsn"), "window_no": "A12"},
        {"project_no": msg["case"], "task_code": "361100-000-XK-001", "task_name": "不动产登记",
         "dept_code": "11361100MB1234567X", "staff_no": "N0321"},
        profile)
    say("4. the provincial record it maps to (PROVINCE-API.md, satisfaction 5 = 非常满意):\n   "
        + json.dumps(record, ensure_ascii=False))
    say("Next to land: the firmware (issue 3), the gateway's durable store and forwarder (issue 4), cases and QR "
        "prompts (issue 5), and the simulated hall and province (issue 6).")
    return record
