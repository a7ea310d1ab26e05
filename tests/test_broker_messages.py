"""Protocol messages through a real Mosquitto: topics, QoS 1 delivery, the retained Last Will."""
from __future__ import annotations

import queue
import select
import signal
import subprocess

import paho.mqtt.client as mqtt

from protocol import codec
from simulator.broker import find_program

HALL, DEVICE = "361102-xz", "W01-A"
RATING = {"v": 1, "k": "rating", "dev": DEVICE, "boot": "0a1b2c3d", "seq": 1, "id": "5f2c9a0e7b3d4c11",
          "t": 1764383400, "ms": 81234, "case": None, "lvl": "satisfied", "pub": True}


def subscriber(port: int, topic_filter: str, client_id: str) -> tuple[mqtt.Client, queue.Queue]:
    inbox: queue.Queue = queue.Queue()
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id)
    client.on_connect = lambda c, u, f, rc, p: c.subscribe(topic_filter, qos=1)
    client.on_subscribe = lambda c, u, mid, rc, p: inbox.put("subscribed")
    client.on_message = lambda c, u, m: inbox.put((m.topic, m.payload, m.retain))
    client.connect("127.0.0.1", port)
    client.loop_start()
    assert inbox.get(timeout=10) == "subscribed"
    return client, inbox


def test_rating_travels_on_the_device_topic_and_decodes(broker):
    gateway, inbox = subscriber(broker.port, codec.subscription(HALL, "+", codec.UP), "gateway")
    device = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=DEVICE)
    device.connect("127.0.0.1", broker.port)
    device.loop_start()
    try:
        device.publish(codec.topic(HALL, DEVICE, "rating"), codec.encode(RATING), qos=1).wait_for_publish(10)
        topic, payload, _ = inbox.get(timeout=10)
        assert codec.decode_from(topic, payload) == (HALL, DEVICE, RATING)
    finally:
        device.loop_stop()
        gateway.loop_stop()


def test_last_will_marks_a_vanished_device_offline_and_is_retained(broker):
    will = codec.encode({"v": 1, "k": "status", "dev": DEVICE, "state": "offline"})
    status_topic = codec.topic(HALL, DEVICE, "status")
    probe = f"probe/{DEVICE}"
    publisher = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="prober")
    publisher.connect("127.0.0.1", broker.port)
    publisher.loop_start()
    publisher.publish(probe, b"connected", qos=1, retain=True).wait_for_publish(10)
    publisher.loop_stop()
    # A client that dies without DISCONNECT, as a device does when its power is cut. It prints the
    # retained probe once it is connected and subscribed, and only then is its power cut.
    device = subprocess.Popen([find_program("mosquitto_sub"), "-p", str(broker.port), "-i", DEVICE, "-t", probe,
                               "--will-topic", status_topic, "--will-payload", will, "--will-retain",
                               "--will-qos", "1"], stdout=subprocess.PIPE)
    try:
        ready, _, _ = select.select([device.stdout], [], [], 10)
        assert ready and device.stdout.readline() == b"connected\n"
    finally:
        device.send_signal(signal.SIGKILL)
        device.wait()
    late, inbox = subscriber(broker.port, status_topic, "late-gateway")
    try:
        topic, payload, retained = inbox.get(timeout=10)
        assert retained
        assert codec.decode_from(topic, payload)[2]["state"] == "offline"
    finally:
        late.loop_stop()
