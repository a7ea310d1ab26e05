"""Cases (办件): reported finished by the window system, prompted on the window's evaluator, rated once, and
what time does to them: rating windows, default ratings, follow-up deadlines, pruning.

A case gets a rating window of N working days after 办结 (policy art. 8). When it closes with no rating,
the gateway issues a default rating, flagged as such and forwarded with the default channel code.
"""
from __future__ import annotations

import logging
import re
import secrets
import sqlite3
import time

from prometheus_client import Counter

from gateway import ratings, workorders
from gateway.errors import Conflict, InvalidInput, NotFound
from gateway.periodic import Periodic
from gateway.store import Writer
from gateway.workdays import CalendarMissing, WorkCalendar
from protocol import codec

log = logging.getLogger("gateway.cases")
DAY_S = 86400.0
YEAR_S = 366 * DAY_S  # retention errs on the side of keeping
WINDOW_LIMITS_KEPT_S = 2 * DAY_S  # a window rating's limits look back one China day at most
_CASE_REF = re.compile(r"^[A-Za-z0-9_-]{1,50}$")
FOLLOWUP_EXTRA_DAYS = 5  # a 追评 is taken this many working days past the case's first window
REQUIRED = ("project_no", "task_code", "task_name", "dept_code", "staff_no", "window_no")

CASE_FIELDS = ("case_ref", "project_no", "task_code", "task_name", "dept_code", "dept_name", "staff_no",
               "window_no", "dev", "user_prop", "finished_at")


def record_case(conn: sqlite3.Connection, case: dict, calendar: WorkCalendar, window_days: int) -> bool:
    """Record a finished case with its rating deadline; False if the case was known already."""
    row = {name: case.get(name) for name in CASE_FIELDS}
    try:
        row["deadline"] = calendar.deadline(row["finished_at"], window_days)
    except CalendarMissing as e:
        log.error("case %s: %s; its default rating waits until the calendar knows", row["case_ref"], e)
        row["deadline"] = None
    cur = conn.execute(f"INSERT INTO cases ({', '.join(row)}) VALUES ({', '.join(':' + k for k in row)}) "
                       "ON CONFLICT DO NOTHING", row)
    return cur.rowcount == 1


def issue_default_ratings(conn: sqlite3.Connection, now: float, origin: str, level: str,
                          calendar: WorkCalendar, followup_days: int) -> int:
    """Give every open case whose window has closed its default rating; return how many were issued."""
    due = conn.execute("SELECT case_ref FROM cases WHERE state = 'open' AND deadline <= ? ORDER BY deadline",
                       (now,)).fetchall()
    issued = 0
    for (case_ref,) in due:
        stored = ratings.store(conn, ratings.default_for(case_ref, origin, level, now), calendar,
                               followup_days) == ratings.STORED
        issued += stored
        # Not stored means a rating of the case exists already: it was rated, not defaulted.
        conn.execute("UPDATE cases SET state = ? WHERE case_ref = ?", ("defaulted" if stored else "rated", case_ref))
    return issued


def fill_missing_deadlines(conn: sqlite3.Connection, calendar: WorkCalendar, window_days: int,
                           followup_days: int, visit_days: int) -> None:
    """Deadlines not known yet (the calendar lacked a year, or a work order's 回访 is new): compute those it
    now can."""
    for table, key, start, column, days in (("cases", "case_ref", "finished_at", "deadline", window_days),
                                            ("followups", "rating_id", "opened_at", "deadline", followup_days),
                                            ("followups", "rating_id", "opened_at", "visit_deadline", visit_days)):
        for row_key, started in conn.execute(f"SELECT {key}, {start} FROM {table} WHERE {column} IS NULL").fetchall():
            try:
                conn.execute(f"UPDATE {table} SET {column} = ? WHERE {key} = ?",
                             (calendar.deadline(started, days), row_key))
            except CalendarMissing:
                continue


def prune(conn: sqlite3.Connection, now: float, operational_days: int, retention_years: int) -> dict:
    """Delete what is no longer needed; return how many rows of each kind went.

    Ratings, their cases and follow-ups are kept `retention_years` (the monthly 通报 and the yearly 考核 count
    them), and then only forwarded ones with no open follow-up go. Operational rows (forward attempts, rejected
    messages, rating links of cases no longer open) go after `operational_days`; window-rating limits after
    two days. The audit log is never pruned.
    """
    kept_from, operational_from = now - retention_years * YEAR_S, now - operational_days * DAY_S
    old = ("SELECT o.rating_id FROM outbox o JOIN ratings r ON r.id = o.rating_id WHERE o.state = 'forwarded' "
           "AND o.done_at < :kept AND r.assessed_at < :kept "
           "AND o.rating_id NOT IN (SELECT rating_id FROM followups WHERE state = 'open') "
           "AND o.rating_id NOT IN (SELECT rating_id FROM steps WHERE state != 'forwarded')")
    args = {"kept": kept_from, "operational": operational_from, "limits": now - WINDOW_LIMITS_KEPT_S}
    deleted = {
        "steps": conn.execute(f"DELETE FROM steps WHERE rating_id IN ({old})", args).rowcount,
        "warnings": conn.execute(f"DELETE FROM warnings WHERE rating_id IN ({old})", args).rowcount,
        "followups": conn.execute(f"DELETE FROM followups WHERE rating_id IN ({old})", args).rowcount,
        "ratings": conn.execute(f"DELETE FROM ratings WHERE id IN ({old})", args).rowcount,
        "already_rated": conn.execute("DELETE FROM already_rated WHERE received_at < :kept", args).rowcount,
        "tokens": conn.execute("DELETE FROM tokens WHERE created_at < :operational AND case_ref IN "
                               "(SELECT case_ref FROM cases WHERE state != 'open')", args).rowcount,
        "cases": conn.execute("DELETE FROM cases WHERE state != 'open' AND finished_at < :kept AND case_ref NOT IN "
                              "(SELECT case_ref FROM ratings WHERE case_ref IS NOT NULL) AND case_ref NOT IN "
                              "(SELECT case_ref FROM tokens)", args).rowcount,
        "forward_attempts": conn.execute("DELETE FROM forward_attempts WHERE at < :operational", args).rowcount,
        "rejects": conn.execute("DELETE FROM rejects WHERE received_at < :operational", args).rowcount,
        "window_ratings": conn.execute("DELETE FROM window_ratings WHERE at < :limits", args).rowcount,
    }
    return {kind: count for kind, count in deleted.items() if count}


class Housekeeping(Periodic):
    """Issues default ratings, fills deadlines and prunes, every `interval` seconds."""

    interval = 30.0
    prune_every_s = 3600.0  # pruning reads years of rows: once an hour is plenty
    name = "housekeeping"

    def __init__(self, config: dict, writer: Writer, clock, calendar: WorkCalendar, metrics):
        super().__init__()
        self.config = config
        self.writer = writer
        self.clock = clock
        self.calendar = calendar
        self.defaults_issued = Counter("hcp_default_ratings", "default ratings issued", registry=metrics)
        self._pruned_at = float("-inf")

    def run_once(self) -> None:
        c = self.config
        now = self.clock.now()
        self.writer.call(lambda conn: fill_missing_deadlines(conn, self.calendar, c["cases.rating_window_days"],
                                                              c["cases.followup_days"], c["cases.visit_days"]))
        warned = self.writer.call(lambda conn: workorders.raise_warnings(conn, now, c["cases.warn_percent"]))
        if warned:
            log.info("raised %d work order warnings", warned)
        issued = self.writer.call(lambda conn: issue_default_ratings(
            conn, now, c["gateway.name"], c["cases.default_level"], self.calendar, c["cases.followup_days"]),
            needs_space=True)
        if issued:
            log.info("issued %d default ratings", issued)
            self.defaults_issued.inc(issued)
        if time.monotonic() - self._pruned_at < self.prune_every_s:
            return
        self._pruned_at = time.monotonic()
        pruned = self.writer.call(lambda conn: prune(conn, now, c["store.retention_days"], c["store.retention_years"]))
        if pruned:
            log.info("pruned %s", ", ".join(f"{count} {kind}" for kind, count in pruned.items()))


# ---- the case API's writes (jobs for the writer) ----

def finish_case(conn: sqlite3.Connection, case: dict, calendar: WorkCalendar, window_days: int, now: float) -> str:
    """Record a finished case (办结) and its rating token, once; return the token (the same on a repeat)."""
    record_case(conn, case, calendar, window_days)
    conn.execute("INSERT INTO tokens (token, case_ref, created_at) VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
                 (secrets.token_urlsafe(18), case["case_ref"], now))
    return conn.execute("SELECT token FROM tokens WHERE case_ref = ?", (case["case_ref"],)).fetchone()[0]


def cancel_case(conn: sqlite3.Connection, case_ref: str) -> bool:
    """Cancel an open case; False if there is no open case of that reference."""
    return conn.execute("UPDATE cases SET state = 'cancelled' WHERE case_ref = ? AND state = 'open'",
                        (case_ref,)).rowcount == 1


def rate_by_token(conn: sqlite3.Connection, token: str, choice: dict, now: float, origin: str,
                  calendar: WorkCalendar, followup_days: int, window_days: int) -> str:
    """Store a rating made on the citizen's page (QR channel), or its 追评 when one is offered: STORED,
    ALREADY_RATED, or EXPIRED / UNKNOWN."""
    row = conn.execute("SELECT c.case_ref, c.deadline, c.state, c.finished_at FROM tokens t JOIN cases c "
                       "ON c.case_ref = t.case_ref WHERE t.token = ?", (token,)).fetchone()
    if row is None:
        return UNKNOWN
    if row["state"] == "cancelled" or (row["deadline"] is not None and now >= row["deadline"]
                                       and row["state"] == "open"):
        return EXPIRED
    second = second_rating_offer(conn, row["case_ref"], row["finished_at"], now, calendar, window_days) is not None
    rating = ratings.from_page(origin, row["case_ref"], choice, now, assess_number=2 if second else 1)
    return ratings.store(conn, rating, calendar, followup_days)


def second_rating_offer(db, case_ref: str, finished_at: float, now: float, calendar: WorkCalendar,
                        window_days: int) -> str | None:
    """The measures taken, when the case's 差评 was rectified and its citizen may still give one 追评: until
    FOLLOWUP_EXTRA_DAYS working days after the case's first rating window. None otherwise."""
    row = db.execute("SELECT s.content FROM ratings r JOIN steps s ON s.rating_id = r.id AND s.step = 'rectified' "
                     "WHERE r.case_ref = ? AND r.assess_number = 1 AND NOT EXISTS (SELECT 1 FROM ratings x "
                     "WHERE x.case_ref = r.case_ref AND x.assess_number = 2)", (case_ref,)).fetchone()
    if row is None:
        return None
    try:
        until = calendar.deadline(finished_at, window_days + FOLLOWUP_EXTRA_DAYS)
    except CalendarMissing:
        return None
    return row["content"] if now < until else None


UNKNOWN, EXPIRED = "unknown", "expired"


# ---- the case API's actions ----

def mask_name(name: str) -> str:
    """张三 -> 张*, 李小华 -> 李*华: enough for the citizen to recognise the case, no more."""
    name = name.strip()
    if len(name) <= 2:
        return name[:1] + "*" if name else ""
    return name[0] + "*" * (len(name) - 2) + name[-1]


class Cases:
    """What the window system does with cases through the API: report one finished, read it, cancel it."""

    def __init__(self, config: dict, writer: Writer, reader, registry, downlink, clock, calendar: WorkCalendar):
        self.config, self.writer, self.reader = config, writer, reader
        self.registry, self.downlink, self.clock, self.calendar = registry, downlink, clock, calendar

    def report(self, body: dict, roles) -> dict:
        """A case finished (办结): record it with its one-time rating URL and prompt the window's evaluator with
        the masked applicant's name. The applicant's name and certificate number are never stored."""
        now = self.clock.now()
        case = case_from(body, now)
        device = self._device_for(body.get("device"), case["window_no"])
        case["dev"] = device
        token = self.writer.call(lambda conn: finish_case(conn, case, self.calendar,
                                                          self.config["cases.rating_window_days"], now),
                                 needs_space=True)
        url = self.config["api.public_url"].rstrip("/") + "/r/" + token
        view = self.view(case["case_ref"], roles)
        online = device is not None and self.registry.online(device)
        prompted = False
        if device is not None and view["state"] == "open":
            applicant = body.get("applicant_name")
            text = (mask_name(applicant) + "的 " if isinstance(applicant, str) and applicant.strip() else "") \
                + case["task_name"]
            self.downlink.prompt(device, case["case_ref"], text[:64], url, self.config["cases.prompt_s"])
            prompted = online
        return {**view, "url": url, "device": device, "device_online": online, "prompted": prompted}

    def _device_for(self, named, window_no: str) -> str | None:
        """The evaluator to prompt: the one the window system names, which must be a registered device not
        revoked, else the window's own."""
        if named is None:
            return self.registry.device_of_window(window_no)
        if not isinstance(named, str) or codec.DEVICE(named):
            raise InvalidInput("device: a device id, 1-32 of A-Z a-z 0-9 _ -", "device")
        if self.registry.device(named)["revoked_at"] is not None:  # NotFound if not registered
            raise Conflict(f"device {named} is revoked")
        return named

    def view(self, case_ref: str, roles) -> dict:
        """A case as the caller may see it. The window's staff see its state only, never how the citizen rated
        them (policy art. 11); managers and auditors see the rating; comments are for managers only."""
        row = self.reader.execute(
            "SELECT c.case_ref, c.project_no, c.state, c.deadline, r.level, r.channel, r.reasons, r.public, "
            "r.comment FROM cases c LEFT JOIN ratings r ON r.case_ref = c.case_ref WHERE c.case_ref = ?",
            (case_ref,)).fetchone()
        if row is None:
            raise NotFound(f"no case {case_ref}")
        view = {key: row[key] for key in ("case_ref", "project_no", "state", "deadline")}
        if roles & {"manager", "auditor"}:
            view.update(level=row["level"], channel=row["channel"], public=row["public"],
                        reasons=row["reasons"].split(",") if row["reasons"] else [])
        if "manager" in roles:
            view["comment"] = row["comment"]
        return view

    def cancel(self, case_ref: str, roles) -> dict:
        """Withdraw an open case and its prompt."""
        state = self.view(case_ref, roles)["state"]
        if not self.writer.call(lambda conn: cancel_case(conn, case_ref)):
            raise Conflict(f"case {case_ref} is {state}, not open")
        device = self.reader.execute("SELECT dev FROM cases WHERE case_ref = ?", (case_ref,)).fetchone()["dev"]
        if device:
            self.downlink.cancel(device, case_ref)
        return self.view(case_ref, roles)


def case_from(body: dict, now: float) -> dict:
    """The case a window system reported, checked; InvalidInput naming the field that is wrong."""
    for name in REQUIRED:
        if not isinstance(body.get(name), str) or not body[name].strip():
            raise InvalidInput(f"{name} is required (text)", name)
    if not _CASE_REF.match(body["project_no"]):
        raise InvalidInput("project_no: 1-50 of A-Z a-z 0-9 _ -", "project_no")
    if len(body["dept_code"]) != 18:
        raise InvalidInput("dept_code: the 18-character unified social credit code", "dept_code")
    if body.get("user_prop") not in (None, 1, 2):
        raise InvalidInput("user_prop: 1 natural person, 2 legal person", "user_prop")
    finished_at = body.get("finished_at", now)
    if isinstance(finished_at, bool) or not isinstance(finished_at, (int, float)) or finished_at > now + 300:
        raise InvalidInput("finished_at: Unix seconds, not in the future", "finished_at")
    return {"case_ref": body["project_no"], "project_no": body["project_no"], "task_code": body["task_code"][:64],
            "task_name": body["task_name"][:200], "dept_code": body["dept_code"],
            "dept_name": (body.get("dept_name") or None), "staff_no": body["staff_no"][:30],
            "window_no": body["window_no"][:30], "user_prop": body.get("user_prop"), "finished_at": float(finished_at)}
