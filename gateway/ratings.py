"""Writing ratings, rejects and device status: jobs for the writer (each takes the open connection)."""
from __future__ import annotations

import sqlite3

from gateway.workdays import CalendarMissing, WorkCalendar
from protocol.codec import BAD_LEVELS

STORED, DUPLICATE, ALREADY_RATED = "stored", "duplicate", "already_rated"
FUTURE_TOLERANCE_S = 60  # a device clock further ahead than this is not believed


def from_device(hall: str, msg: dict, received_at: float) -> dict:
    """The stored form of a device's rating message."""
    device_time = msg["t"]
    believable = device_time is not None and device_time <= received_at + FUTURE_TOLERANCE_S
    return {
        "origin": msg["dev"], "rid": msg["id"], "channel": "device", "boot": msg["boot"], "seq": msg["seq"],
        "case_ref": msg["case"], "level": msg["lvl"], "public": int(msg["pub"]),
        "reasons": ",".join(msg.get("rsn") or []) or None, "comment": None,
        "device_time": device_time, "received_at": received_at,
        "assessed_at": device_time if believable else received_at,
    }


_INSERT = ("INSERT INTO ratings (origin, rid, channel, boot, seq, case_ref, level, public, reasons, comment, "
           "device_time, received_at, assessed_at) VALUES (:origin, :rid, :channel, :boot, :seq, :case_ref, :level, "
           ":public, :reasons, :comment, :device_time, :received_at, :assessed_at) ON CONFLICT DO NOTHING")


def store(conn: sqlite3.Connection, rating: dict, calendar: WorkCalendar, followup_days: int) -> str:
    """Store a rating with its outbox entry, once. Returns STORED, DUPLICATE or ALREADY_RATED.

    DUPLICATE: this (origin, rid) was stored before. ALREADY_RATED: its case has a rating from another
    attempt or channel (一次一评); the attempt is recorded, not stored as a rating.
    """
    cur = conn.execute(_INSERT, rating)
    if cur.rowcount == 0:
        key = (rating["origin"], rating["rid"])
        if conn.execute("SELECT 1 FROM ratings WHERE origin = ? AND rid = ?", key).fetchone():
            return DUPLICATE
        inserted = conn.execute(
            "INSERT INTO already_rated (origin, rid, channel, case_ref, level, received_at) VALUES (?, ?, ?, ?, ?, ?) "
            "ON CONFLICT DO NOTHING",
            (*key, rating["channel"], rating["case_ref"], rating["level"], rating["received_at"])).rowcount
        return ALREADY_RATED if inserted else DUPLICATE
    rating_id = cur.lastrowid
    conn.execute("INSERT INTO outbox (rating_id) VALUES (?)", (rating_id,))
    if rating["case_ref"] is not None:
        conn.execute("UPDATE cases SET state = 'rated' WHERE case_ref = ? AND state != 'rated'", (rating["case_ref"],))
    if rating["level"] in BAD_LEVELS and rating["channel"] != "default":
        opened = rating["received_at"]
        conn.execute("INSERT INTO followups (rating_id, opened_at, deadline) VALUES (?, ?, ?)",
                     (rating_id, opened, followup_deadline(calendar, opened, followup_days)))
    return STORED


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
