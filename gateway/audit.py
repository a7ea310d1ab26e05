"""The append-only audit log: who read rating data or changed the hall's set-up, and when.

Triggers (gateway/db.py) refuse to update or delete it; entries are only ever appended, here.
"""
from __future__ import annotations

import sqlite3

DETAIL_MAX = 500


def append(conn: sqlite3.Connection, at: float, actor: str, action: str, detail: str) -> None:
    conn.execute("INSERT INTO audit (at, actor, action, detail) VALUES (?, ?, ?, ?)",
                 (at, actor, action, detail[:DETAIL_MAX]))


def entries(reader, since: int, limit: int = 1000) -> list[dict]:
    """Entries after id `since`, oldest first."""
    rows = reader.execute("SELECT id, at, actor, action, detail FROM audit WHERE id > ? ORDER BY id LIMIT ?",
                          (since, limit))
    return [dict(row) for row in rows]
