"""What operators read: status figures, dead letters, exports. Read-only, except retrying dead letters."""
from __future__ import annotations

import csv
import datetime as dt
import io
from pathlib import Path

from gateway import audit, db
from gateway.workdays import CHINA
from protocol.codec import LEVEL_LABELS, LEVELS


def status(database, now: float) -> dict:
    """Queue depths, the oldest unforwarded rating, dead letters, devices, rejects, open cases and follow-ups."""
    one = lambda sql, *args: database.execute(sql, args).fetchone()[0]  # noqa: E731
    oldest = one("SELECT min(r.received_at) FROM outbox o JOIN ratings r ON r.id = o.rating_id "
                 "WHERE o.state = 'pending'")
    devices = dict(database.execute("SELECT state, count(*) FROM devices GROUP BY state").fetchall())
    return {
        "ratings_stored": one("SELECT count(*) FROM ratings"),
        "pending": one("SELECT count(*) FROM outbox WHERE state = 'pending'"),
        "forwarded": one("SELECT count(*) FROM outbox WHERE state = 'forwarded'"),
        "dead_letters": one("SELECT count(*) FROM outbox WHERE state = 'dead'"),
        "oldest_pending_age_s": round(now - oldest, 1) if oldest is not None else None,
        "devices_online": devices.get("online", 0),
        "devices_offline": devices.get("offline", 0),
        "rejects": one("SELECT count(*) FROM rejects"),
        "already_rated": one("SELECT count(*) FROM already_rated"),
        "cases_open": one("SELECT count(*) FROM cases WHERE state = 'open'"),
        "followups_open": one("SELECT count(*) FROM followups WHERE state = 'open'"),
        "steps_pending": one("SELECT count(*) FROM steps WHERE state = 'pending'"),
        "steps_dead": one("SELECT count(*) FROM steps WHERE state = 'dead'"),
        "db_bytes": db.used_bytes(database),
    }


def dead_letters(database) -> list[dict]:
    """Ratings, and work-order steps, the province refused (or that could not be mapped). A dead step holds
    back the later steps of its work order until it is retried."""
    cursor = database.execute(
        "SELECT o.rating_id, NULL AS step, r.origin, r.channel, r.case_ref, r.level, r.assessed_at, o.attempts, "
        "o.last_error FROM outbox o JOIN ratings r ON r.id = o.rating_id WHERE o.state = 'dead' "
        "UNION ALL SELECT s.rating_id, s.number, r.origin, r.channel, r.case_ref, s.step, s.at, s.attempts, "
        "s.last_error FROM steps s JOIN ratings r ON r.id = s.rating_id WHERE s.state = 'dead' ORDER BY 1, 2")
    return [dict(row) for row in cursor]


def retry_dead_letters(path: Path, rating_ids: list[int] | None, actor: str, now: float) -> int:
    """Put dead letters (all, or the given ones) back in the queue, with an audit entry; return how many.

    One short transaction from the operator's command: the gateway's forwarder picks them up.
    """
    database = db.connect(path)
    try:
        conn = database.conn
        conn.execute("BEGIN IMMEDIATE")
        where, args = "state = 'dead'", []
        if rating_ids:
            where += f" AND rating_id IN ({', '.join('?' * len(rating_ids))})"
            args = list(rating_ids)
        count = sum(conn.execute(f"UPDATE {table} SET state = 'pending', last_error = NULL, done_at = NULL "
                                 f"WHERE {where}", args).rowcount for table in ("outbox", "steps"))
        detail = f"{count} ratings" + (f": {rating_ids}" if rating_ids else "")
        audit.append(conn, now, actor, "retry_dead_letters", detail)
        conn.execute("COMMIT")
        return count
    finally:
        database.conn.close()


EXPORT_COLUMNS = ["rating_id", "origin", "channel", "case_ref", "level", "满意度", "public", "reasons",
                  "assessed_at", "forward_state"]


def export_rows(database, start: dt.date, end: dt.date, public_only: bool = False) -> list[dict]:
    """Ratings assessed from `start` to `end` inclusive (China dates), oldest first; no comments, no names."""
    lo = dt.datetime.combine(start, dt.time(), CHINA).timestamp()
    hi = dt.datetime.combine(end + dt.timedelta(days=1), dt.time(), CHINA).timestamp()
    rows = database.execute(
        "SELECT r.id, r.origin, r.channel, r.case_ref, r.level, r.public, r.reasons, r.assessed_at, o.state "
        "FROM ratings r LEFT JOIN outbox o ON o.rating_id = r.id WHERE r.assessed_at >= ? AND r.assessed_at < ? "
        + ("AND r.public = 1 " if public_only else "") + "ORDER BY r.assessed_at, r.id", (lo, hi))
    return [dict(zip(EXPORT_COLUMNS, (rid, origin, channel, case_ref or "", level, LEVEL_LABELS[LEVELS.index(level)],
                                      public, reasons or "",
                                      dt.datetime.fromtimestamp(assessed_at, CHINA).strftime("%Y-%m-%d %H:%M:%S"),
                                      state or "")))
            for rid, origin, channel, case_ref, level, public, reasons, assessed_at, state in rows]


def export_csv(database, start: dt.date, end: dt.date, public_only: bool = False) -> str:
    """The same rows as CSV."""
    out = io.StringIO()
    writer = csv.DictWriter(out, EXPORT_COLUMNS)
    writer.writeheader()
    writer.writerows(export_rows(database, start, end, public_only))
    return out.getvalue()
