"""The check at the end of a hall day (`hcp-sim run`): is every case at the province exactly once, with what
the citizen chose?

It compares what the fleet saw happen (simulator/fleet.py) with the province's records and the gateway's
database, both read as named rows:

- every case the window system reported is at the province once: a press, a QR rating the page accepted
  (with the level the citizen chose and its channel), or a default rating (pf 7) when nobody rated it;
- every press a virtual device recorded is at the province under its own evalId;
- every press a firmware device confirmed with its thanks screen arrived: per device and level, at least as
  many records at the province (pf of the device channel), or later attempts the gateway recorded for a case
  already rated, as presses confirmed. The host sees a real device's screen, not which case its prompt was
  for, so these are counted rather than matched to cases;
- nothing twice; whatever the province refused is listed as a dead letter with its reason.

A case the window system finished but never got to the gateway (still in its queue when the day ended, or
refused by the case API) is not the gateway's loss: it is counted apart, as `unreported`, and fails the day
all the same, as a case lost does; so does a process of the day still alive after it (`orphans`, counted by
the fleet once the hall has closed).
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import NamedTuple

from protocol import upstream
from simulator.hall import AREA, Hall

PROFILE = upstream.Profile(area_code=AREA)
PF = PROFILE.channel_codes


@dataclass
class Case:
    ref: str
    window: str
    dev: str
    url: str = ""
    outcome: str | None = None  # press | qr | None: nobody rated it, or nobody knows (a default may be due)
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
    unreported: int = 0  # cases the window system never got to the gateway (never reported: not lost by it)
    orphans: int = 0  # processes of the day (broker, gateway, device) alive after the hall closed
    dead_letters: list = field(default_factory=list)  # (case or rating, reason)
    problems: list = field(default_factory=list)  # what each violation was, for the report
    latencies: list = field(default_factory=list)  # seconds from a virtual device's press to the province

    @property
    def ok(self) -> bool:
        return not (self.duplicates or self.lost or self.wrong or self.unreported or self.orphans)

    def summary(self) -> str:
        return (f"cases={self.cases} pressed={self.pressed} phone={self.phone} defaults={self.defaults} "
                f"stored={self.stored} forwarded={self.forwarded} dead_letters={len(self.dead_letters)} "
                f"unreported={self.unreported} orphans={self.orphans} duplicates={self.duplicates} lost={self.lost}")


class Landed(NamedTuple):
    """A record the province holds (simulator/province.py, Province.landed)."""
    eval_id: str
    case_ref: str | None  # projectNo
    pf: str  # the channel code
    satisfaction: int
    stored_at: float  # the province's clock

    @property
    def origin(self) -> str:
        """The device id of a press; the gateway's name for QR and default ratings (upstream.eval_id)."""
        return self.eval_id[len(PROFILE.source) + 1:self.eval_id.rindex("-")]


@dataclass
class Seen:
    """What the fleet saw during the day, which the province must reflect."""
    cases: dict[str, Case]  # every case the window system reported, by reference
    virtual: dict[str, dict]  # virtual device -> its presses: rating id -> (case, level, wall time)
    firmware: dict[str, list[str]]  # firmware device -> the level of each press its thanks screen confirmed
    unreported: list = field(default_factory=list)  # (case, why) the window system never got to the gateway


def landed(hall: Hall) -> list[Landed]:
    return [Landed._make(row) for row in hall.province.landed()]


def dead_letters(hall: Hall) -> list[tuple[str, str]]:
    """(case, or the rating when it has none; the reason) of every record the province refused for good."""
    return [(row["case_ref"] or f"rating {row['rid']}", row["last_error"]) for row in hall.rows(
        "SELECT r.case_ref, r.rid, o.last_error FROM outbox o JOIN ratings r ON r.id = o.rating_id "
        "WHERE o.state = 'dead'")]


def missing(hall: Hall, seen: Seen, rated_only: bool) -> list[str]:
    """What is not at the province yet: the cases rated (or, with rated_only False, every case) that have no
    record and no dead letter, and the firmware devices whose confirmed presses have not all arrived."""
    records = landed(hall)
    there = {record.case_ref for record in records} | {case for case, _ in dead_letters(hall)}
    waiting = [ref for ref, case in seen.cases.items() if ref not in there and (not rated_only or _rated(case, seen))]
    return waiting + [text for _, text in _firmware_shortfalls(hall, seen, records)]


def _rated(case: Case, seen: Seen) -> bool:
    """A case whose rating is known to be on its way: by QR, or pressed on a virtual device (a firmware device's
    presses are counted, not matched to cases)."""
    return case.outcome == "qr" or (case.outcome == "press" and case.dev in seen.virtual)


def check(hall: Hall, seen: Seen) -> Result:
    result = Result(cases=len(seen.cases))
    records = landed(hall)
    result.forwarded = len(records)
    result.stored = hall.rows("SELECT count(*) AS n FROM ratings")[0]["n"]
    result.dead_letters = dead_letters(hall)
    dead = {case for case, _ in result.dead_letters}
    by_case: dict[str, list[Landed]] = {}
    for record in records:
        by_case.setdefault(record.case_ref, []).append(record)
    by_eval = {record.eval_id: record for record in records}
    result.defaults = sum(1 for record in records if record.pf == PF["default"])

    def problem(kind: str, text: str) -> None:
        setattr(result, kind, getattr(result, kind) + 1)
        result.problems.append(text)

    for ref, case in seen.cases.items():
        found = by_case.get(ref, [])
        if len(found) > 1:
            problem("duplicates", f"case {ref}: {len(found)} records at the province")
        if not found:
            if ref not in dead:
                problem("lost", f"case {ref} ({case.outcome or 'unrated'}) is not at the province")
            continue
        first = found[0]
        if case.outcome == "qr" or (case.outcome == "press" and case.dev in seen.virtual):
            channel = PF["qr"] if case.outcome == "qr" else PF["device"]
            if first.pf != channel or first.satisfaction != PROFILE.satisfaction(case.level):
                problem("wrong", f"case {ref}: the citizen chose {case.level} by {case.outcome}, the province has "
                                 f"pf {first.pf} satisfaction {first.satisfaction}")
    for ref, why in seen.unreported:
        problem("unreported", f"case {ref} was never reported to the gateway: {why}")
    for dev, presses in seen.virtual.items():
        for rating_id, (case_ref, _, pressed_at) in presses.items():
            arrived = by_eval.get(upstream.eval_id(PROFILE.source, dev, rating_id))
            if arrived is not None:  # presses all arrive before any days pass: one clock
                result.latencies.append(arrived.stored_at - pressed_at)
            elif case_ref in by_case:  # (a case with no record at all is counted above)
                problem("lost", f"press {rating_id} on {dev} is not at the province, though its case {case_ref} is")
    for _, text in _firmware_shortfalls(hall, seen, records):
        problem("lost", text)
    result.pressed = sum(len(presses) for presses in seen.virtual.values()) + sum(map(len, seen.firmware.values()))
    result.phone = sum(1 for case in seen.cases.values() if case.outcome == "qr")
    return result


def _firmware_shortfalls(hall: Hall, seen: Seen, records: list[Landed]) -> list[tuple[str, str]]:
    """(device, what is short) for each firmware device and level with fewer presses arrived than confirmed."""
    if not any(seen.firmware.values()):
        return []
    arrived = Counter((record.origin, record.satisfaction) for record in records if record.pf == PF["device"])
    for row in hall.rows("SELECT origin, level FROM already_rated WHERE channel = 'device'"):
        arrived[row["origin"], PROFILE.satisfaction(row["level"])] += 1
    short = []
    for dev, levels in seen.firmware.items():
        for level, confirmed in sorted(Counter(levels).items()):
            got = arrived[dev, PROFILE.satisfaction(level)]
            if got < confirmed:
                short.append((dev, f"{dev}: {confirmed} {level} presses confirmed on its screen, {got} arrived"))
    return short
