"""MQTT in: ratings and status from the devices, acknowledged only after they are on disk.

paho-mqtt with a persistent session (fixed client id, clean_session off) and manual acks: the broker keeps a
message until the gateway's PUBACK, and the PUBACK is sent only after the writer committed the message. A
gateway that dies mid-batch leaves the unacknowledged messages with the broker, which delivers them again.

One thread owns the paho client: it runs the network loop, decodes what arrives, hands it to the writer, and
sends the device acks and PUBACKs the writer's commits release. Keeping every paho call on that thread spares
the GIL hand-offs that calls from the writer thread would cost on every packet.
"""
from __future__ import annotations

import json
import logging
import select
import socket
import threading
from collections import defaultdict, deque

import paho.mqtt.client as mqtt

from gateway import db, ratings
from gateway.store import StorageFull, Writer
from protocol import codec

log = logging.getLogger("gateway.ingest")
READS_PER_WAKE = 64
RESUME_CHECK_S = 5.0
REGISTRY_CHECK_S = 5.0


class DeviceGate:
    """Which devices may send: registered and not revoked (mqtt.registered_only). Read from the registry
    every few seconds, and at once when the gateway itself changes it."""

    def __init__(self, config: dict, clock):
        self.enabled = config["mqtt.registered_only"]
        self.path = config["store.path"]
        self.clock = clock
        self.allowed: set[str] = set()
        self.revoked: set[str] = set()
        self.keys: dict[str, str] = {}  # device -> command key: what the gateway signs its messages to it with
        self.checked_at = float("-inf")

    def refresh(self) -> None:
        reader = db.connect(self.path, readonly=True)
        try:
            rows = reader.execute("SELECT dev, revoked_at IS NOT NULL, command_key FROM devices").fetchall()
        finally:
            reader.conn.close()
        self.allowed = {dev for dev, revoked, _ in rows if not revoked}
        self.revoked = {dev for dev, revoked, _ in rows if revoked}
        self.keys = {dev: key for dev, revoked, key in rows if key and not revoked}
        self.checked_at = self.clock.now()

    def admit(self, dev: str, command_key: str | None = None) -> None:
        """A device just registered, or given a new command key (a revoked one stays revoked)."""
        if dev not in self.revoked:
            self.allowed.add(dev)
            if command_key:
                self.keys[dev] = command_key

    def refusal(self, dev: str) -> str | None:
        """None if `dev` may send, else the reject code."""
        if not self.enabled or dev in self.allowed:
            return None
        if self.clock.now() - self.checked_at > REGISTRY_CHECK_S:  # registered a moment ago, perhaps
            self.refresh()
            if dev in self.allowed:
                return None
        return "revoked" if dev in self.revoked else "unknown_device"


class Ingest:
    def __init__(self, config: dict, writer: Writer, clock, calendar):
        self.config = config
        self.hall = config["gateway.hall"]
        self.writer = writer
        self.clock = clock
        self.calendar = calendar
        self.connected = threading.Event()
        self.subscribed = threading.Event()  # the broker confirmed the subscription (and so the session)
        self.paused = False
        self.gate = DeviceGate(config, clock)
        self.counts = defaultdict(int)  # stored, duplicate, already_rated, rejected, status, refused
        # What the current batch releases once committed: (device, rating id, topic, payload, mid) where a
        # rating has a device and rating id, anything else a topic and payload to publish (or none).
        self._committed: list[tuple] = []
        self._outgoing: deque = deque()  # committed batches waiting for the network thread: (acks, sends)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        # The writer wakes the network thread through this pair when a commit released acks to send.
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        writer.batch_listeners.append(self._release_batch)
        self.client = self._make_client()

    def _make_client(self) -> mqtt.Client:
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=self.config["mqtt.client_id"],
                             clean_session=False, protocol=mqtt.MQTTv311, manual_ack=True)
        if self.config["mqtt.tls_ca"]:
            client.tls_set(ca_certs=self.config["mqtt.tls_ca"])  # verifies the broker's certificate and name
        if self.config["mqtt.username"]:
            client.username_pw_set(self.config["mqtt.username"], self.config["mqtt.password"])
        # No client-side window for our acks: with one, paho rescans its whole outgoing queue on every
        # PUBACK (quadratic under a reconnect storm). Acks are bounded by what the broker already sent us.
        client.max_inflight_messages_set(0)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_subscribe = lambda *args: self.subscribed.set()
        client.on_message = self._on_message
        return client

    def start(self) -> None:
        self.gate.refresh()
        self._thread = threading.Thread(target=self._run, name="mqtt", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._wake_w.send(b"!")
            self._thread.join()
            self._thread = None

    def send(self, topic: str, payload: bytes, retain: bool = False) -> None:
        """Publish from any thread (QoS 1): queued for the network thread, which owns the client."""
        self._outgoing.append(({}, [(topic, payload, None, retain)]))
        self._wake()

    # ---- the network thread ----

    def _run(self) -> None:
        delay = 0.0
        while not self._stop.is_set():
            if self.paused:
                if self.client.socket() is not None:
                    self._send_committed()
                    self.client.disconnect()
                    self.client.loop_write()  # flush what is queued, DISCONNECT last
                self._wait_for_room()
                continue
            sock = self.client.socket()
            if sock is None:  # never connected, or paho closed a lost connection
                if self._stop.wait(delay):
                    break
                delay = self._connect(delay)
                continue
            self._service(sock)
        self._send_committed()
        if self.client.socket() is not None:
            self.client.disconnect()
            self.client.loop_write()

    def _service(self, sock) -> None:
        """One turn of paho's external loop: wait for the socket or a commit, read, send, keep alive."""
        writing = [sock] if self.client.want_write() else []
        try:
            readable, _, _ = select.select([sock, self._wake_r], writing, [], 1.0)
        except (OSError, ValueError):  # the socket closed under us: reconnect next turn
            return
        if self._wake_r in readable:
            while True:
                try:
                    self._wake_r.recv(4096)
                except BlockingIOError:
                    break
        if sock in readable:
            for _ in range(READS_PER_WAKE):  # paho reads a few packets per call; drain what is there
                if self.client.loop_read() != mqtt.MQTT_ERR_SUCCESS:
                    return
        self._send_committed()
        if self.client.socket() is not None:
            if self.client.want_write():
                self.client.loop_write()
            self.client.loop_misc()

    def _connect(self, delay: float) -> float:
        """Connect (or reconnect); return the wait before the next try: capped exponential backoff."""
        host, port = self.config["mqtt.host"], self.config["mqtt.port"]
        try:
            self.client.connect(host, port, self.config["mqtt.keepalive_s"])
            # paho leaves Nagle on: a lone ack or PUBACK would wait for the previous segment's TCP ack.
            self.client.socket().setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            return 1.0  # should this connection drop (or be refused), wait a moment before the next
        except OSError as e:
            log.error("cannot reach the broker at %s:%s (%s); retrying", host, port, e)
            return min(30.0, max(1.0, delay * 2))

    def _wait_for_room(self) -> None:
        if self._stop.wait(RESUME_CHECK_S):
            return
        try:
            self.writer.call(lambda conn: None, timeout=30)  # lets the writer look at the space again
        except Exception:  # noqa: BLE001 - still unwell: check again later
            return
        if not self.writer.full:
            log.info("storage has room again; reconnecting to the broker")
            self.paused = False

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
        self.subscribed.clear()
        if not (self.paused or self._stop.is_set()):
            log.warning("lost the broker (%s); reconnecting", reason_code)

    def _on_message(self, client, userdata, message):
        now = self.clock.now()
        try:
            hall, dev, msg = codec.decode_from(message.topic, message.payload)
        except codec.ProtocolError as e:
            self._reject(message, e, now)
            return
        refusal = self.gate.refusal(dev)
        if refusal:
            self._reject(message, codec.ProtocolError(refusal, "dev", f"device {dev} may not send here"), now)
            return
        if msg["k"] == "rating":
            self.writer.submit_item(self._store_ratings, ratings.from_device(hall, msg, now),
                                    lambda result: self._after_rating(dev, msg["id"], message.mid, result),
                                    needs_space=True)
        else:  # status: the only other kind the subscription lets through
            self.writer.submit(lambda conn: ratings.store_status(conn, hall, msg, now),
                               lambda result: self._after_status(dev, msg, message.mid, result))

    def _store_ratings(self, conn, batch: list[dict]) -> list[str]:
        return ratings.store_many(conn, batch, self.calendar, self.config["cases.followup_days"])

    def _reject(self, message, error: codec.ProtocolError, now: float) -> None:
        dev = _device_of(message.topic)
        ref = _rating_id_of(message.payload)
        log.warning("rejected message on %s: %s", message.topic, error)
        self.writer.submit(
            lambda conn: ratings.store_reject(conn, now, message.topic, dev, ref, error.code, error.field,
                                              error.detail, message.payload),
            lambda result: self._after_reject(dev, ref, error, message.mid, result))

    def _send_committed(self) -> None:
        """Device acks (one message per device and batch), rejects, time, then the PUBACKs to the broker."""
        while self._outgoing:
            acks, sends = self._outgoing.popleft()
            for dev, ids in acks.items():
                for start in range(0, len(ids), 32):
                    ack = {"v": 1, "k": "ack", "ids": ids[start:start + 32]}
                    topic = codec.topic(self.hall, dev, "ack")
                    self.client.publish(topic, self._signed(dev, topic, codec.encode(ack)), qos=1)
            for topic, payload, mid, *retain in sends:
                if topic is not None:
                    payload = self._signed(topic.split("/")[3], topic, payload)
                    self.client.publish(topic, payload, qos=1, retain=bool(retain and retain[0]))
                if mid is not None:
                    self.client.ack(mid, 1)

    def _signed(self, dev: str, topic: str, payload: bytes) -> bytes:
        """Every message to a device that has a command key carries the mac it checks (protocol/codec.py)."""
        key = self.gate.keys.get(dev)
        return codec.sign(topic, payload, key) if key else payload

    # ---- after commit (writer thread): note what to send; the network thread sends it ----

    def _after_rating(self, dev: str, rating_id: str, mid: int, result) -> None:
        if isinstance(result, Exception):
            self._refused(result)
            return
        self.counts[result] += 1
        self._committed.append((dev, rating_id, None, None, mid))

    def _after_status(self, dev: str, msg: dict, mid: int, result) -> None:
        if isinstance(result, Exception):
            self._refused(result)
            return
        self.counts["status"] += 1
        if msg["state"] == "online":
            time_sync = codec.encode({"v": 1, "k": "time", "t": int(self.clock.now()), "tz": 480})
            self._committed.append((None, None, codec.topic(self.hall, dev, "time"), time_sync, mid))
        else:
            self._committed.append((None, None, None, None, mid))

    def _after_reject(self, dev, ref, error: codec.ProtocolError, mid: int, result) -> None:
        if isinstance(result, Exception):
            self._refused(result)
            return
        self.counts["rejected"] += 1
        # No device to answer (the topic was not one of ours), or one the registry does not know: no reject,
        # which would make it drop the rating. It keeps it, sending again, until someone registers it.
        if dev is None or error.code in ("unknown_device", "revoked"):
            self._committed.append((None, None, None, None, mid))
            return
        reject = {"v": 1, "k": "reject", "ref": ref, "code": error.code, "detail": str(error)[:200]}
        self._committed.append((None, None, codec.topic(self.hall, dev, "reject"), codec.encode(reject), mid))

    def _release_batch(self) -> None:
        """After each commit: hand what it released to the network thread."""
        if not self._committed:
            return
        committed, self._committed = self._committed, []
        acks: dict[str, list] = defaultdict(list)
        for dev, rating_id, _, _, _ in committed:
            if dev is not None:
                acks[dev].append(rating_id)
        self._outgoing.append((acks, [(topic, payload, mid) for _, _, topic, payload, mid in committed]))
        self._wake()

    def _wake(self) -> None:
        try:
            self._wake_w.send(b"!")
        except BlockingIOError:  # already woken more than enough
            pass

    def _refused(self, error: Exception) -> None:
        """Not stored, so not acknowledged: the broker keeps the message. Stop taking more until space is back."""
        self.counts["refused"] += 1
        if isinstance(error, StorageFull) and not self.paused:
            self.paused = True
            log.error("not storing ratings (%s); disconnecting so they wait at the broker", error)
        elif not isinstance(error, StorageFull):
            log.error("could not store a message: %s", error)


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

