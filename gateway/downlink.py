"""Everything the gateway says to a device: built here, signed with the device's command key, and queued for
the MQTT thread (gateway.ingest), which owns the client and publishes it.

Prompts, cancels and configurations come from the case API and the registry; acks, rejects and the time from
ingest after a commit. Signing happens here, on the caller's thread, not on the MQTT thread.
"""
from __future__ import annotations

import logging
import time
from collections import deque
from typing import Callable

from gateway import prompts
from protocol import codec

log = logging.getLogger("gateway.downlink")
ACK_IDS_MAX = 32  # ids one ack may carry (protocol/PROTOCOL.md)
CHINA_TZ_MINUTES = 480


class Downlink:
    def __init__(self, hall: str, keys: Callable[[str], str | None], clock):
        self.hall = hall
        self.keys = keys  # device -> its command key, or None (the device checks no mac)
        self.clock = clock
        # (topic, signed payload, retain, when committed or None): what the MQTT thread publishes next
        self.queue: deque = deque()
        self.wake: Callable[[], None] = lambda: None  # set by the MQTT thread's owner

    def send(self, dev: str, kind: str, payload: bytes, retain: bool = False, committed_at: float | None = None,
             wake: bool = True) -> None:
        """Sign an encoded message and queue it for `dev` (QoS 1)."""
        topic = codec.topic(self.hall, dev, kind)
        key = self.keys(dev)
        self.queue.append((topic, codec.sign(topic, payload, key) if key else payload, retain, committed_at))
        if wake:
            self.wake()

    def prompt(self, dev: str, case_ref: str, text: str, url: str, ttl_s: int) -> None:
        """Ask the evaluator to rate a case; `text` is already masked (no full name ever goes to a device)."""
        self.send(dev, "prompt", codec.encode(prompts.prompt(case_ref, text, url, ttl_s)))

    def cancel(self, dev: str, case_ref: str) -> None:
        """Withdraw a prompt: the case was cancelled or rated on the phone."""
        self.send(dev, "cancel", codec.encode({"v": 1, "k": "cancel", "case": case_ref}))

    def config(self, dev: str, payload: bytes) -> None:
        """The device's configuration, retained at the broker so it gets it whenever it connects."""
        self.send(dev, "config", payload, retain=True)

    # ---- from ingest, after a commit: queued together, one wake for the batch ----

    def acks(self, ids_by_device: dict[str, list[str]], committed_at: float) -> None:
        """The ratings now on disk, one message per device and up to 32 ids."""
        for dev, ids in ids_by_device.items():
            for start in range(0, len(ids), ACK_IDS_MAX):
                ack = {"v": 1, "k": "ack", "ids": ids[start:start + ACK_IDS_MAX]}
                self.send(dev, "ack", codec.encode(ack), committed_at=committed_at, wake=False)

    def reject(self, dev: str, ref: str | None, code: str, detail: str) -> None:
        reject = {"v": 1, "k": "reject", "ref": ref, "code": code, "detail": detail[:200]}
        self.send(dev, "reject", codec.encode(reject), wake=False)

    def time(self, dev: str) -> None:
        """The time, for a device that just came online (its clock starts at zero)."""
        message = {"v": 1, "k": "time", "t": int(self.clock.now()), "tz": CHINA_TZ_MINUTES}
        self.send(dev, "time", codec.encode(message), wake=False)

    def drain(self, publish: Callable[[str, bytes, bool], None], on_ack: Callable[[float], None]) -> None:
        """On the MQTT thread: publish everything queued; `on_ack(seconds since commit)` for each ack."""
        while self.queue:
            topic, payload, retain, committed_at = self.queue.popleft()
            try:
                publish(topic, payload, retain)
            except ValueError as e:  # paho refuses it (a topic no device can have): drop it, keep the rest going
                log.error("dropped a message the MQTT client refused on %s: %s", topic[:80], e)
                continue
            if committed_at is not None:
                on_ack(time.monotonic() - committed_at)
