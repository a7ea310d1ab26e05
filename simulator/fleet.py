"""A simulated hall day (`hcp-sim run`, `hcp-sim demo --headless`), then the check that nothing was lost.

Windows finish cases (办结) through the gateway's case API as a window system does; each window's evaluator
is prompted; a citizen presses a level, or walks away and perhaps rates later on the QR page. A few windows
have the real firmware on the MicroPython unix port (pressed through the simulated board), the rest virtual
devices (simulator/virtual.py). Faults follow the scenario's timeline. After closing, simulated days pass
so default ratings come due, and the province must hold every case exactly once:

- every confirmed press (a virtual device's recorded rating, a firmware device's thanks screen) and every
  QR rating the page accepted, with the level the citizen chose;
- a default rating (pf 7) for every case nobody rated;
- nothing twice; whatever the province refused is listed as a dead letter with its reason.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import random
import threading
import time
import urllib.error
from dataclasses import dataclass, field
from pathlib import Path

from protocol import codec, upstream
from simulator.device import DeviceError, SimDevice
from simulator.hall import AREA, Hall
from simulator.scenario import Scenario
from simulator.virtual import VirtualDevice

PROFILE = upstream.Profile(area_code=AREA)
PF = PROFILE.channel_codes
PROMPT_WAIT_S = 5.0  # how long a citizen looks at a blank evaluator before leaving


@dataclass
class Case:
    ref: str
    window: str
    dev: str
    url: str = ""
    outcome: str | None = None  # press | qr | None: nobody rated it (a default is due)
    level: str | None = None


@dataclass
class Result:
    cases: int = 0
    pressed: int = 0  # confirmed presses
    phone: int = 0  # ratings the QR page accepted
    defaults: int = 0  # default ratings at the province
    stored: int = 0  # ratings in the gateway's database
    forwarded: int = 0  # records at the province
    duplicates: int = 0
    lost: int = 0
    wrong: int = 0  # at the province with another level or channel than the citizen chose
    unreported: int = 0  # cases the window system could not report (the gateway away too long)
    dead_letters: list = field(default_factory=list)  # (case or rating, reason)
    problems: list = field(default_factory=list)  # what each violation was, for the report
    latencies: list = field(default_factory=list)  # seconds from a virtual device's press to the province

    @property
    def ok(self) -> bool:
        return not (self.duplicates or self.lost or self.wrong)

    def summary(self) -> str:
        return (f"cases={self.cases} pressed={self.pressed} phone={self.phone} defaults={self.defaults} "
                f"stored={self.stored} forwarded={self.forwarded} dead_letters={len(self.dead_letters)} "
                f"duplicates={self.duplicates} lost={self.lost}")


class Fleet:
    def __init__(self, scenario: Scenario, workdir: Path, firmware: Path | None = None, screens: Path | None = None,
                 say=print):
        if scenario.firmware_devices and firmware is None:
            raise ValueError("real-firmware devices need the built firmware tree")
        self.scenario = scenario
        self.workdir = Path(workdir)
        self.firmware = firmware
        self.screens = Path(screens) if screens else None
        self._say = say
        self._began = time.monotonic()
        self.rng = random.Random(scenario.seed)
        self.hall = Hall(self.workdir / "hall")
        self.cases: dict[str, Case] = {}
        self.virtual: list[VirtualDevice] = []
        self.real: list[SimDevice] = []
        self.confirmed_real: dict[str, int] = {}  # firmware device -> thanks screens after a press
        self.closing = threading.Event()
        self._prompted: dict[str, asyncio.Future] = {}
        self._numbers = iter(range(1, 10**9))
        self._later: list[concurrent.futures.Future] = []  # QR ratings citizens will make later
        self.unreported = 0
        self._loop: asyncio.AbstractEventLoop | None = None

    def say(self, text: str) -> None:
        self._say(f"[{time.monotonic() - self._began:6.1f} s] {text}")

    # ---- the day ----

    def run(self) -> Result:
        """Run the day; whatever ends it, the device, gateway and broker processes end with it."""
        with self.hall:
            try:
                return asyncio.run(self._whole_day())
            finally:
                for device in self.real:
                    device.stop()

    async def _whole_day(self) -> Result:
        try:
            return await self._day()
        finally:  # cut short (SIGTERM, Ctrl-C, a failure): the window threads must see the hall close
            self.closing.set()

    async def _day(self) -> Result:
        s = self.scenario
        self._loop = asyncio.get_running_loop()
        self._closed = asyncio.Event()
        self._loop.set_default_executor(concurrent.futures.ThreadPoolExecutor(64, "hall-call"))
        hall = self.hall
        self.say(f"hall {hall.hall}: broker 127.0.0.1:{hall.broker.port}, gateway database {hall.db_path}, "
                 f"case API and rating pages {hall.api_url}, province {hall.province.url}")
        await self._open_windows()
        self.say(f"open: {len(self.real)} real-firmware and {len(self.virtual)} virtual evaluators; "
                 f"scenario {s.name!r} for {s.seconds:g} s with {len(s.faults)} faults")
        windows = [asyncio.to_thread(self._firmware_window, d) for d in self.real]
        windows += [self._virtual_window(d) for d in self.virtual]
        faults = [asyncio.create_task(self._fault(f)) for f in s.faults]
        running = asyncio.gather(*windows)
        await asyncio.sleep(s.seconds)
        self.closing.set()
        self._closed.set()
        self.say("closing: no new cases; waiting for citizens still at the counters and the ratings in flight")
        await running
        await asyncio.gather(*faults)
        await asyncio.to_thread(concurrent.futures.wait, self._later)
        arrived = await asyncio.to_thread(self._wait_forwarded, 120)
        self.say("every rating made is at the province" if arrived else
                 "not every rating made reached the province in 120 s (the check lists them)")
        self.say("the hall closes")
        await self._close_windows()
        if s.days_after:
            self.say(f"{s.days_after:g} days pass: the gateway issues default ratings for cases nobody rated")
            await asyncio.to_thread(self.hall.days_pass, s.days_after)
            await asyncio.to_thread(self._wait_all_cases, 120)
        return await asyncio.to_thread(self.check)

    async def _open_windows(self) -> None:
        s, hall = self.scenario, self.hall
        for n in range(s.firmware_devices):
            dev = f"F{n + 1:03d}"
            await asyncio.to_thread(hall.register, dev, f"A{n + 1:02d}")
            key = (await asyncio.to_thread(hall.credentials, dev))["command_key"]
            device = SimDevice(self.workdir / "devices" / dev, self.firmware, dev, hall.hall, hall.broker.port,
                               site_extra={"command_key": key})
            device.window = f"A{n + 1:02d}"
            await asyncio.to_thread(device.start)
            self.real.append(device)
            self.confirmed_real[dev] = 0
            if self.screens:
                threading.Thread(target=self._save_screens, args=(device,), daemon=True).start()
        for n in range(s.virtual_devices):
            dev = f"V{n + 1:05d}"
            await asyncio.to_thread(hall.register, dev, f"B{n + 1:05d}")
            key = (await asyncio.to_thread(hall.credentials, dev))["command_key"]
            device = VirtualDevice(dev, hall.hall, "127.0.0.1", hall.broker.port, on_prompt=self._on_prompt,
                                   command_key=key)
            device.window = f"B{n + 1:05d}"
            self.virtual.append(device.start())
            if n % 200 == 199:
                await asyncio.sleep(0.05)  # let the broker take the connections in steps
        total = len(self.real) + len(self.virtual)
        await asyncio.to_thread(_wait, lambda: hall.query(
            "SELECT count(*) FROM devices WHERE state = 'online'")[0][0] >= total, 120, "every evaluator online")

    async def _close_windows(self) -> None:
        for device in self.real:
            await asyncio.to_thread(device.stop)
        await asyncio.gather(*(d.stop() for d in self.virtual))

    def _gap(self) -> float:
        rate = self.scenario.cases_per_minute / 60
        return self.rng.expovariate(rate) if rate else self.scenario.seconds + 1

    def _new_case(self, device_id: str, window: str) -> Case:
        return Case(f"SIM{next(self._numbers):07d}", window, device_id)

    def _plan(self) -> tuple[str, str, list]:
        """What the next citizen does: (press | qr | leave, level, reasons)."""
        s, rng = self.scenario, self.rng
        level = rng.choices(list(s.mix), weights=list(s.mix.values()))[0]
        reasons = [rng.choice(codec.REASON_CODES)] if level in codec.BAD_LEVELS else []
        if rng.random() >= s.walk_away:
            return "press", level, reasons
        return ("qr" if rng.random() < s.rate_later else "leave"), level, reasons

    def _report(self, case: Case) -> bool:
        """The window system reports the case; False if the gateway would not take it."""
        try:
            case.url = self.hall.finish_case(case.ref, case.window, retry_s=60)["url"]
        except (OSError, urllib.error.HTTPError) as e:
            self.say(f"the window system could not report case {case.ref}: {e}")
            return False
        self.cases[case.ref] = case
        return True

    # ---- a window with a virtual evaluator ----

    async def _virtual_window(self, device: VirtualDevice) -> None:
        while not self.closing.is_set():
            try:
                await asyncio.wait_for(self._closed.wait(), self._gap())
                return
            except asyncio.TimeoutError:
                pass
            case = self._new_case(device.dev, device.window)
            prompted = self._prompted[case.ref] = self._loop.create_future()
            plan, level, reasons = self._plan()
            if not await asyncio.to_thread(self._report, case):
                self.unreported += 1
                continue
            if plan == "press":
                try:
                    await asyncio.wait_for(prompted, PROMPT_WAIT_S)
                except asyncio.TimeoutError:
                    continue  # the evaluator showed nothing (offline): the citizen leaves
                finally:
                    self._prompted.pop(case.ref, None)
                await asyncio.sleep(self.rng.uniform(*self.scenario.think_s))
                rating_id = device.press(level, reasons)
                if rating_id:
                    rated = self.cases.get(device.pressed[rating_id][0])
                    if rated:
                        rated.outcome, rated.level = "press", level
            else:
                self._prompted.pop(case.ref, None)
                if plan == "qr":
                    self._rate_later_soon(case, level, reasons)

    def _on_prompt(self, device: VirtualDevice, case_ref: str) -> None:
        waiting = self._prompted.get(case_ref)
        if waiting is not None and not waiting.done():
            waiting.set_result(None)

    def _rate_later_soon(self, case: Case, level: str, reasons: list) -> None:
        """Any thread: the citizen will scan the QR code later."""
        self._later.append(asyncio.run_coroutine_threadsafe(self._rate_later(case, level, reasons), self._loop))

    async def _rate_later(self, case: Case, level: str, reasons: list) -> None:
        await asyncio.sleep(self.rng.uniform(*self.scenario.later_s))
        if await asyncio.to_thread(self.hall.rate_by_phone, case.url, level, reasons) == "stored":
            case.outcome, case.level = "qr", level

    # ---- a window with a real-firmware evaluator (its own thread: the device is driven by blocking calls) ----

    def _firmware_window(self, device: SimDevice) -> None:
        rng = random.Random(self.rng.random())
        while not self.closing.wait(self._gap()):
            case = self._new_case(device.device, device.window)
            plan, level, reasons = self._plan()
            before = device.last_frame
            if not self._report(case):
                self.unreported += 1
                continue
            if plan == "qr":
                self._rate_later_soon(case, level, reasons)
            try:
                shown = device.wait_frame("prompt", after=before, timeout=PROMPT_WAIT_S)
                if plan != "press":
                    self._until_idle(device, shown["frame"])
                    continue
                time.sleep(rng.uniform(*self.scenario.think_s))
                device.press(codec.LEVELS.index(level))
                if level in codec.BAD_LEVELS:
                    device.wait_frame("reasons", after=shown["frame"], timeout=5)
                    time.sleep(0.3)
                    device.press(1)
                device.wait_frame("thanks", after=shown["frame"], timeout=5)
            except (DeviceError, OSError):
                continue  # no prompt (offline, powered off) or cut off mid-press: nothing confirmed
            self.confirmed_real[device.device] += 1
            case.outcome, case.level = "press", level

    def _until_idle(self, device: SimDevice, after: int) -> None:
        """The next citizen steps up when the abandoned prompt has timed out (or the hall closes)."""
        while not self.closing.is_set():
            try:
                device.wait_frame("idle", after=after, timeout=1)
                return
            except DeviceError:
                continue

    def _save_screens(self, device: SimDevice) -> None:
        """Save the device's screen as a PNG whenever it changes: DEVICE-HHMMSS.mmm-KIND.png."""
        self.screens.mkdir(parents=True, exist_ok=True)
        seen = 0
        while True:
            try:
                frame = device.wait_frame(None, after=seen, timeout=3600)
                seen = frame["frame"]
                image = device.screenshot(timeout=5)
            except (DeviceError, OSError):
                if self.closing.is_set() and not device.running:
                    return
                seen = 0
                time.sleep(0.2)
                continue
            stamp = time.strftime("%H%M%S", time.localtime()) + f".{int(time.time() * 1000) % 1000:03d}"
            image.save(self.screens / f"{device.device}-{stamp}-{frame['kind']}.png")

    # ---- faults ----

    async def _fault(self, fault) -> None:
        await asyncio.sleep(fault.at)
        hall, run = self.hall, asyncio.to_thread
        lasting = "" if fault.kind == "broker_restart" else f" for {fault.duration:g} s"
        self.say(f"fault: {fault.kind}{lasting}")
        if fault.kind == "broker_restart":
            await run(hall.restart_broker)
        elif fault.kind == "gateway_kill":
            await run(hall.kill_gateway)
            await asyncio.sleep(fault.duration)
            await run(hall.start_gateway)
        elif fault.kind == "province_outage":
            await run(hall.province_down)
            await asyncio.sleep(fault.duration)
            await run(hall.province_up)
        elif fault.kind == "province_errors":
            hall.province.faults.update({"error_rate": fault.rate})
            await asyncio.sleep(fault.duration)
            hall.province.faults.update({"error_rate": 0.0})
        elif fault.kind == "network_cut":
            cut = self.rng.sample(self.virtual, min(fault.devices, len(self.virtual)))
            real = self.rng.sample(self.real, min(fault.firmware, len(self.real)))
            for device in cut:
                device.unplug()
            for device in real:
                await run(device.unplug)
            await asyncio.sleep(fault.duration)
            for device in cut:
                device.replug()
            for device in real:
                await run(device.replug)
        elif fault.kind == "power_cut":
            real = self.rng.sample(self.real, min(fault.firmware, len(self.real)))
            for device in real:
                await run(device.power_cut)
            await asyncio.sleep(fault.duration)
            for device in real:
                await run(device.start)

    # ---- the end: wait, then check ----

    def _wait_forwarded(self, timeout: float) -> bool:
        """Until every rated case is at the province: False if the time ran out first."""
        return _wait(lambda: not self._missing(rated_only=True), timeout, None)

    def _wait_all_cases(self, timeout: float) -> None:
        _wait(lambda: not self._missing(rated_only=False), timeout, None)

    def _missing(self, rated_only: bool) -> list[str]:
        landed = {row[1] for row in self.hall.province.landed()}
        dead = {case for case, _ in self.dead_letters()}
        return [ref for ref, case in self.cases.items()
                if ref not in landed and ref not in dead and (case.outcome or not rated_only)]

    def dead_letters(self) -> list[tuple[str, str]]:
        return [(row[0] or f"rating {row[1]}", row[2]) for row in self.hall.query(
            "SELECT r.case_ref, r.rid, o.last_error FROM outbox o JOIN ratings r ON r.id = o.rating_id "
            "WHERE o.state = 'dead'")]

    def check(self) -> Result:
        result = Result(cases=len(self.cases), unreported=self.unreported)
        landed = self.hall.province.landed()
        result.forwarded = len(landed)
        result.stored = self.hall.query("SELECT count(*) FROM ratings")[0][0]
        result.dead_letters = self.dead_letters()
        dead = {case for case, _ in result.dead_letters}
        by_case: dict[str, list] = {}
        for row in landed:
            by_case.setdefault(row[1], []).append(row)
        by_eval = {row[0]: row[4] for row in landed}
        result.defaults = sum(1 for row in landed if row[2] == PF["default"])

        def problem(kind: str, text: str) -> None:
            setattr(result, kind, getattr(result, kind) + 1)
            result.problems.append(text)

        for ref, case in self.cases.items():
            records = by_case.get(ref, [])
            if len(records) > 1:
                problem("duplicates", f"case {ref}: {len(records)} records at the province")
            if not records:
                if ref not in dead:
                    problem("lost", f"case {ref} ({case.outcome or 'unrated'}) is not at the province")
                continue
            channel = {"press": PF["device"], "qr": PF["qr"]}.get(case.outcome)
            if case.outcome == "qr" or (case.outcome == "press" and case.dev.startswith("V")):
                if records[0][2] != channel or records[0][3] != PROFILE.satisfaction(case.level):
                    problem("wrong", f"case {ref}: the citizen chose {case.level} by {case.outcome}, the "
                                     f"province has pf {records[0][2]} satisfaction {records[0][3]}")
        for device in self.virtual:
            for rating_id, (case_ref, _, pressed_at) in device.pressed.items():
                arrived = by_eval.get(upstream.eval_id(PROFILE.source, device.dev, rating_id))
                if arrived is not None:  # presses all arrive before any days pass: one clock
                    result.latencies.append(arrived - pressed_at)
                elif case_ref in by_case:  # (a case with no record at all is counted above)
                    problem("lost", f"press {rating_id} on {device.dev} is not at the province, though its case "
                                    f"{case_ref} is")
        for dev, confirmed in self.confirmed_real.items():
            arrived = sum(1 for row in landed if row[2] == PF["device"] and f"-{dev}-" in row[0])
            if arrived < confirmed:
                problem("lost", f"{dev}: {confirmed} presses confirmed on its screen, {arrived} at the province")
        result.pressed = sum(len(d.pressed) for d in self.virtual) + sum(self.confirmed_real.values())
        result.phone = sum(1 for c in self.cases.values() if c.outcome == "qr")
        return result


def _wait(predicate, timeout: float, what: str | None) -> bool:
    """Poll until `predicate` holds (True); at the timeout raise naming `what`, or with no `what` return False."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            if what:
                raise TimeoutError(f"timed out after {timeout:g} s waiting for {what}")
            return False
        time.sleep(0.25)
    return True
