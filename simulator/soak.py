"""The firmware soak: one evaluator on the unix port through many prompt -> press -> ack cycles, with an
offline stretch in the middle that buffers ratings on flash and drains them when the network returns.

It checks that every press reached the gateway exactly once, measures press -> visible feedback and
press -> gateway ack, and samples the device's free heap (after a collection) to see whether it leaks.
"""
from __future__ import annotations

import queue
import sqlite3
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import paho.mqtt.client as mqtt

from gateway import prompts, settings
from gateway.service import Gateway
from protocol import codec
from simulator.broker import Broker
from simulator.device import SimDevice

HALL, DEVICE = "soak-hall", "S01"
TUNING = {"mash_guard_ms": 50, "heartbeat_s": 5, "resend_ms": 5000}
LEAK_TOLERANCE = 4096  # bytes; the heap breathes by about 1 KB between samples


class SoakFailed(RuntimeError):
    """An invariant broke: a press was lost or doubled, the device stalled, or its heap grew."""


@dataclass
class SoakResult:
    cycles: int
    stored: int
    feedback_ms: list[float] = field(default_factory=list)
    ack_ms: list[float] = field(default_factory=list)
    free_heap: list[int] = field(default_factory=list)  # after a collection, from the heartbeats

    def heap_growth(self) -> int:
        """Bytes in use at the end beyond the use once warmed up (the first samples fill caches)."""
        warmed = sorted(self.free_heap[1:4])[len(self.free_heap[1:4]) // 2] if len(self.free_heap) > 2 else \
            self.free_heap[0]
        return warmed - self.free_heap[-1]

    @staticmethod
    def percentile(values: list[float], p: float) -> float:
        ordered = sorted(values)
        return ordered[min(len(ordered) - 1, int(len(ordered) * p))]

    def summary(self) -> str:
        return (f"cycles={self.cycles} stored={self.stored} lost=0 duplicates=0 "
                f"feedback_p50={statistics.median(self.feedback_ms):.1f}ms "
                f"feedback_p99={self.percentile(self.feedback_ms, 0.99):.1f}ms "
                f"ack_p50={statistics.median(self.ack_ms):.1f}ms ack_p99={self.percentile(self.ack_ms, 0.99):.1f}ms "
                f"free_heap_first={self.free_heap[0]} free_heap_last={self.free_heap[-1]} "
                f"heap_growth={self.heap_growth()}")


def _prompt(case: str) -> bytes:
    return codec.encode(prompts.prompt(case, "王*的 社保业务", f"https://hcp.example.gov.cn/r/{case}", 30))


def run(firmware: Path, heapsize: str = "192K", cycles: int = 2000, offline: int = 500, say=print,
        workdir: Path | None = None) -> SoakResult:
    """Run the soak; with `workdir`, its files (device flash and console, gateway database) stay there."""
    if not 0 <= offline < cycles:
        raise ValueError("offline must be below cycles")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(workdir or tmp)
        work.mkdir(parents=True, exist_ok=True)
        with Broker(work / "broker") as broker:
            return _run(firmware, heapsize, cycles, offline, say, work, broker)


def _run(firmware, heapsize, cycles, offline, say, work: Path, broker: Broker) -> SoakResult:
    config = settings.load(None, {"gateway.hall": HALL, "mqtt.port": broker.port, "http.port": 0, "api.port": 0,
                                  "store.path": str(work / "gateway.db")})
    gateway = Gateway(config).start()
    gateway.registry.register(DEVICE, {})  # as provisioning does
    watcher = _Watcher(broker.port)
    device = SimDevice(work / "flash", firmware, DEVICE, HALL, broker.port, heapsize=heapsize,
                       site_extra={"tuning": TUNING})
    try:
        device.start()
        result = _cycles(device, gateway, watcher, cycles, offline, say)
        result.stored = _stored(work / "gateway.db")
        if result.stored != cycles:
            raise SoakFailed(f"{cycles} presses, {result.stored} ratings stored")
        if device.boots != 1:
            raise SoakFailed(f"the device reset itself {device.boots - 1} times: {device.console()[-1500:]}")
        if result.heap_growth() > LEAK_TOLERANCE:
            raise SoakFailed(f"the heap grew by {result.heap_growth()} bytes: {result.free_heap}")
        return result
    finally:
        device.stop()
        watcher.stop()
        gateway.stop()


def _cycles(device: SimDevice, gateway: Gateway, watcher: "_Watcher", cycles: int, offline: int, say):
    result = SoakResult(cycles=cycles, stored=0)
    device.wait_frame("idle", timeout=20)
    watcher.wait_online(result)
    online = cycles - offline
    first_half = online // 2
    for n in range(cycles):
        if n == first_half:  # the offline stretch: presses go to flash only
            _configure(gateway, "record")
            device.unplug()
        if first_half <= n < first_half + offline:
            before = device.last_frame
            device.press(n % 3, hold_ms=100)
            device.wait_frame("thanks", after=before)
            time.sleep(TUNING["mash_guard_ms"] / 1000 + 0.02)
            continue
        if n == first_half + offline:
            device.replug()
            _drain(gateway, n, say)
            _configure(gateway, "ignore")
            watcher.wait_online(result)
        case = f"SOAK{n:06d}"
        before = device.last_frame
        gateway.downlink.send(DEVICE, "prompt", _prompt(case))
        device.wait_frame("prompt", after=before)
        before = device.last_frame
        pressed = device.press(n % 3, hold_ms=100)
        chosen = device.wait_frame("chosen", after=before)
        result.feedback_ms.append((chosen["host_t"] - pressed) * 1000)
        result.ack_ms.append((watcher.wait_ack() - pressed) * 1000)
        watcher.heap(result)
        if n % 250 == 0:
            say(f"cycle {n}/{cycles}")
    watcher.wait_heartbeat(result)
    return result


def _configure(gateway: Gateway, policy: str) -> None:
    message = codec.encode({"v": 1, "k": "config", "ver": int(time.time() * 1000) % 2**31, "policy": policy,
                            "thanks_s": 1, "reasons": []})
    gateway.downlink.send(DEVICE, "config", message, retain=True)
    time.sleep(0.3)


def _drain(gateway: Gateway, expected: int, say) -> None:
    deadline = time.monotonic() + 300
    while gateway.counter("ingest_stored") < expected:
        if time.monotonic() > deadline:
            raise SoakFailed(f"the backlog did not drain: {gateway.counter('ingest_stored')} of {expected}")
        time.sleep(0.2)
    say(f"backlog drained: {expected} stored")


def _stored(path: Path) -> int:
    with sqlite3.connect(path) as conn:
        total, distinct = conn.execute("SELECT count(*), count(DISTINCT rid) FROM ratings").fetchone()
    if total != distinct:
        raise SoakFailed(f"{total - distinct} duplicate ratings")
    return total


class _Watcher:
    """Sees what the device sees from the gateway (acks) and what it says (heartbeats)."""

    def __init__(self, port: int):
        self.acks: queue.Queue = queue.Queue()
        self.statuses: queue.Queue = queue.Queue()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="soak-watcher")
        self.client.on_message = self._message
        self.client.connect("127.0.0.1", port)
        self.client.subscribe([(codec.topic(HALL, DEVICE, "ack"), 1), (codec.topic(HALL, DEVICE, "status"), 1)])
        self.client.loop_start()

    def _message(self, client, userdata, message):
        decoded = codec.decode(message.payload)
        (self.acks if decoded["k"] == "ack" else self.statuses).put((time.monotonic(), decoded))

    def wait_ack(self) -> float:
        try:
            return self.acks.get(timeout=20)[0]
        except queue.Empty:
            raise SoakFailed("no ack within 20 s") from None

    def wait_online(self, result: SoakResult) -> None:
        while True:
            try:
                _, status = self.statuses.get(timeout=30)
            except queue.Empty:
                raise SoakFailed("the device did not come online") from None
            if status["state"] == "online":
                result.free_heap.append(status["heap"])
                while not self.acks.empty():  # acks of the drained backlog are not about the next press
                    self.acks.get_nowait()
                return

    def heap(self, result: SoakResult) -> None:
        while not self.statuses.empty():
            _, status = self.statuses.get_nowait()
            if status.get("heap"):
                result.free_heap.append(status["heap"])

    def wait_heartbeat(self, result: SoakResult) -> None:
        try:
            _, status = self.statuses.get(timeout=TUNING["heartbeat_s"] * 3)
        except queue.Empty:
            raise SoakFailed("no heartbeat at the end") from None
        result.free_heap.append(status["heap"])

    def stop(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()
