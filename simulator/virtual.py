"""Virtual evaluators: thousands of devices in one asyncio loop, for load and for fleet scenarios.

Each speaks the real protocol over its own MQTT connection, built with the shared codec and packets
(protocol/codec.py, protocol/mqttwire.py), and behaves on the wire as the firmware does: a press becomes a
rating kept until the gateway's ack, sent again after a reconnect or a silence; status is retained with a
Last Will; a prompt is open for its ttl and one press answers it. They have no screen and no flash: a
virtual device's outbox survives a network cut, not a power cut (the real firmware devices cover that).
"""
from __future__ import annotations

import asyncio
import random
import secrets
import time

from protocol import codec
from protocol import mqttwire as wire


class VirtualDevice(asyncio.Protocol):
    keepalive_s = 30
    heartbeat_s = 60.0
    resend_s = 15.0  # the firmware's resend_ms
    tick_s = 5.0  # how often a connected device checks its keepalive and unacked ratings

    def __init__(self, dev: str, hall: str, host: str, port: int, on_prompt=None, command_key: str | None = None):
        self.dev, self.hall = dev, hall
        self.command_key = command_key  # as the firmware: with a key, only what the gateway signed is obeyed
        self.unsigned = 0  # messages ignored for want of the right mac
        self.host, self.port = host, port
        self.on_prompt = on_prompt  # called as on_prompt(device, case) when a prompt arrives
        self.boot = secrets.token_hex(4)
        self.started = time.monotonic()
        self.seq = 0
        self.outbox: dict[str, bytes] = {}  # rating id -> payload, oldest first, until acked
        self.sent_at: dict[str, float] = {}
        self.pressed: dict[str, tuple] = {}  # every confirmed press: id -> (case, level, wall time)
        self.acked = 0
        self.rejected: list[dict] = []
        self.prompt: tuple[str, float] | None = None  # (case, open until, monotonic)
        self.plugged = asyncio.Event()
        self.plugged.set()
        self.online = asyncio.Event()
        self.connects = 0
        self._lost = asyncio.Event()
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._pid = 0
        self._heard = 0.0
        self._rating_topic = codec.topic(hall, dev, "rating").encode()
        self._status_topic = codec.topic(hall, dev, "status").encode()
        self._task: asyncio.Task | None = None

    # ---- lifecycle: the device owns its connection task ----

    def start(self) -> "VirtualDevice":
        self._task = asyncio.get_running_loop().create_task(self._run())
        return self

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        self._close()

    def unplug(self) -> None:
        """The network goes (cable pulled, Wi-Fi gone): no goodbye, the broker's Last Will speaks."""
        self.plugged.clear()
        self._close()

    def replug(self) -> None:
        self.plugged.set()

    # ---- what a citizen does ----

    def press(self, level: str, reasons: list[str] | None = None) -> str | None:
        """Answer the open prompt; None when there is none (the firmware shows a hint and records nothing)."""
        if self.prompt is None or time.monotonic() > self.prompt[1]:
            self.prompt = None
            return None
        case, self.prompt = self.prompt[0], None
        self.seq += 1
        rating_id = secrets.token_hex(8)
        message = {"v": 1, "k": "rating", "dev": self.dev, "boot": self.boot, "seq": self.seq, "id": rating_id,
                   "t": int(time.time()), "ms": int((time.monotonic() - self.started) * 1000), "case": case,
                   "lvl": level, "pub": True}
        if reasons:
            message["rsn"] = reasons
        self.outbox[rating_id] = codec.encode(message)
        self.pressed[rating_id] = (case, level, time.time())
        self._send_rating(rating_id)
        return rating_id

    # ---- the connection ----

    async def _run(self) -> None:
        backoff = 0.5
        loop = asyncio.get_running_loop()
        while True:
            await self.plugged.wait()
            try:
                self._lost.clear()
                await asyncio.wait_for(loop.create_connection(lambda: self, self.host, self.port), 5)
                await asyncio.wait_for(self.online.wait(), 5)
                backoff = 0.5
                await self._serve()
            except (OSError, asyncio.TimeoutError):
                pass
            self._close()
            # Full jitter: devices that lost the broker together do not all come back in the same instant.
            await asyncio.sleep(random.uniform(0, backoff) + 0.1)
            backoff = min(30.0, backoff * 2)

    async def _serve(self) -> None:
        """While connected: ping when idle, drop a silent broker, resend what waits too long, report status."""
        next_status = time.monotonic() + random.uniform(0, self.heartbeat_s)
        pinged = time.monotonic()
        while not self._lost.is_set():
            try:
                await asyncio.wait_for(self._lost.wait(), random.uniform(0.5, 1.0) * self.tick_s)
                return
            except asyncio.TimeoutError:
                pass
            now = time.monotonic()
            if now - self._heard > self.keepalive_s * 1.5:
                return
            if now - pinged > self.keepalive_s / 2:
                pinged = now
                self._write(wire.PING)
            for rating_id in [i for i, sent in self.sent_at.items() if now - sent > self.resend_s]:
                self._send_rating(rating_id)
            if now > next_status:
                next_status = now + self.heartbeat_s
                self._status()

    def connection_made(self, transport) -> None:
        self._transport = transport
        self._buffer.clear()
        self._heard = time.monotonic()
        offline = codec.encode({"v": 1, "k": "status", "dev": self.dev, "state": "offline"})
        self._write(wire.connect(self.dev, self.keepalive_s, False, (self._status_topic, offline, True, 1)))

    def connection_lost(self, exc) -> None:
        self._transport = None
        self.online.clear()
        self._lost.set()

    def data_received(self, data: bytes) -> None:
        self._heard = time.monotonic()
        self._buffer += data
        try:
            while (packet := wire.split(self._buffer)) is not None:
                kind, body, used = packet
                del self._buffer[:used]
                self._packet(kind, body)
        except ValueError:
            self._close()

    def _packet(self, kind: int, body: bytes) -> None:
        if kind == wire.CONNACK:
            if wire.refused(kind, body):
                self._close()
                return
            self.connects += 1
            self._write(wire.subscribe(self._next_pid(), [(codec.subscription(self.hall, self.dev,
                                                                              codec.DOWN).encode(), 1)]))
            self._status()
            self.sent_at.clear()
            for rating_id in list(self.outbox):
                self._send_rating(rating_id)
            self.online.set()
        elif kind & 0xF0 == wire.PUBLISH:
            topic, payload, _, ack = wire.received(kind, body)
            if ack:
                self._write(ack)
            self._message(topic.decode(), payload)

    def _message(self, topic: str, payload: bytes) -> None:
        if self.command_key and not codec.signed_by(topic, payload, self.command_key):
            self.unsigned += 1
            return
        try:
            _, _, message = codec.decode_from(topic, payload)
        except codec.ProtocolError:
            return  # the firmware logs it and carries on; so does this device
        kind = message["k"]
        if kind == "ack":
            for rating_id in message["ids"]:
                if self.outbox.pop(rating_id, None) is not None:
                    self.acked += 1
                self.sent_at.pop(rating_id, None)
        elif kind == "reject":
            self.rejected.append(message)
            if message["ref"]:
                self.outbox.pop(message["ref"], None)
                self.sent_at.pop(message["ref"], None)
        elif kind == "prompt":
            self.prompt = (message["case"], time.monotonic() + message["ttl"])
            if self.on_prompt:
                self.on_prompt(self, message["case"])
        elif kind == "cancel":
            if self.prompt and self.prompt[0] == message["case"]:
                self.prompt = None

    def _send_rating(self, rating_id: str) -> None:
        if self.online.is_set() or self._transport is not None:
            self.sent_at[rating_id] = time.monotonic()
            self._write(wire.publish(self._rating_topic, self.outbox[rating_id], self._next_pid()))

    def _status(self) -> None:
        message = {"v": 1, "k": "status", "dev": self.dev, "state": "online", "boot": self.boot, "fw": "virtual",
                   "up": int(time.monotonic() - self.started), "outbox": len(self.outbox), "t": int(time.time())}
        self._write(wire.publish(self._status_topic, codec.encode(message), self._next_pid(), retain=True))

    def _write(self, packet: bytes) -> None:
        if self._transport is not None:
            self._transport.write(packet)

    def _close(self) -> None:
        if self._transport is not None:
            self._transport.abort()

    def _next_pid(self) -> int:
        self._pid = self._pid % 65535 + 1
        return self._pid
