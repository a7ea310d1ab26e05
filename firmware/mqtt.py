# A small MQTT 3.1.1 client for asyncio on MicroPython (after Peter Hinch's mqtt_as): it owns its
# connection task, reconnects with capped backoff and jitter, keeps alive, and announces the link through
# the `up` and `down` events. The application never sees a socket error.
#
# QoS 1 publishes are not retried here: the outbox keeps every rating until the gateway's own ack, and
# resends it after a reconnect, which is what makes delivery safe. The broker's PUBACK is only read.
import asyncio
import os
import struct
import time

from protocol import mqttwire as wire


class MQTTClient:
    keepalive_s = 30
    connect_timeout_ms = 5000
    backoff_first_ms = 500
    backoff_max_ms = 30000

    def __init__(self, net, host, port, client_id, on_message, subscriptions=(), will=None,
                 user=None, password=None, clean=True, tls=None):
        self.net = net  # the board's network: open_connection(host, port, tls) and isconnected()
        self.tls = tls  # an SSLContext that trusts the hall CA, or None for plain MQTT
        self.host, self.port = host, port
        self.client_id = client_id
        self.on_message = on_message  # called as on_message(topic, payload, retained)
        self.subscriptions = subscriptions  # [(topic, qos)], renewed on every connect
        self.will = will  # (topic, payload, retain, qos) or None
        self.user, self.password = user, password
        self.clean = clean
        self.up = asyncio.Event()
        self.down = asyncio.Event()
        self.connects = 0
        self.last_error = None
        self._writer = None
        self._pid = 0
        self._heard = 0
        self._lock = asyncio.Lock()
        self._task = asyncio.create_task(self._run())

    def deinit(self):
        self._task.cancel()
        self._close()

    @property
    def connected(self):
        return self._writer is not None

    async def publish(self, topic, payload, qos=1, retain=False):
        """Send one message if connected; return False (never raise) when the link is down."""
        if self._writer is None:
            return False
        return await self._send(wire.publish(topic, payload, self._next_pid() if qos else 0, retain))

    async def disconnect(self):
        await self._send(wire.GOODBYE)
        self._close()

    # ---- the connection task ----

    async def _run(self):
        backoff = self.backoff_first_ms
        while True:
            try:
                await self._connect()
                backoff = self.backoff_first_ms
                self.connects += 1
                self.down.clear()
                self.up.set()
                await self._serve()
            except (OSError, EOFError, ValueError, asyncio.TimeoutError) as e:
                self.last_error = "mqtt: " + (str(e) or type(e).__name__)
            self._close()
            # Full jitter: a hall's devices that lost the broker together do not return together.
            await asyncio.sleep_ms(_random_below(backoff) + 100)
            backoff = min(self.backoff_max_ms, backoff * 2)

    async def _connect(self):
        reader, writer = await asyncio.wait_for_ms(self.net.open_connection(self.host, self.port, self.tls),
                                                   self.connect_timeout_ms)
        self._reader, self._writer = reader, writer
        writer.write(wire.connect(self.client_id, self.keepalive_s, self.clean, self.will, self.user,
                                  self.password))
        await writer.drain()
        kind, data = await asyncio.wait_for_ms(self._packet(), self.connect_timeout_ms)
        why = wire.refused(kind, data)
        if why:
            raise ValueError(why)
        if self.subscriptions:
            writer.write(wire.subscribe(self._next_pid(), self.subscriptions))
            await writer.drain()

    async def _serve(self):
        """Read packets until the link fails. A watcher pings when idle and cuts the read short when the
        network drops or the broker falls silent (a closed socket alone does not wake a pending read)."""
        reader = asyncio.create_task(self._read_packets())
        watcher = asyncio.create_task(self._watch(reader))
        try:
            await reader
        except asyncio.CancelledError:
            raise OSError("link lost") from None
        finally:
            watcher.cancel()

    async def _read_packets(self):
        while True:
            kind, data = await self._packet()
            self._heard = time.ticks_ms()
            if kind & 0xF0 == wire.PUBLISH:
                await self._received(kind, data)

    async def _watch(self, reader):
        self._heard = pinged = time.ticks_ms()
        while True:
            await asyncio.sleep_ms(500)
            now = time.ticks_ms()
            if not self.net.isconnected() or time.ticks_diff(now, self._heard) > self.keepalive_s * 1500:
                reader.cancel()
                return
            if time.ticks_diff(now, pinged) > self.keepalive_s * 500:
                pinged = now
                await self._send(wire.PING)

    async def _received(self, kind, data):
        topic, payload, retained, ack = wire.received(kind, data)
        if ack:
            await self._send(ack)
        self.on_message(topic, payload, retained)

    async def _packet(self):
        head = await self._reader.readexactly(1)
        length, shift = 0, 0
        while True:
            byte = (await self._reader.readexactly(1))[0]
            length |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                break
            if shift > 21:
                raise ValueError("bad packet length")
        data = await self._reader.readexactly(length) if length else b""
        return head[0], data

    async def _send(self, packet):
        writer = self._writer
        if writer is None:
            return False
        async with self._lock:  # packets from several tasks must not interleave
            try:
                writer.write(packet)
                await writer.drain()
                return True
            except OSError as e:
                self.last_error = "mqtt: " + str(e)
                self._close()
                return False

    def _close(self):
        writer, self._writer = self._writer, None
        if writer is not None:
            try:
                writer.close()
            except OSError:
                pass
        if self.up.is_set():
            self.up.clear()
            self.down.set()

    def _next_pid(self):
        self._pid = self._pid % 65535 + 1
        return self._pid


def _random_below(n):
    return struct.unpack("<I", os.urandom(4))[0] % max(1, n)
