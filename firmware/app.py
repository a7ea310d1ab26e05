# The evaluator application: prompts from the gateway, presses from the citizen, ratings to the outbox and
# on to the gateway, status back. It talks to hardware only through the board (boards/*.py).
import asyncio
import binascii
import gc
import os
import time

import errors
import settings
from buttons import Buttons
from font import Font
from mqtt import MQTTClient
from outbox import Outbox, OutboxFull
from protocol import codec
from screens import Screens

VERSION = "0.1.0"


def tls_context(flash, ca_file):
    """A TLS client context trusting only the hall CA (ca.der on flash, written at provisioning); None when
    the site uses plain MQTT. The tls module is imported only then: it costs heap."""
    if not ca_file:
        return None
    import tls

    context = tls.SSLContext(tls.PROTOCOL_TLS_CLIENT)  # a client context verifies the broker's certificate
    with open(flash + "/" + ca_file, "rb") as f:
        context.load_verify_locations(f.read())
    return context


class App:
    window = 8  # ratings in flight at once; the rest wait in the outbox, oldest first
    resend_ms = 15000  # a rating not acked by then is sent again (the gateway dedupes)
    heartbeat_s = 60
    mash_guard_ms = 1500  # after a counted press, more presses are not ratings

    TUNABLE = ("window", "resend_ms", "heartbeat_s", "mash_guard_ms")

    def __init__(self, board, site):
        self.board = board
        self.site = site
        for name, value in (site.get("tuning") or {}).items():  # a lab's or a soak run's timings
            if name in self.TUNABLE:
                setattr(self, name, value)
        self.dev, self.hall = site["device"], site["hall"]
        # With a command key (from provisioning), only messages the gateway signed with it are obeyed: a
        # rogue publisher on the hall network cannot show a fake QR code or ack away a rating.
        self.command_key = site.get("command_key")
        flash = board.flash
        self.config_path = flash + "/config.json"
        self.config = settings.load_config(self.config_path)
        self.outbox = Outbox(flash + "/outbox.log")
        self.screens = Screens(board.display, Font(flash + "/font.bin"))
        self.boot = binascii.hexlify(os.urandom(4)).decode()
        self._up_ms, self._up_mark = 0, time.ticks_ms()  # ticks wrap after days; uptime must not
        self.clock_offset = None  # wall clock = uptime + offset, once the gateway told us the time
        self.prompt = None  # the case being rated: {"case", "text", "qr", "until"}
        self.busy_until = 0  # presses before then are the rest of a mashing burst, not ratings
        self.screen_until = 0  # a thanks, hint or error screen shows until then, then idle again
        self.in_flight = {}  # rating id (bytes) -> ticks when sent
        self.sent = asyncio.Event()
        self.last_error = None
        status = codec.topic(self.hall, self.dev, "status")
        self.status_topic = status.encode()
        self.rating_topic = codec.topic(self.hall, self.dev, "rating").encode()
        offline = codec.encode({"v": 1, "k": "status", "dev": self.dev, "state": "offline"})
        self.mqtt = MQTTClient(board.net, site["broker"], site["port"], self.dev, self._on_message,
                               subscriptions=[(codec.subscription(self.hall, self.dev, codec.DOWN).encode(), 1)],
                               will=(self.status_topic, offline, True, 1),
                               user=site.get("user"), password=site.get("password"),
                               tls=tls_context(flash, site.get("ca")))
        self.buttons = Buttons(board.buttons)

    async def run(self):
        self.screens.offline = True
        self.screens.idle(self.config)
        tasks = [self._presses(), self._sender(), self._heartbeat(), self._link(), self._ticker()]
        await asyncio.gather(*[asyncio.create_task(t) for t in tasks])

    # ---- presses ----

    async def _presses(self):
        while True:
            await self.buttons.event.wait()
            for index, at in self.buttons.take():
                await self._press(index, at)

    async def _press(self, index, at):
        now = time.ticks_ms()
        if time.ticks_diff(self.busy_until, now) > 0:
            return  # one press counts: the rest of a mashing burst is ignored
        if self.prompt is None:
            if self.config["policy"] == "record":
                await self._rate(index, None)
            else:
                self._transient(self.screens.hint, "请在办理完成后评价", 2000)
            return
        prompt, self.prompt = self.prompt, None
        self.screens.prompt(prompt["text"], prompt["qr"], 0, chosen=index)  # visible at once
        self.board.buzzer.beep(40)
        await self._rate(index, prompt["case"])

    async def _rate(self, index, case):
        level = codec.LEVELS[index]
        reasons = []
        if level in codec.BAD_LEVELS and self.config["reasons"]:
            reasons = await self._ask_reasons()
        try:
            self._record(level, case, reasons)
        except OutboxFull:
            self.last_error = "outbox full"
            self._transient(self.screens.error, "存储已满,请联系工作人员", 3000)
            return
        self._transient(self.screens.thanks, None, self.config["thanks_s"] * 1000)

    async def _ask_reasons(self):
        codes = self.config["reasons"]
        self.buttons.take()
        deadline = time.ticks_add(time.ticks_ms(), self.config["reason_s"] * 1000)
        while True:
            left = time.ticks_diff(deadline, time.ticks_ms())
            if left <= 0:
                return []
            self.screens.reasons(codes, (left + 999) // 1000)
            try:
                await asyncio.wait_for_ms(self.buttons.event.wait(), min(left, 1000))
            except asyncio.TimeoutError:
                continue
            for index, _ in self.buttons.take():
                if index < len(codes):
                    return [codes[index]]

    def _record(self, level, case, reasons):
        """Write the rating to flash (before the thanks screen) and let the sender publish it."""
        rating_id = os.urandom(8)
        seq = self.outbox.next_seq
        message = {"v": 1, "k": "rating", "dev": self.dev, "boot": self.boot, "seq": seq,
                   "id": binascii.hexlify(rating_id).decode(), "t": self.now(), "ms": self.uptime_ms(),
                   "case": case, "lvl": level, "pub": True}
        if reasons:
            message["rsn"] = reasons
        self.outbox.add(rating_id, codec.encode(message), seq)
        self.sent.set()  # wake the sender: a new press goes out at once

    # ---- to the gateway ----

    async def _sender(self):
        """Publish waiting ratings oldest first, a window at a time; resend those not acked in time."""
        while True:
            await self.mqtt.up.wait()
            now = time.ticks_ms()
            for rating_id, payload in self.outbox.waiting(self.window):
                sent_at = self.in_flight.get(rating_id)
                if sent_at is None or time.ticks_diff(now, sent_at) > self.resend_ms:
                    if await self.mqtt.publish(self.rating_topic, payload, qos=1):
                        self.in_flight[rating_id] = now
            self.sent.clear()
            try:
                await asyncio.wait_for_ms(self.sent.wait(), 1000)
            except asyncio.TimeoutError:
                pass

    async def _link(self):
        """On every (re)connect: announce online, resend what was in flight; show offline while down."""
        while True:
            await self.mqtt.up.wait()
            self.in_flight = {}
            self.screens.offline = False
            self._redraw()
            await self._status("online")
            self.sent.set()
            await self.mqtt.down.wait()
            self.screens.offline = True
            self._redraw()

    async def _heartbeat(self):
        while True:
            await asyncio.sleep(self.heartbeat_s)
            await self._status("online")

    async def _status(self, state):
        gc.collect()
        message = {"v": 1, "k": "status", "dev": self.dev, "state": state, "boot": self.boot, "fw": VERSION,
                   "up": self.uptime_ms() // 1000, "heap": gc.mem_free(), "rssi": self.board.net.rssi(),
                   "outbox": len(self.outbox), "err": self.last_error, "cfg": self.config["ver"], "t": self.now()}
        await self.mqtt.publish(self.status_topic, codec.encode(message), qos=1, retain=True)

    # ---- from the gateway ----

    def _on_message(self, topic, payload, retained):
        name = topic.decode()
        if self.command_key and not codec.signed_by(name, payload, self.command_key):
            self._error("unsigned message ignored: " + name[-16:])
            return
        try:
            hall, dev, message = codec.decode_from(name, payload)
        except codec.ProtocolError as e:
            self._error("bad message: " + str(e))
            return
        kind = message["k"]
        if kind == "ack":
            self._release([binascii.unhexlify(i) for i in message["ids"]])
        elif kind == "reject":
            if message["ref"] is not None:
                self._release([binascii.unhexlify(message["ref"])])
            self._error("rejected: " + message["code"])
        elif kind == "prompt":
            until = time.ticks_add(time.ticks_ms(), message["ttl"] * 1000)
            self.prompt = {"case": message["case"], "text": message["text"], "qr": message["qr"], "until": until}
            self.busy_until = time.ticks_ms()
            self.buttons.take()  # presses made before the prompt are not about this case
            self.screens.prompt(message["text"], message["qr"], message["ttl"])
            self.board.led.on(True)
        elif kind == "cancel":
            if self.prompt and self.prompt["case"] == message["case"]:
                self._end_prompt()
        elif kind == "config":
            self._configure(message)
        elif kind == "time":
            self.clock_offset = message["t"] - self.uptime_ms() // 1000

    def _release(self, rating_ids):
        self.outbox.remove(rating_ids)
        for rating_id in rating_ids:
            self.in_flight.pop(rating_id, None)
        self.sent.set()

    def _configure(self, message):
        config = dict(settings.DEFAULTS)
        config.update(message)
        if any(code not in codec.REASON_CODES for code in config["reasons"]):
            self._error("bad config")
            return
        settings.save_config(self.config_path, message)
        self.config = config
        self.board.display.brightness(config["bright"])
        self.board.buzzer.volume = config["volume"]
        self._redraw()
        asyncio.create_task(self._status("online"))  # reports the applied version

    def _error(self, text):
        self.last_error = text[:80]
        errors.log(self.board.flash, text)

    # ---- time and screens ----

    async def _ticker(self):
        """Once a second: count the prompt down, end it when its time is up, go back to idle."""
        while True:
            await asyncio.sleep_ms(1000)
            self.board.watchdog.feed()  # a wedged event loop stops feeding it, and the board resets
            prompt = self.prompt
            if prompt is None:
                if self.screens.kind not in ("idle", "reasons") and time.ticks_diff(self.screen_until,
                                                                                   time.ticks_ms()) <= 0:
                    self.screens.idle(self.config)  # the thanks, hint or error screen has had its time
                continue
            left = time.ticks_diff(prompt["until"], time.ticks_ms())
            if left <= 0:
                self._end_prompt()
            else:
                self.screens.prompt(prompt["text"], prompt["qr"], (left + 999) // 1000)

    def _end_prompt(self):
        self.prompt = None
        self.board.led.on(False)
        self.screens.idle(self.config)

    def _redraw(self):
        if self.prompt is None and time.ticks_diff(self.screen_until, time.ticks_ms()) <= 0:
            self.screens.idle(self.config)

    def _transient(self, show, text, ms):
        """A screen that gives way to idle after `ms`; presses count again after the mashing guard."""
        if text is None:
            show()
        else:
            show(text)
        now = time.ticks_ms()
        self.screen_until = time.ticks_add(now, ms)
        self.busy_until = time.ticks_add(now, self.mash_guard_ms)

    def uptime_ms(self):
        now = time.ticks_ms()
        self._up_ms += time.ticks_diff(now, self._up_mark)
        self._up_mark = now
        return self._up_ms

    def now(self):
        if self.clock_offset is None:
            return None
        return self.clock_offset + self.uptime_ms() // 1000
