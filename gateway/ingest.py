"""MQTT in: ratings and status from the devices, acknowledged only after they are on disk.

paho-mqtt with a persistent session (fixed client id, clean_session off) and manual acks: the broker keeps a
message until the gateway's PUBACK, and the PUBACK is sent only after the writer committed the message. A
gateway that dies mid-batch leaves the unacknowledged messages with the broker, which delivers them again.
"""
from __future__ import annotations

import json
import logging
import threading
from collections import defaultdict

import paho.mqtt.client as mqtt

from gateway import ratings
from gateway.store import StorageFull, Writer
from protocol import codec

log = logging.getLogger("gateway.ingest")
RESUME_CHECK_S = 5.0


class Ingest:
    def __init__(self, config: dict, writer: Writer, clock, calendar):
        self.config = config
        self.hall = config["gateway.hall"]
        self.writer = writer
        self.clock = clock
        self.calendar = calendar
        self.connected = threading.Event()
        self.paused = False
        self.stopping = False
        self.counts = defaultdict(int)  # stored, duplicate, already_rated, rejected, status, refused
        self._acks: dict[str, list] = defaultdict(list)  # device -> [(rating id, mqtt mid)] committed, not yet acked
        self._pubacks: list[int] = []
        self._lock = threading.Lock()
        self._resume_timer: threading.Timer | None = None
        writer.batch_listeners.append(self._flush)
        self.client = self._make_client()

    def _make_client(self) -> mqtt.Client:
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=self.config["mqtt.client_id"],
                             clean_session=False, protocol=mqtt.MQTTv311, manual_ack=True)
        if self.config["mqtt.username"]:
            client.username_pw_set(self.config["mqtt.username"], self.config["mqtt.password"])
        client.max_inflight_messages_set(1000)
        client.reconnect_delay_set(min_delay=1, max_delay=30)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_connect_fail = self._on_connect_fail
        client.on_message = self._on_message
        return client

    def start(self) -> None:
        self.client.connect_async(self.config["mqtt.host"], self.config["mqtt.port"], self.config["mqtt.keepalive_s"])
        self.client.loop_start()

    def stop(self) -> None:
        self.stopping = True
        if self._resume_timer:
            self._resume_timer.cancel()
        self.client.disconnect()
        self.client.loop_stop()

    # ---- paho callbacks (network thread): decode, hand to the writer, never block ----

    def _on_connect(self, client, userdata, flags, reason_code, properties):
        if reason_code.is_failure:
            log.error("broker refused the connection: %s", reason_code)
            return
        # Subscribing here restores the subscription after every reconnect.
        client.subscribe(codec.subscription(self.hall, "+", codec.UP), qos=1)
        self.connected.set()
        log.info("connected to broker %s:%s (session present: %s)", self.config["mqtt.host"],
                 self.config["mqtt.port"], flags.session_present)

    def _on_disconnect(self, client, userdata, flags, reason_code, properties):
        self.connected.clear()
        if not (self.paused or self.stopping):
            log.warning("lost the broker (%s); reconnecting", reason_code)

    def _on_connect_fail(self, client, userdata):
        log.error("cannot reach the broker at %s:%s; retrying", self.config["mqtt.host"], self.config["mqtt.port"])

    def _on_message(self, client, userdata, message):
        now = self.clock.now()
        try:
            hall, dev, msg = codec.decode_from(message.topic, message.payload)
        except codec.ProtocolError as e:
            self._reject(message, e, now)
            return
        if msg["k"] == "rating":
            rating = ratings.from_device(hall, msg, now)
            self.writer.submit(
                lambda conn: ratings.store(conn, rating, self.calendar, self.config["cases.followup_days"]),
                lambda result: self._after_rating(dev, msg["id"], message.mid, result), needs_space=True)
        else:  # status: the only other kind the subscription lets through
            self.writer.submit(lambda conn: ratings.store_status(conn, hall, msg, now),
                               lambda result: self._after_status(dev, msg, message.mid, result))

    def _reject(self, message, error: codec.ProtocolError, now: float) -> None:
        dev = _device_of(message.topic)
        ref = _rating_id_of(message.payload)
        log.warning("rejected message on %s: %s", message.topic, error)
        self.writer.submit(
            lambda conn: ratings.store_reject(conn, now, message.topic, dev, ref, error.code, error.field,
                                              error.detail, message.payload),
            lambda result: self._after_reject(dev, ref, error, message.mid, result))

    # ---- after commit (writer thread) ----

    def _after_rating(self, dev: str, rating_id: str, mid: int, result) -> None:
        if isinstance(result, Exception):
            self._refused(result)
            return
        self.counts[result] += 1
        with self._lock:
            self._acks[dev].append(rating_id)
            self._pubacks.append(mid)

    def _after_status(self, dev: str, msg: dict, mid: int, result) -> None:
        if isinstance(result, Exception):
            self._refused(result)
            return
        self.counts["status"] += 1
        with self._lock:
            self._pubacks.append(mid)
        if msg["state"] == "online":
            self.client.publish(codec.topic(self.hall, dev, "time"),
                                codec.encode({"v": 1, "k": "time", "t": int(self.clock.now()), "tz": 480}), qos=0)

    def _after_reject(self, dev, ref, error: codec.ProtocolError, mid: int, result) -> None:
        if isinstance(result, Exception):
            self._refused(result)
            return
        self.counts["rejected"] += 1
        with self._lock:
            self._pubacks.append(mid)
        if dev is not None:
            reject = {"v": 1, "k": "reject", "ref": ref, "code": error.code, "detail": str(error)[:200]}
            self.client.publish(codec.topic(self.hall, dev, "reject"), codec.encode(reject), qos=1)

    def _flush(self) -> None:
        """After each commit: one ack message per device for its stored ratings, then the PUBACKs."""
        with self._lock:
            acks, self._acks = self._acks, defaultdict(list)
            pubacks, self._pubacks = self._pubacks, []
        for dev, ids in acks.items():
            for start in range(0, len(ids), 32):
                ack = {"v": 1, "k": "ack", "ids": ids[start:start + 32]}
                self.client.publish(codec.topic(self.hall, dev, "ack"), codec.encode(ack), qos=1)
        for mid in pubacks:
            self.client.ack(mid, 1)

    def _refused(self, error: Exception) -> None:
        """Not stored, so not acknowledged: the broker keeps the message. Stop taking more until space is back."""
        self.counts["refused"] += 1
        if isinstance(error, StorageFull) and not self.paused:
            self.paused = True
            log.error("not storing ratings (%s); disconnecting so they wait at the broker", error)
            threading.Thread(target=self._pause, name="ingest-pause", daemon=True).start()
        elif not isinstance(error, StorageFull):
            log.error("could not store a message: %s", error)

    def _pause(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
        self._schedule_resume()

    def _schedule_resume(self) -> None:
        self._resume_timer = threading.Timer(RESUME_CHECK_S, self._try_resume)
        self._resume_timer.daemon = True
        self._resume_timer.start()

    def _try_resume(self) -> None:
        try:
            self.writer.call(lambda conn: None, timeout=30)  # refreshes the writer's space check
        except Exception:  # noqa: BLE001 - still unwell: check again later
            pass
        if self.writer.full:
            self._schedule_resume()
            return
        log.info("storage has room again; reconnecting to the broker")
        try:
            self.client.reconnect()
        except OSError as e:
            log.warning("broker not reachable yet (%s)", e)
            self._schedule_resume()
            return
        self.paused = False
        self.client.loop_start()


def _device_of(topic: str) -> str | None:
    parts = topic.split("/")
    return parts[3] if len(parts) == 6 and not codec.DEVICE(parts[3]) else None


def _rating_id_of(payload: bytes) -> str | None:
    """The rating id of a refused message, when it can be read, so the device can release that rating."""
    try:
        candidate = json.loads(payload).get("id")
    except (ValueError, AttributeError, UnicodeDecodeError):
        return None
    return candidate if not codec.ID(candidate) else None
