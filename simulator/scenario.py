"""Scenario files: a hall day in TOML. Every key is declared once here with its default and meaning;
unknown keys and wrong types are refused with a message naming them.

    name = "CI hall day"
    seconds = 75                 # how long the hall is open (real seconds)
    days_after = 8               # simulated days that pass after closing, so default ratings come due

    [devices]
    firmware = 3                 # real firmware on the MicroPython unix port
    virtual = 200                # lightweight CPython devices

    [citizens]
    cases_per_minute = 1.0       # cases finished (办结) per window per minute
    walk_away = 0.1              # citizens who leave without pressing ...
    rate_later = 0.5             # ... of whom this share rates later on the QR page

    [citizens.mix]               # weights of the five levels pressed
    very_satisfied = 60

    [[faults]]                   # at: seconds after opening; for: how long it lasts
    at = 20
    kind = "gateway_kill"

A real-firmware window's citizens do not come at random: round(cases_per_minute x seconds / 60) of them (at
least one), evenly spread over the day, of whom round(walk_away x that) walk away and the rest (at least one)
press, each once its case's prompt shows, again on a new case when a fault stopped the press (simulator/fleet.py).
"""
from __future__ import annotations

import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path

from protocol import codec

BUILTIN = Path(__file__).resolve().parent / "scenarios"

FAULT_KINDS = {
    "broker_restart": "stop and start the broker (its persistent sessions kept)",
    "gateway_kill": "SIGKILL the gateway, start it again after `for` seconds (unless running by then: one gateway)",
    "province_outage": "the provincial system refuses connections for `for` seconds",
    "province_errors": "the province answers 5xx to share `rate` of submissions for `for` seconds",
    "network_cut": "`devices` virtual and `firmware` real devices lose the network for `for` seconds",
    "power_cut": "`firmware` real devices lose power; they are switched on again after `for` seconds",
}


class ScenarioError(ValueError):
    """The scenario file cannot be used; the message says where and why."""


@dataclass(frozen=True)
class Fault:
    at: float
    kind: str
    duration: float = 5.0
    devices: int = 0
    firmware: int = 0
    rate: float = 0.5


@dataclass(frozen=True)
class Scenario:
    name: str = "hall day"
    seconds: float = 60.0
    seed: int = 1
    days_after: float = 8.0
    firmware_devices: int = 1
    virtual_devices: int = 20
    cases_per_minute: float = 1.0
    think_s: tuple = (1.0, 3.0)
    walk_away: float = 0.1
    rate_later: float = 0.5
    later_s: tuple = (2.0, 15.0)
    mix: dict = field(default_factory=lambda: {"very_satisfied": 60, "satisfied": 25, "basic": 8,
                                               "dissatisfied": 5, "very_dissatisfied": 2})
    faults: tuple = ()

    def with_seconds(self, seconds: float) -> "Scenario":
        """The same day, `seconds` long; faults that would fall after closing are dropped."""
        kept = tuple(f for f in self.faults if f.at < seconds)
        return Scenario(**{**self.__dict__, "seconds": seconds, "faults": kept})

    def repeated(self, times: int) -> "Scenario":
        """The same day `times` over without a break: `times` as long, its fault timeline again in each stretch."""
        faults = tuple(replace(f, at=f.at + n * self.seconds) for n in range(times) for f in self.faults)
        return replace(self, seconds=self.seconds * times, faults=faults)


# table -> key -> (Scenario field, type, allowed range)
_KEYS = {
    "": {"name": ("name", str, None), "seconds": ("seconds", float, (1, 86400)), "seed": ("seed", int, None),
         "days_after": ("days_after", float, (0, 30))},
    "devices": {"firmware": ("firmware_devices", int, (0, 50)), "virtual": ("virtual_devices", int, (0, 50000))},
    "citizens": {"cases_per_minute": ("cases_per_minute", float, (0, 60)), "think_s": ("think_s", tuple, None),
                 "walk_away": ("walk_away", float, (0, 1)), "rate_later": ("rate_later", float, (0, 1)),
                 "later_s": ("later_s", tuple, None)},
}
_FAULT_KEYS = {"at": float, "kind": str, "for": float, "devices": int, "firmware": int, "rate": float}


def load(path: Path) -> Scenario:
    """Read a scenario file: a path, or the name of a built-in one (simulator/scenarios/NAME.toml)."""
    path = Path(path)
    if not path.exists() and (BUILTIN / f"{path.name}.toml").exists():
        path = BUILTIN / f"{path.name}.toml"
    try:
        document = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ScenarioError(f"scenario {path} does not exist (built-in: {builtin_names()})") from None
    except tomllib.TOMLDecodeError as e:
        raise ScenarioError(f"scenario {path} is not valid TOML: {e}") from None
    return parse(document, str(path))


def builtin_names() -> str:
    return ", ".join(sorted(p.stem for p in BUILTIN.glob("*.toml")))


def parse(document: dict, where: str = "scenario") -> Scenario:
    values: dict = {}
    citizens = dict(document.get("citizens", {}))
    mix = citizens.pop("mix", None)
    tables = {"": {k: v for k, v in document.items() if k not in ("devices", "citizens", "faults")},
              "devices": document.get("devices", {}), "citizens": citizens}
    for table, entries in tables.items():
        if not isinstance(entries, dict):
            raise ScenarioError(f"{where}: [{table}] must be a table")
        for key, value in entries.items():
            name = f"{table}.{key}" if table else key
            if key not in _KEYS[table]:
                raise ScenarioError(f"{where}: unknown key {name}")
            target, kind, bounds = _KEYS[table][key]
            values[target] = _check(where, name, value, kind, bounds)
    if mix is not None:
        values["mix"] = _mix(where, mix)
    values["faults"] = tuple(sorted((_fault(where, i, f) for i, f in enumerate(document.get("faults", []))),
                                    key=lambda f: f.at))
    return Scenario(**values)


def _check(where: str, name: str, value, kind: type, bounds):
    if kind is float and type(value) is int:
        value = float(value)
    if kind is tuple:
        if not (isinstance(value, list) and len(value) == 2 and all(isinstance(v, (int, float)) for v in value)
                and 0 <= value[0] <= value[1]):
            raise ScenarioError(f"{where}: {name} must be [low, high] seconds")
        return (float(value[0]), float(value[1]))
    if type(value) is not kind:
        raise ScenarioError(f"{where}: {name} must be {kind.__name__}, got {value!r}")
    if bounds and not bounds[0] <= value <= bounds[1]:
        raise ScenarioError(f"{where}: {name} must be between {bounds[0]} and {bounds[1]}")
    return value


def _mix(where: str, mix) -> dict:
    if not isinstance(mix, dict) or not mix:
        raise ScenarioError(f"{where}: [citizens.mix] must give weights of levels")
    for level, weight in mix.items():
        if level not in codec.LEVELS:
            raise ScenarioError(f"{where}: citizens.mix.{level}: levels are {', '.join(codec.LEVELS)}")
        if not isinstance(weight, (int, float)) or weight < 0:
            raise ScenarioError(f"{where}: citizens.mix.{level} must be a weight >= 0")
    if not sum(mix.values()):
        raise ScenarioError(f"{where}: [citizens.mix] weights are all 0")
    return dict(mix)


def _fault(where: str, index: int, entry) -> Fault:
    here = f"{where}: faults[{index}]"
    if not isinstance(entry, dict):
        raise ScenarioError(f"{here} must be a table")
    for key in entry:
        if key not in _FAULT_KEYS:
            raise ScenarioError(f"{here}: unknown key {key} (keys: {', '.join(_FAULT_KEYS)})")
    if entry.get("kind") not in FAULT_KINDS:
        raise ScenarioError(f"{here}: kind must be one of {', '.join(FAULT_KINDS)}")
    if "at" not in entry:
        raise ScenarioError(f"{here}: `at` (seconds after opening) is required")
    checked = {key: _check(here, key, value, _FAULT_KEYS[key], (0, 10**6) if key != "rate" else (0, 1))
               for key, value in entry.items() if key != "kind"}
    return Fault(at=checked["at"], kind=entry["kind"], duration=checked.get("for", 5.0),
                 devices=checked.get("devices", 0), firmware=checked.get("firmware", 0),
                 rate=checked.get("rate", 0.5))
