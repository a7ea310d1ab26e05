"""Cases (办件) and what time does to them: rating windows, default ratings, follow-up deadlines, pruning.

A case gets a rating window of N working days after 办结 (policy art. 8). When it closes with no rating,
the gateway issues a default rating, flagged as such and forwarded with the default channel code.
"""
from __future__ import annotations

import hashlib
import logging
import secrets
import sqlite3

from gateway import ratings
from gateway.periodic import Periodic
from gateway.store import Writer
from gateway.workdays import CalendarMissing, WorkCalendar

log = logging.getLogger("gateway.cases")
DAY_S = 86400.0

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


def default_rating_id(case_ref: str) -> str:
    """Stable per case, so issuing the default twice stores it once."""
    return hashlib.sha256(case_ref.encode()).hexdigest()[:16]


def issue_default_ratings(conn: sqlite3.Connection, now: float, origin: str, level: str,
                          calendar: WorkCalendar, followup_days: int) -> int:
    """Give every open case whose window has closed its default rating; return how many were issued."""
    due = conn.execute("SELECT case_ref FROM cases WHERE state = 'open' AND deadline <= ? ORDER BY deadline",
                       (now,)).fetchall()
    issued = 0
    for (case_ref,) in due:
        rating = {"origin": origin, "rid": default_rating_id(case_ref), "channel": "default", "boot": None,
                  "seq": None, "case_ref": case_ref, "level": level, "public": 1, "reasons": None, "comment": None,
                  "device_time": None, "received_at": now, "assessed_at": now}
        stored = ratings.store(conn, rating, calendar, followup_days) == ratings.STORED
        issued += stored
        # Not stored means a rating of the case exists already: it was rated, not defaulted.
        conn.execute("UPDATE cases SET state = ? WHERE case_ref = ?", ("defaulted" if stored else "rated", case_ref))
    return issued


def fill_missing_deadlines(conn: sqlite3.Connection, calendar: WorkCalendar, window_days: int,
                           followup_days: int) -> None:
    """Deadlines left empty while the calendar lacked a year: compute those it now can."""
    for table, key, start, days in (("cases", "case_ref", "finished_at", window_days),
                                    ("followups", "rating_id", "opened_at", followup_days)):
        for row_key, started in conn.execute(f"SELECT {key}, {start} FROM {table} WHERE deadline IS NULL").fetchall():
            try:
                conn.execute(f"UPDATE {table} SET deadline = ? WHERE {key} = ?",
                             (calendar.deadline(started, days), row_key))
            except CalendarMissing:
                continue


def prune(conn: sqlite3.Connection, now: float, retention_days: int) -> int:
    """Delete forwarded ratings (and settled cases and attempts) older than the retention period."""
    cutoff = now - retention_days * DAY_S
    deleted = conn.execute(
        "DELETE FROM ratings WHERE id IN (SELECT rating_id FROM outbox WHERE state = 'forwarded' AND done_at < ?) "
        "AND id NOT IN (SELECT rating_id FROM followups WHERE state = 'open')", (cutoff,)).rowcount
    conn.execute("DELETE FROM cases WHERE state != 'open' AND finished_at < ? "
                 "AND case_ref NOT IN (SELECT case_ref FROM ratings WHERE case_ref IS NOT NULL)", (cutoff,))
    conn.execute("DELETE FROM forward_attempts WHERE at < ?", (cutoff,))
    conn.execute("DELETE FROM already_rated WHERE received_at < ?", (cutoff,))
    return deleted


class Housekeeping(Periodic):
    """Issues default ratings, fills deadlines and prunes, every `interval` seconds."""

    interval = 30.0
    name = "housekeeping"

    def __init__(self, config: dict, writer: Writer, clock, calendar: WorkCalendar):
        super().__init__()
        self.config = config
        self.writer = writer
        self.clock = clock
        self.calendar = calendar
        self.defaults_issued = 0

    def run_once(self) -> None:
        c = self.config
        now = self.clock.now()
        self.writer.call(lambda conn: fill_missing_deadlines(conn, self.calendar, c["cases.rating_window_days"],
                                                              c["cases.followup_days"]))
        issued = self.writer.call(lambda conn: issue_default_ratings(
            conn, now, c["gateway.name"], c["cases.default_level"], self.calendar, c["cases.followup_days"]),
            needs_space=True)
        if issued:
            log.info("issued %d default ratings", issued)
            self.defaults_issued += issued
        pruned = self.writer.call(lambda conn: prune(conn, now, c["store.retention_days"]))
        if pruned:
            log.info("pruned %d forwarded ratings older than %d days", pruned, c["store.retention_days"])


# ---- the case API's writes (issue: cases, prompts and QR codes) ----

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
                  calendar: WorkCalendar, followup_days: int) -> str:
    """Store a rating made on the citizen's page (QR channel): STORED, ALREADY_RATED, or EXPIRED / UNKNOWN."""
    row = conn.execute("SELECT c.case_ref, c.deadline, c.state FROM tokens t JOIN cases c ON c.case_ref = t.case_ref "
                       "WHERE t.token = ?", (token,)).fetchone()
    if row is None:
        return UNKNOWN
    case_ref, deadline, state = row
    if state == "cancelled" or (deadline is not None and now >= deadline and state == "open"):
        return EXPIRED
    rating = {"origin": origin, "rid": secrets.token_hex(8), "channel": "qr", "boot": None, "seq": None,
              "case_ref": case_ref, "level": choice["level"], "public": int(choice["public"]),
              "reasons": ",".join(choice["reasons"]) or None, "comment": choice["comment"] or None,
              "device_time": None, "received_at": now, "assessed_at": now}
    return ratings.store(conn, rating, calendar, followup_days)


UNKNOWN, EXPIRED = "unknown", "expired"
