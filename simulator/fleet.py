"""A simulated hall day (`hcp-sim run`, `hcp-sim demo --headless`), then the check that nothing was lost.

Windows finish cases (办结) through the gateway's case API as a window system does; each window's evaluator
is prompted; a citizen presses a level, or walks away and perhaps rates later on the QR page. A few windows
have the real firmware on the MicroPython unix port (pressed through the simulated board), the rest virtual
devices (simulator/virtual.py). Faults follow the scenario's timeline. After closing, simulated days pass
so default ratings come due, and simulator/check.py compares what happened with what the province holds.

A virtual window's citizens come at random (cases_per_minute), and leave when their evaluator shows nothing
within PROMPT_WAIT_S. A real-firmware window's citizens are fixed by the scenario and its seed, whatever
the timing: round(cases_per_minute x seconds / 60) of them (at least one) spread evenly over the day,
round(walk_away x that) walking away (at least one presses). Each press is made only after the device shows
that citizen's case's prompt, and holds until the screen answers; when a fault stops it (no prompt: the
device was cut off; no thanks: the power went mid-press), the window reports a new case and the citizen
presses again, after closing if need be. So each firmware device confirms at least `guaranteed[dev]` presses
on its screen, or the day fails.

Cases go to the gateway through the window system (hall.WindowSystem), which keeps a case the gateway cannot
take in its queue until the gateway is back; a citizen waits PROMPT_WAIT_S for it and leaves, the case then
gets its default rating. Blocking work runs on threads kept for it, so nothing waits for another's thread:
the window system has its own, each firmware window one, and the hall's faults and days passing theirs (one
more than there are faults). A fault whose call fails (a gateway that cannot start) ends the day at once.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import random
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from protocol import codec
from simulator import check as checker
from simulator import leash
from simulator.check import Case, Result, Seen
from simulator.device import DeviceError, SimDevice
from simulator.hall import Hall, WindowSystem
from simulator.scenario import Fault, Scenario
from simulator.virtual import VirtualDevice

PROMPT_WAIT_S = 5.0  # how long a citizen at a virtual window looks at a blank evaluator before leaving
FIRMWARE_PROMPT_S = 10.0  # how long a firmware window waits for its device to show a case's prompt
FIRMWARE_ANSWER_S = 10.0  # ... and for its screen to answer a press
FIRMWARE_ONLINE_S = 60.0  # ... and for the gateway to list the device online again before reporting a case
FIRMWARE_GRACE_S = 60.0  # after closing, how long citizens whose press a fault stopped may still press
REPORT_DRAIN_S = 120.0  # after closing, how long the window system may take to report the cases it still has
DEVICE_REASONS = 5  # the reasons a firmware device offers after a 差评 (firmware/settings.py, the default config)


@dataclass(frozen=True)
class Citizen:
    """One citizen at a real-firmware window, drawn from the scenario's seed before the day starts."""
    at: float  # seconds after opening when they step up
    plan: str  # press | qr | leave
    level: str
    reasons: tuple  # the reason codes a QR rating gives
    reason_button: int  # the reason pressed on the device after a 差评
    think_s: float


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
        self.rng = random.Random(scenario.seed)  # the virtual windows' (the event loop's thread only)
        self.hall = Hall(self.workdir / "hall", say=self.say)
        self.window_system: WindowSystem | None = None  # while the hall is open
        self._hall_threads = concurrent.futures.ThreadPoolExecutor(len(scenario.faults) + 1, "hall-life")
        self._window_threads = concurrent.futures.ThreadPoolExecutor(max(1, scenario.firmware_devices),
                                                                     "firmware-window")
        self.cases: dict[str, Case] = {}
        self.virtual: list[VirtualDevice] = []
        self.real: list[SimDevice] = []
        self.guaranteed: dict[str, int] = {}  # firmware device -> presses its citizens make whatever happens
        self.confirmed_real: dict[str, list[str]] = {}  # firmware device -> level of each press its thanks confirmed
        self.closing = threading.Event()  # no new citizens (the firmware windows finish those they have)
        self.ending = threading.Event()  # the day is over or cut short: every window stops now
        self._prompted: dict[str, asyncio.Future] = {}
        self._numbers = iter(range(1, 10**9))
        self._later: list[concurrent.futures.Future] = []  # QR ratings citizens will make later
        self.failure: BaseException | None = None  # what ended the day early
        self.hall_call_waits: list[float] = []  # seconds each timed fault or days-passing call waited for a thread
        self._loop: asyncio.AbstractEventLoop | None = None
        self._opened = self._last_call = 0.0  # monotonic: when the hall opened, when late presses must stop

    def say(self, text: str) -> None:
        self._say(f"[{time.monotonic() - self._began:6.1f} s] {text}")

    # ---- the day ----

    def run(self) -> Result:
        """Run the day; whatever ends it, the device, gateway and broker processes end with it (checked: a
        process of the day alive after it counts as an orphan)."""
        with self.hall:
            self.window_system = WindowSystem(self.hall)
            try:
                result = asyncio.run(self._whole_day())
            finally:
                self.window_system.close()
                for device in self.real:
                    device.stop()
                for threads in (self._hall_threads, self._window_threads):
                    threads.shutdown(cancel_futures=True)
        left = leash.processes_under(self.workdir)
        if left:
            result.orphans = len(left)
            result.problems.append(f"processes of the day alive after it closed: {left}")
        return result

    async def _whole_day(self) -> Result:
        try:
            return await self._day()
        finally:  # cut short (SIGTERM, Ctrl-C, a failure): the window threads must see the hall close
            self.closing.set()
            self.ending.set()

    async def _day(self) -> Result:
        s = self.scenario
        self._loop = asyncio.get_running_loop()
        self._closed = asyncio.Event()
        self._loop.set_default_executor(concurrent.futures.ThreadPoolExecutor(64, "hall-call"))
        hall = self.hall
        self.say(f"hall {hall.hall}: broker 127.0.0.1:{hall.broker.port}, gateway database {hall.db_path}, "
                 f"case API and rating pages {hall.api_url}, province {hall.province.url}")
        self._failed = asyncio.Event()
        await self._open_windows()
        self.say(f"open: {len(self.real)} real-firmware and {len(self.virtual)} virtual evaluators; "
                 f"scenario {s.name!r} for {s.seconds:g} s with {len(s.faults)} faults")
        self._opened = time.monotonic()
        self._last_call = self._opened + s.seconds + FIRMWARE_GRACE_S
        windows = []
        for n, device in enumerate(self.real):
            citizens = self._firmware_citizens(n)
            self.guaranteed[device.device] = sum(1 for c in citizens if c.plan == "press")
            windows.append(self._loop.run_in_executor(self._window_threads, self._firmware_window, device, citizens))
        windows += [self._virtual_window(d) for d in self.virtual]
        faults = [asyncio.create_task(self._fault(n, f)) for n, f in enumerate(s.faults)]
        for fault in faults:
            fault.add_done_callback(self._fault_done)
        running = asyncio.gather(*windows)
        try:
            await asyncio.wait_for(self._failed.wait(), s.seconds)
        except asyncio.TimeoutError:
            pass
        self.closing.set()
        self._closed.set()
        if self.failure is None:
            self.say("closing: no new citizens; waiting for those still at the counters and the ratings in flight")
        await running
        if self.failure is not None:
            raise self.failure
        await asyncio.gather(*faults)
        if not await asyncio.to_thread(self.window_system.drain, REPORT_DRAIN_S):
            self.say(f"the window system still has {len(self.window_system.unreported())} cases it could not "
                     f"report after {REPORT_DRAIN_S:g} s (the check lists them)")
        await asyncio.to_thread(concurrent.futures.wait, self._later)
        arrived = await asyncio.to_thread(self._wait_forwarded, 120)
        self.say("every rating made is at the province" if arrived else
                 "not every rating made reached the province in 120 s (the check lists them)")
        self.say("the hall closes")
        await self._close_windows()
        if s.days_after:
            self.say(f"{s.days_after:g} days pass: the gateway issues default ratings for cases nobody rated")
            await self._timed("days passing", self.hall.days_pass, s.days_after)
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
            self.confirmed_real[dev] = []
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
        await asyncio.to_thread(_wait, lambda: hall.rows(
            "SELECT count(*) AS n FROM devices WHERE state = 'online'")[0]["n"] >= total, 120, "every evaluator online")

    async def _close_windows(self) -> None:
        for device in self.real:
            await asyncio.to_thread(device.stop)
        await asyncio.gather(*(d.stop() for d in self.virtual))

    def _gap(self) -> float:
        rate = self.scenario.cases_per_minute / 60
        return self.rng.expovariate(rate) if rate else self.scenario.seconds + 1

    def _new_case(self, device_id: str, window: str) -> Case:
        return Case(f"SIM{next(self._numbers):07d}", window, device_id)

    def _choose(self, rng: random.Random) -> tuple[str, list]:
        """A level from the scenario's mix, and for a 差评 a reason (as the QR page takes it)."""
        mix = self.scenario.mix
        level = rng.choices(list(mix), weights=list(mix.values()))[0]
        return level, [rng.choice(codec.REASON_CODES)] if level in codec.BAD_LEVELS else []

    def _plan(self) -> tuple[str, str, list]:
        """What the next citizen at a virtual window does: (press | qr | leave, level, reasons)."""
        s, rng = self.scenario, self.rng
        level, reasons = self._choose(rng)
        if rng.random() >= s.walk_away:
            return "press", level, reasons
        return ("qr" if rng.random() < s.rate_later else "leave"), level, reasons

    def _report(self, case: Case) -> concurrent.futures.Future:
        """The window system takes the finished case: the future is done once the gateway has it (with the case
        API's answer; None if it refused it or the day ended first). The case is the day's once reported."""
        def reported(answer: dict) -> None:
            case.url = answer["url"]
            self.cases[case.ref] = case
        return self.window_system.report(case.ref, case.window, reported)

    # ---- a window with a virtual evaluator ----

    async def _virtual_window(self, device: VirtualDevice) -> None:
        while not self.closing.is_set():
            try:
                await asyncio.wait_for(self._closed.wait(), self._gap())
                return
            except asyncio.TimeoutError:
                pass
            case = self._new_case(device.dev, device.window)
            plan, level, reasons = self._plan()
            if not await self._served(case, until_prompted=plan == "press"):
                continue  # the gateway away or the evaluator blank: the citizen leaves, the case gets its default
            if plan == "press":
                await asyncio.sleep(self.rng.uniform(*self.scenario.think_s))
                rating_id = device.press(level, reasons)
                if rating_id:
                    rated = self.cases.get(device.pressed[rating_id][0])
                    if rated:
                        rated.outcome, rated.level = "press", level
            elif plan == "qr":
                self._rate_later_soon(case, level, reasons)

    async def _served(self, case: Case, until_prompted: bool) -> bool:
        """Report the case; True once the gateway has it and, `until_prompted`, once the evaluator shows its
        prompt, each within PROMPT_WAIT_S (as long as a citizen waits). A case the gateway does not have by then
        stays in the window system's queue."""
        prompted = self._prompted[case.ref] = self._loop.create_future()
        try:
            if not await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(self._report(case))), PROMPT_WAIT_S):
                return False
            if until_prompted:
                await asyncio.wait_for(prompted, PROMPT_WAIT_S)
            return True
        except asyncio.TimeoutError:
            return False
        finally:
            self._prompted.pop(case.ref, None)

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

    def _firmware_citizens(self, number: int) -> list[Citizen]:
        """The citizens of the `number`th firmware window: from the scenario's seed alone, never the timing."""
        s = self.scenario
        rng = random.Random(f"{s.seed}/firmware/{number}")
        count = max(1, round(s.cases_per_minute * s.seconds / 60))
        walking = min(count - 1, round(count * s.walk_away))
        plans = ["press"] * (count - walking) + ["walk"] * walking
        rng.shuffle(plans)
        slot = s.seconds / count
        citizens = []
        for n, plan in enumerate(plans):
            level, reasons = self._choose(rng)
            if plan == "walk":
                plan = "qr" if rng.random() < s.rate_later else "leave"
            citizens.append(Citizen(at=n * slot + rng.uniform(0, slot / 2), plan=plan, level=level,
                                    reasons=tuple(reasons), reason_button=rng.randrange(DEVICE_REASONS),
                                    think_s=rng.uniform(*s.think_s)))
        return citizens

    def _firmware_window(self, device: SimDevice, citizens: list[Citizen]) -> None:
        for citizen in citizens:
            if self.ending.wait(max(0.0, self._opened + citizen.at - time.monotonic())):
                return
            if citizen.plan == "press":
                self._press_for(device, citizen)
            else:
                self._walk_away(device, citizen)
        confirmed, guaranteed = len(self.confirmed_real[device.device]), self.guaranteed[device.device]
        self.say(f"{device.device}: {confirmed} presses confirmed on its screen ({guaranteed} citizens pressed)")

    def _press_for(self, device: SimDevice, citizen: Citizen) -> None:
        """Serve a pressing citizen until their press is confirmed (a thanks screen): a new case each time a
        fault stopped it, until the day ends."""
        while not self.ending.is_set() and time.monotonic() < self._last_call:
            self._until_online(device)
            case = self._new_case(device.device, device.window)
            since = device.mark()
            if not self._reported(case):
                continue
            try:
                shown = device.wait_prompt(since, FIRMWARE_PROMPT_S)
            except DeviceError:  # cut off: no press was made, the case gets its default rating
                self.say(f"{device.device} showed no prompt for case {case.ref}; the window reports a new case")
                continue
            outcome = self._press(device, citizen, shown)
            if outcome == "thanks":
                self.confirmed_real[device.device].append(citizen.level)
                case.outcome, case.level = "press", citizen.level
                return
            # No thanks screen: rated or not (the power may have gone after the rating reached flash), the case
            # is at the province once either way, as the press or as its default rating.
            self.say(f"{device.device}: the press for case {case.ref} got {outcome}; the window reports a new case")

    def _press(self, device: SimDevice, citizen: Citizen, prompt_frame: int) -> str:
        """Press the citizen's level on the prompt shown as `prompt_frame` (and a reason after a 差评); return the
        kind of screen that answered (thanks when the rating was recorded), or what went wrong."""
        boot = device.boots
        try:
            if self.ending.wait(citizen.think_s):
                return "the day's end"
            answer = device.press_until(codec.LEVELS.index(citizen.level), ("thanks", "reasons", "hint", "error"),
                                        after=prompt_frame, timeout=FIRMWARE_ANSWER_S)
            if answer["kind"] == "reasons":
                if self.ending.wait(citizen.think_s / 2):
                    return "the day's end"
                answer = device.press_until(citizen.reason_button, ("thanks", "error"), after=answer["frame"],
                                            timeout=FIRMWARE_ANSWER_S)
            return answer["kind"] if device.boots == boot else "a restart"
        except (DeviceError, OSError) as e:
            return f"no answer ({e})"

    def _walk_away(self, device: SimDevice, citizen: Citizen) -> None:
        case = self._new_case(device.device, device.window)
        since = device.mark()
        if not self._reported(case):
            return
        if citizen.plan == "qr":
            self._rate_later_soon(case, citizen.level, list(citizen.reasons))
        try:  # its prompt shows before the next citizen's case is reported, so it cannot be taken for theirs
            device.wait_prompt(since, FIRMWARE_PROMPT_S)
        except DeviceError:
            pass

    def _reported(self, case: Case) -> bool:
        """Report the case and wait until the gateway has it: while it is queued the window waits too (its next
        case would queue behind it, and this one's prompt could be taken for the next's). False when the day
        ends first (the case stays queued) or the gateway refused the case."""
        report = self._report(case)
        while not self.ending.is_set() and time.monotonic() < self._last_call:
            try:
                return report.result(timeout=0.5) is not None
            except TimeoutError:
                pass
        return False

    def _until_online(self, device: SimDevice) -> None:
        """Until the gateway lists the device online (the window's staff would see it offline, and wait)."""
        began = time.monotonic()
        while not self.ending.is_set() and time.monotonic() < began + FIRMWARE_ONLINE_S:
            rows = self.hall.rows("SELECT state FROM devices WHERE dev = ?", (device.device,))
            if rows and rows[0]["state"] == "online" and device.running:
                if time.monotonic() - began > 1:
                    self.say(f"{device.device} is online again after {time.monotonic() - began:.1f} s: its window "
                             f"goes on")
                return
            self.ending.wait(0.2)

    def _save_screens(self, device: SimDevice) -> None:
        """Save the device's screen as a PNG whenever it changes: DEVICE-HHMMSS.mmm-KIND.png."""
        self.screens.mkdir(parents=True, exist_ok=True)
        boot, seen = device.mark()
        while not (self.ending.is_set() or (self.closing.is_set() and not device.running)):
            if device.boots != boot:
                boot, seen = device.boots, 0
            try:
                frame = device.wait_frame(None, after=seen, timeout=1, boot=boot)
                seen = frame["frame"]
                image = device.screenshot(timeout=5)
            except (DeviceError, OSError):
                continue  # nothing new, powered off, or started again: look again
            stamp = time.strftime("%H%M%S", time.localtime()) + f".{int(time.time() * 1000) % 1000:03d}"
            image.save(self.screens / f"{device.device}-{stamp}-{frame['kind']}.png")

    # ---- faults ----

    async def _fault(self, number: int, fault: Fault) -> None:
        """The timeline's `number`th fault: begun at its time, ended `for` seconds later. The hall's own kinds
        are the hall's (Hall.begin_fault); network and power cuts are the devices', which one draws from the
        scenario's seed and the fault's place on the timeline."""
        await asyncio.sleep(fault.at)
        lasting = "" if fault.kind == "broker_restart" else f" for {fault.duration:g} s"
        self.say(f"fault: {fault.kind}{lasting}")
        rng = random.Random(f"{self.scenario.seed}/fault/{number}")
        if fault.kind in Hall.FAULTS:
            end = await self._timed(f"fault {number} ({fault.kind}) begins", self.hall.begin_fault, fault)
            ending = (lambda: self._timed(f"fault {number} ({fault.kind}) ends", end)) if end else None
        elif fault.kind == "network_cut":
            ending = await self._network_cut(fault, rng)
        elif fault.kind == "power_cut":
            ending = await self._power_cut(fault, rng)
        else:
            raise ValueError(f"no such fault: {fault.kind}")
        if ending:
            await asyncio.sleep(fault.duration)
            await ending()

    def _fault_done(self, task: asyncio.Task) -> None:
        """A fault that failed (a gateway that could not start again) ends the day now; the run fails with it."""
        if not task.cancelled() and task.exception() is not None and self.failure is None:
            self.failure = task.exception()
            self.say(f"the day ends early: {type(self.failure).__name__}: {self.failure}")
            self.closing.set()
            self.ending.set()
            self._closed.set()
            self._failed.set()

    def _in_hall_thread(self, call, *args) -> Awaitable:
        """A blocking call of a fault or of days passing, on the threads kept for them (never the windows')."""
        return self._loop.run_in_executor(self._hall_threads, call, *args)

    async def _timed(self, what: str, call, *args):
        """`_in_hall_thread`, saying how long the call waited for its thread and how long it took."""
        due = time.monotonic()
        began = 0.0

        def timed():
            nonlocal began
            began = time.monotonic()
            return call(*args)
        try:
            return await self._in_hall_thread(timed)
        finally:
            if began:  # (not when the day ended before the call had a thread)
                self.hall_call_waits.append(began - due)
                self.say(f"{what}: waited {began - due:.2f} s for a thread, took {time.monotonic() - began:.2f} s")

    async def _network_cut(self, fault: Fault, rng: random.Random) -> Callable[[], Awaitable]:
        virtual = rng.sample(self.virtual, min(fault.devices, len(self.virtual)))
        real = rng.sample(self.real, min(fault.firmware, len(self.real)))
        self.say(f"network cut: {', '.join(d.device for d in real) or 'no real-firmware evaluator'} and "
                 f"{len(virtual)} virtual evaluators")
        for device in virtual:
            device.unplug()
        for device in real:
            await self._in_hall_thread(device.unplug)

        async def replug() -> None:
            for device in virtual:
                device.replug()
            for device in real:
                await self._in_hall_thread(device.replug)
        return replug

    async def _power_cut(self, fault: Fault, rng: random.Random) -> Callable[[], Awaitable]:
        real = rng.sample(self.real, min(fault.firmware, len(self.real)))
        self.say(f"power cut: {', '.join(d.device for d in real) or 'no real-firmware evaluator'}")
        for device in real:
            await self._in_hall_thread(device.power_cut)

        async def power_on() -> None:
            for device in real:
                await self._in_hall_thread(device.switch_on)
        return power_on

    # ---- the end: wait, then check ----

    def seen(self) -> Seen:
        """What the day did, for simulator/check.py."""
        return Seen(cases=dict(self.cases), virtual={d.dev: d.pressed for d in self.virtual},
                    firmware=self.confirmed_real, unreported=self.window_system.unreported())

    def _wait_forwarded(self, timeout: float) -> bool:
        """Until every rating made is at the province: False if the time ran out first."""
        return _wait(lambda: not checker.missing(self.hall, self.seen(), rated_only=True), timeout, None)

    def _wait_all_cases(self, timeout: float) -> None:
        _wait(lambda: not checker.missing(self.hall, self.seen(), rated_only=False), timeout, None)

    def check(self) -> Result:
        return checker.check(self.hall, self.seen())


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
