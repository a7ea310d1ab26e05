"""Writing ratings, rejects and device status: jobs for the writer (each takes the open connection)."""
from __future__ import annotations

import functools
import hashlib
import json
import secrets
import sqlite3

from gateway.workdays import CalendarMissing, WorkCalendar
from protocol.codec import BAD_LEVELS

STORED, DUPLICATE, ALREADY_RATED = "stored", "duplicate", "already_rated"
PHONE_LIMIT, WINDOW_LIMIT = "phone_limit", "window_limit"  # a window rating refused by its limits
FUTURE_TOLERANCE_S = 60  # a device clock further ahead than this is not believed


def _rating(origin: str, rid: str, channel: str, case_ref: str | None, level: str, public: bool, received_at: float,
            reasons: list | None = None, comment: str | None = None, boot: str | None = None, seq: int | None = None,
            device_time: float | None = None, assessed_at: float | None = None, assess_number: int = 1) -> dict:
    """A rating as stored: every shape below goes through here, so they differ only where they must."""
    return {"origin": origin, "rid": rid, "channel": channel, "boot": boot, "seq": seq, "case_ref": case_ref,
            "level": level, "public": int(public), "reasons": ",".join(reasons or []) or None,
            "comment": comment or None, "device_time": device_time, "received_at": received_at,
            "assessed_at": received_at if assessed_at is None else assessed_at, "assess_number": assess_number}


def from_device(msg: dict, received_at: float) -> dict:
    """A press on an evaluator (the protocol's rating message), assessed when the device says, if believable."""
    device_time = msg["t"]
    believable = device_time is not None and device_time <= received_at + FUTURE_TOLERANCE_S
    return _rating(msg["dev"], msg["id"], "device", msg["case"], msg["lvl"], msg["pub"], received_at,
                   msg.get("rsn"), boot=msg["boot"], seq=msg["seq"], device_time=device_time,
                   assessed_at=device_time if believable else received_at)


def from_page(origin: str, case_ref: str | None, choice: dict, received_at: float, assess_number: int = 1) -> dict:
    """A rating made on the citizen's page (QR channel): of a case, or of a window itself (no case); a case's
    追评 is its second evaluation."""
    return _rating(origin, secrets.token_hex(8), "qr", case_ref, choice["level"], choice["public"], received_at,
                   choice["reasons"], choice["comment"], assess_number=assess_number)


def default_for(case_ref: str, origin: str, level: str, issued_at: float) -> dict:
    """The system's default rating of a case nobody rated in time; its id is stable, so it is stored once."""
    rid = hashlib.sha256(case_ref.encode()).hexdigest()[:16]
    return _rating(origin, rid, "default", case_ref, level, True, issued_at)


_FIELDS = ("origin", "rid", "channel", "boot", "seq", "case_ref", "level", "public", "reasons", "comment",
           "device_time", "received_at", "assessed_at", "assess_number")


@functools.lru_cache(maxsize=None)
def _insert_sql(rows: int) -> str:
    """One statement for a whole batch: SQLite inserts it in one step, so the writer hands the GIL to the
    MQTT thread once per batch instead of once per row."""
    row = "(" + ", ".join("?" * len(_FIELDS)) + ")"
    return (f"INSERT INTO ratings ({', '.join(_FIELDS)}) VALUES " + ", ".join([row] * rows)
            + " ON CONFLICT DO NOTHING")


def store(conn: sqlite3.Connection, rating: dict, calendar: WorkCalendar, followup_days: int) -> str:
    """Store one rating with its outbox entry, once; see store_many."""
    return store_many(conn, [rating], calendar, followup_days)[0]


def store_many(conn: sqlite3.Connection, batch: list[dict], calendar: WorkCalendar, followup_days: int) -> list[str]:
    """Store ratings (the rating_stored trigger queues each for the province), each once.

    Returns STORED, DUPLICATE or ALREADY_RATED per rating.

    DUPLICATE: this (origin, rid) was stored before. ALREADY_RATED: its case has a rating from another
    attempt or channel (一次一评); the attempt is recorded, not stored as a rating.
    """
    cursor = conn.execute(_insert_sql(len(batch)), [r[f] for r in batch for f in _FIELDS])
    inserted = cursor.rowcount
    if inserted == len(batch):
        outcomes = [STORED] * len(batch)
    else:  # ids of one statement's rows are consecutive: those above `before` are new
        outcomes = _sort_out(conn, batch, cursor.lastrowid - inserted if inserted else 1 << 62)
    bad = [{"origin": r["origin"], "rid": r["rid"],
            "deadline": followup_deadline(calendar, r["received_at"], followup_days)}
           for r, outcome in zip(batch, outcomes)
           if outcome == STORED and r["level"] in BAD_LEVELS and r["channel"] != "default" and r["assess_number"] == 1]
    if bad:
        # Its work order, assigned to the case's department (else the window's) and about its staff member.
        conn.execute("INSERT INTO followups (rating_id, opened_at, deadline, dept_code, staff_no) "
                     "SELECT r.id, r.received_at, j.value ->> 'deadline', coalesce(c.dept_code, d.dept_code), "
                     "coalesce(c.staff_no, d.staff_no) FROM json_each(?) j "
                     "JOIN ratings r ON r.origin = j.value ->> 'origin' AND r.rid = j.value ->> 'rid' "
                     "LEFT JOIN cases c ON c.case_ref = r.case_ref LEFT JOIN devices d ON d.dev = r.origin",
                     (json.dumps(bad),))
    return outcomes


def _sort_out(conn: sqlite3.Connection, batch: list[dict], before: int) -> list[str]:
    """The slow path, when some of a batch were not inserted: which were stored, repeated, or too late."""
    outcomes, seen = [], set()
    for rating in batch:
        key = (rating["origin"], rating["rid"])
        row = conn.execute("SELECT id FROM ratings WHERE origin = ? AND rid = ?", key).fetchone()
        if row and row[0] > before and key not in seen:
            outcomes.append(STORED)
        elif row:
            outcomes.append(DUPLICATE)
        else:
            recorded = conn.execute(
                "INSERT INTO already_rated (origin, rid, channel, case_ref, level, received_at) "
                "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                (*key, rating["channel"], rating["case_ref"], rating["level"], rating["received_at"])).rowcount
            outcomes.append(ALREADY_RATED if recorded else DUPLICATE)
        seen.add(key)
    return outcomes


def store_window_rating(conn: sqlite3.Connection, rating: dict, window_no: str, phone: str, day: str,
                        per_hour: int, calendar: WorkCalendar, followup_days: int) -> str:
    """Store a rating of a window itself (its standing QR, no case) within its limits: one per phone per window
    per China day (PHONE_LIMIT), `per_hour` per window (WINDOW_LIMIT); beyond them nothing is stored."""
    recent = conn.execute("SELECT count(*) FROM window_ratings WHERE window_no = ? AND at > ?",
                          (window_no, rating["received_at"] - 3600)).fetchone()[0]
    if recent >= per_hour:
        return WINDOW_LIMIT
    if not conn.execute("INSERT INTO window_ratings (window_no, phone, day, at) VALUES (?, ?, ?, ?) "
                        "ON CONFLICT DO NOTHING", (window_no, phone, day, rating["received_at"])).rowcount:
        return PHONE_LIMIT
    return store(conn, rating, calendar, followup_days)


def followup_deadline(calendar: WorkCalendar, opened_at: float, days: int) -> float | None:
    """None while the calendar lacks the year; the cases task fills it in later."""
    try:
        return calendar.deadline(opened_at, days)
    except CalendarMissing:
        return None


def store_reject(conn: sqlite3.Connection, received_at: float, topic: str, dev: str | None, ref: str | None,
                 code: str, field: str | None, detail: str, payload: bytes) -> None:
    conn.execute("INSERT INTO rejects (received_at, topic, dev, ref, code, field, detail, payload) "
                 "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                 (received_at, topic[:200], dev, ref, code, field, detail, payload[:1024]))


def store_status(conn: sqlite3.Connection, hall: str, msg: dict, received_at: float) -> None:
    """Record a device's status (heartbeat or Last Will) in the registry, creating the entry if new."""
    conn.execute("INSERT INTO devices (dev, hall) VALUES (?, ?) ON CONFLICT DO NOTHING", (msg["dev"], hall))
    conn.execute(
        "UPDATE devices SET state = ?, boot = coalesce(?, boot), fw = coalesce(?, fw), "
        "uptime_s = coalesce(?, uptime_s), "
        "heap = coalesce(?, heap), rssi = coalesce(?, rssi), outbox = coalesce(?, outbox), last_error = ?, "
        "config_ver = coalesce(?, config_ver), last_seen = ? WHERE dev = ?",
        (msg["state"], msg.get("boot"), msg.get("fw"), msg.get("up"), msg.get("heap"), msg.get("rssi"),
         msg.get("outbox"), msg.get("err"), msg.get("cfg"), received_at, msg["dev"]))
