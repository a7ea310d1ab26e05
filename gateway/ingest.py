"""MQTT in: ratings and status from the devices, acknowledged only after they are on disk.

paho-mqtt with a persistent session (fixed client id, clean_session off) and manual acks: the broker keeps a
message until the gateway's PUBACK, and the PUBACK is sent only after the writer committed the message. A
gateway that dies mid-batch leaves the unacknowledged messages with the broker, which delivers them again.

One thread owns the paho client: it runs the network loop, decodes what arrives, hands it to the writer, and
after each commit publishes what the downlink queued (device acks first) and sends the PUBACKs the commit
released. Keeping every paho call on that thread spares the GIL hand-offs that calls from the writer thread
would cost on every packet. What goes to a device is built and signed by gateway.downlink; this module only
receives.
"""
from __future__ import annotations

import json
import logging
import select
import socket
import threading
import time
from collections import defaultdict, deque

import paho.mqtt.client as mqtt
from prometheus_client import CollectorRegistry, Counter, Histogram

from gateway import ratings
from gateway.downlink import Downlink
from gateway.registry import DeviceGate
from gateway.store import StorageFull, Writer
from protocol import codec

log = logging.getLogger("gateway.ingest")
READS_PER_WAKE = 64
RESUME_CHECK_S = 5.0
TURN_S = 0.25  # longest wait for the socket, so the registry is looked at even when nothing arrives
OUTCOMES = {  # what became of each message that arrived
    "stored": "ratings stored",
    "duplicate": "ratings received again and acknowledged again",
    "already_rated": "attempts at a case already rated (recorded, not ratings)",
    "rejected": "messages refused with a reason",
    "refused": "messages not stored (storage full), left at the broker",
    "status": "status messages recorded",
}


class Ingest:
    def __init__(self, config: dict, writer: Writer, clock, calendar, gate: DeviceGate, downlink: Downlink,
                 metrics: CollectorRegistry):
        self.config = config
        self.hall = config["gateway.hall"]
        self.writer = writer
        self.clock = clock
        self.calendar = calendar
        self.gate = gate
        self.downlink = downlink
        downlink.wake = self._wake
        self.connected = threading.Event()
        self.subscribed = threading.Event()  # the broker confirmed the subscription (and so the session)
        self.paused = False
        self.outcomes = {outcome: Counter(f"hcp_ingest_{outcome}", help_text, registry=metrics)
                         for outcome, help_text in OUTCOMES.items()}
        self.commit_to_ack = Histogram("hcp_commit_to_ack_seconds", "from a rating's commit to its device ack "
                                       "handed to the broker connection", registry=metrics,
                                       buckets=(.0005, .001, .002, .005, .01, .02, .05, .1, .2, .5, 1, 2))
        # What the current batch releases once committed, in order: (outcome, device, rating id, mid, then
        # for a reject its ref and error).
        self._committed: list[tuple] = []
        self._pubacks: deque = deque()  # message ids whose PUBACK the network thread sends next
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
        self._thread = threading.Thread(target=self._run, name="mqtt", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._wake_w.send(b"!")
            self._thread.join()
            self._thread = None

    # ---- the network thread ----

    def _run(self) -> None:
        delay = 0.0
        while not self._stop.is_set():
            try:
                delay = self._turn(delay)
            except Exception:  # noqa: BLE001 - one bad turn must not end ingest: log it, go on
                log.exception("the MQTT thread's turn failed; going on")
                self._stop.wait(0.1)
        self._send_committed()
        if self.client.socket() is not None:
            self.client.disconnect()
            self.client.loop_write()

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _turn(self, delay: float) -> float:
        """One turn of the network thread; returns the wait before the next connection attempt."""
        self.gate.poll()
        if self.paused:
            if self.client.socket() is not None:
                self._send_committed()
                self.client.disconnect()
                self.client.loop_write()  # flush what is queued, DISCONNECT last
            self._wait_for_room()
            return delay
        sock = self.client.socket()
        if sock is None:  # never connected, or paho closed a lost connection
            if self._stop.wait(delay):
                return delay
            return self._connect(delay)
        self._service(sock)
        return delay

    def _service(self, sock) -> None:
        """One turn of paho's external loop: wait for the socket or a commit, read, send, keep alive."""
        writing = [sock] if self.client.want_write() else []
        try:
            readable, _, _ = select.select([sock, self._wake_r], writing, [], TURN_S)
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
        mid = message.mid
        if msg["k"] == "rating":
            self.writer.submit_item(self._store_ratings, ratings.from_device(msg, now),
                                    lambda result: self._after(result, result, dev, msg["id"], mid),
                                    needs_space=True)
        else:  # status: the only other kind the subscription lets through
            online = msg["state"] == "online"
            self.writer.submit(lambda conn: ratings.store_status(conn, hall, msg, now),
                               lambda result: self._after(result, "status", dev, online, mid))

    def _store_ratings(self, conn, batch: list[dict]) -> list[str]:
        return ratings.store_many(conn, batch, self.calendar, self.config["cases.followup_days"])

    def _reject(self, message, error: codec.ProtocolError, now: float) -> None:
        dev = _device_of(message.topic)
        ref = _rating_id_of(message.payload)
        log.warning("rejected message on %s: %s", message.topic, error)
        mid = message.mid
        self.writer.submit(
            lambda conn: ratings.store_reject(conn, now, message.topic, dev, ref, error.code, error.field,
                                              error.detail, message.payload),
            lambda result: self._after(result, "rejected", dev, None, mid, ref, error))

    def _send_committed(self) -> None:
        """What the commits released: the downlink's messages (device acks first), then the PUBACKs."""
        self.downlink.drain(self._publish, self.commit_to_ack.observe)
        while self._pubacks:
            self.client.ack(self._pubacks.popleft(), 1)

    def _publish(self, topic: str, payload: bytes, retain: bool) -> None:
        self.client.publish(topic, payload, qos=1, retain=retain)

    # ---- after commit (writer thread): note what to send; the network thread sends it ----

    def _after(self, result, outcome: str, dev: str | None, detail, mid: int, ref=None, error=None) -> None:
        """A message's write is settled: count it and note what it releases. `detail` is the rating id of a
        rating, whether a status says online."""
        if isinstance(result, Exception):
            self._refused(result)
            return
        self.outcomes[outcome].inc()
        self._committed.append((outcome, dev, detail, mid, ref, error))

    def _release_batch(self) -> None:
        """After each commit: queue what it released (device acks grouped per device), then wake the network
        thread. Nothing here went out before its commit."""
        if not self._committed:
            return
        committed, self._committed = self._committed, []
        acks: dict[str, list] = defaultdict(list)
        mids = []
        for outcome, dev, detail, mid, ref, error in committed:
            if outcome == "status":
                if detail:  # came online: its clock starts from zero
                    self.downlink.time(dev)
            elif outcome == "rejected":
                # No device to answer (the topic was not one of ours), or one the registry does not know: no
                # reject, which would make it drop the rating; it keeps it until someone registers it.
                if dev is not None and error.code not in ("unknown_device", "revoked"):
                    self.downlink.reject(dev, ref, error.code, str(error))
            else:
                acks[dev].append(detail)
            mids.append(mid)
        self.downlink.acks(acks, time.monotonic())
        self._pubacks.extend(mids)  # after the device acks: the network thread sends those first
        self._wake()

    def _wake(self) -> None:
        try:
            self._wake_w.send(b"!")
        except BlockingIOError:  # already woken more than enough
            pass

    def _refused(self, error: Exception) -> None:
        """Not stored, so not acknowledged: the broker keeps the message. Stop taking more until space is back."""
        self.outcomes["refused"].inc()
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

