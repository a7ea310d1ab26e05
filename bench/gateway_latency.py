"""Press -> stored -> acked latency on loopback while 500 ratings/s of background load flow in.

The gateway runs as its own process (`hcp-gateway run`); the load comes from 100 devices, the probe is one
more device that publishes a rating and waits for the ack naming it.
"""
from __future__ import annotations

import socket
import statistics
import tempfile
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt

from bench.gateway_ingest import HALL
from protocol import codec
from simulator.broker import Broker, free_port
from tests.helpers import GatewayProcess, prepare_database, wait_until

LOAD_PER_S = 500
PROBES = 500
PROBE_INTERVAL_S = 0.04


def rating(dev: str, seq: int) -> bytes:
    return codec.encode({"v": 1, "k": "rating", "dev": dev, "boot": "0a1b2c3d", "seq": seq, "id": f"{seq:016x}",
                         "t": int(time.time()), "ms": seq, "case": None, "lvl": "satisfied", "pub": True})


def no_delay(client: mqtt.Client) -> None:
    """Devices send each rating at once (the firmware sets TCP_NODELAY too); measure the gateway, not Nagle."""
    client.socket().setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def background_load(port: int, stop: threading.Event) -> None:
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-load")
    client.max_inflight_messages_set(0)
    client.connect("127.0.0.1", port)
    no_delay(client)
    client.loop_start()
    seq, start = 0, time.perf_counter()
    while not stop.is_set():
        seq += 1
        dev = f"L{seq % 100:03d}"
        client.publish(codec.topic(HALL, dev, "rating"), rating(dev, seq), qos=1)
        ahead = seq / LOAD_PER_S - (time.perf_counter() - start)
        if ahead > 0:
            time.sleep(ahead)
    client.disconnect()
    client.loop_stop()


def probe(port: int) -> list[float]:
    acked: dict[str, float] = {}
    sent: dict[str, float] = {}
    ready = threading.Event()
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="P001")

    def on_message(c, u, message):
        now = time.perf_counter()
        for rating_id in codec.decode(message.payload)["ids"]:
            acked[rating_id] = now

    client.on_message = on_message
    client.on_subscribe = lambda *a: ready.set()
    client.connect("127.0.0.1", port)
    no_delay(client)
    client.subscribe(codec.topic(HALL, "P001", "ack"), qos=1)
    client.loop_start()
    ready.wait(10)
    for seq in range(1, PROBES + 1):
        rating_id = f"{seq:016x}"
        sent[rating_id] = time.perf_counter()
        client.publish(codec.topic(HALL, "P001", "rating"), rating("P001", seq), qos=1)
        time.sleep(PROBE_INTERVAL_S)
    wait_until(lambda: len(acked) == PROBES, timeout=60, what="every probe acked")
    client.disconnect()
    client.loop_stop()
    return [(acked[i] - sent[i]) * 1000 for i in sent]


def figures():
    with tempfile.TemporaryDirectory() as tmp, Broker(Path(tmp) / "broker") as broker:
        prepare_database(Path(tmp) / "gateway.db", [f"L{i:03d}" for i in range(100)] + ["P001"])  # provisioned
        gateway = GatewayProcess(Path(tmp), {"gateway.hall": HALL, "mqtt.port": broker.port, "http.port": free_port(),
                                             "api.port": 0, "store.path": str(Path(tmp) / "gateway.db")}).start()
        stop = threading.Event()
        load = threading.Thread(target=background_load, args=(broker.port, stop))
        try:
            time.sleep(1.0)  # let the gateway connect
            load.start()
            latencies = sorted(probe(broker.port))
        finally:
            stop.set()
            if load.is_alive():
                load.join()
            gateway.stop()
    yield "store_ack_median_ms", round(statistics.median(latencies), 2), "ms", None
    yield "store_ack_p99_ms", round(latencies[int(len(latencies) * 0.99) - 1], 2), "ms", "<= 50"
