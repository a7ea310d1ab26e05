"""Durable ingest rate: the same pre-queued QoS 1 backlog drained three ways in one run.

N ratings wait at Mosquitto in three persistent sessions (the same subscription, so each holds a copy).
Then each session is drained by: mosquitto_sub (the broker's limit), a bare paho subscriber that only
acks (the Python client's limit), and the gateway (decode, group commit with fsync, device acks, PUBACKs).
"""
from __future__ import annotations

import subprocess
import tempfile
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt

from gateway import settings
from gateway.service import Gateway
from protocol import codec
from simulator.broker import Broker, find_program
from tests.helpers import prepare_database

HALL = "bench"
BACKLOG = 100_000
DEVICES = 1000
SESSIONS = ("drain-mosquitto-sub", "drain-paho", "drain-gateway")


def ratings(count: int):
    for i in range(count):
        dev = f"D{i % DEVICES:04d}"
        yield codec.topic(HALL, dev, "rating"), codec.encode({
            "v": 1, "k": "rating", "dev": dev, "boot": "0a1b2c3d", "seq": i // DEVICES + 1, "id": f"{i:016x}",
            "t": 1764383400, "ms": i, "case": None, "lvl": codec.LEVELS[i % 5], "pub": True})


def create_sessions(port: int) -> None:
    for client_id in SESSIONS:
        done = threading.Event()
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=False)
        client.on_subscribe = lambda *a, done=done: done.set()
        client.connect("127.0.0.1", port)
        client.subscribe(codec.subscription(HALL, "+", codec.UP), qos=1)
        client.loop_start()
        if not done.wait(10):
            raise RuntimeError("subscribe timed out")
        client.disconnect()
        client.loop_stop()


def prequeue(port: int, messages) -> None:
    """Publish (topic, payload) messages at QoS 1, a bounded number in flight, and wait until all are out."""
    publisher = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-publisher")
    publisher.max_inflight_messages_set(1000)
    publisher.connect("127.0.0.1", port)
    publisher.loop_start()
    last = None
    for n, (topic, payload) in enumerate(messages):
        last = publisher.publish(topic, payload, qos=1)
        if n % 5000 == 4999:
            last.wait_for_publish(60)  # bound what is in flight
    last.wait_for_publish(60)
    publisher.disconnect()
    publisher.loop_stop()


def drain_mosquitto_sub(port: int, count: int) -> float:
    start = time.perf_counter()
    subprocess.run([find_program("mosquitto_sub"), "-p", str(port), "-i", SESSIONS[0], "-c", "-q", "1",
                    "-t", codec.subscription(HALL, "+", codec.UP), "-C", str(count)],
                   stdout=subprocess.DEVNULL, check=True, timeout=600)
    return count / (time.perf_counter() - start)


def drain_paho(port: int, count: int) -> float:
    received = [0]
    done = threading.Event()
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=SESSIONS[1], clean_session=False,
                         manual_ack=True)

    def on_message(client, userdata, message):
        client.ack(message.mid, message.qos)
        received[0] += 1
        if received[0] >= count:
            done.set()

    client.on_message = on_message
    start = time.perf_counter()
    client.connect("127.0.0.1", port)
    client.loop_start()
    if not done.wait(600):
        raise RuntimeError(f"paho drained only {received[0]} of {count}")
    took = time.perf_counter() - start
    client.disconnect()
    client.loop_stop()
    return count / took


def drain_gateway(port: int, count: int, workdir: Path) -> float:
    prepare_database(workdir / "gateway.db", [f"D{i:04d}" for i in range(DEVICES)])  # provisioned devices
    config = settings.load(None, {"gateway.hall": HALL, "mqtt.port": port, "mqtt.client_id": SESSIONS[2],
                                  "store.path": str(workdir / "gateway.db"), "http.port": 0, "api.port": 0})
    gateway = Gateway(config)
    start = time.perf_counter()
    gateway.start()
    try:
        while gateway.counter("ingest_stored") < count:
            if time.perf_counter() - start > 600:
                raise RuntimeError(f"gateway stored only {gateway.counter('ingest_stored')} of {count}")
            time.sleep(0.005)
        return count / (time.perf_counter() - start)
    finally:
        gateway.stop()


def figures():
    with tempfile.TemporaryDirectory() as tmp, Broker(Path(tmp) / "broker") as broker:
        create_sessions(broker.port)
        prequeue(broker.port, ratings(BACKLOG))
        broker_rate = drain_mosquitto_sub(broker.port, BACKLOG)
        paho_rate = drain_paho(broker.port, BACKLOG)
        gateway_rate = drain_gateway(broker.port, BACKLOG, Path(tmp))
    yield "ingest_rate", round(gateway_rate), "ratings/s", None
    yield "ingest_mosquitto_sub_rate", round(broker_rate), "msg/s", None
    yield "ingest_paho_rate", round(paho_rate), "msg/s", None
    yield "ingest_ratio", round(gateway_rate / broker_rate, 3), "gateway/mosquitto_sub", ">= 0.25"
    yield "paho_ratio", round(gateway_rate / paho_rate, 3), "gateway/paho", ">= 0.5"
