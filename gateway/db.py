"""The gateway's SQLite database: connections and versioned schema migrations.

In a running gateway only the writer thread (gateway.store.Writer) writes; its other parts read through
read-only connections. The operator's commands (`hcp-gateway revoke`, `dead-letters --retry`, the audit entry of
`export`) write from their own process in one short transaction each; WAL and the busy timeout let them wait
their turn beside the gateway's writer.
"""
from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

import sqlite_utils


class StorageError(RuntimeError):
    """The database cannot be opened or written (missing folder, no permission, disk full, corrupt file)."""


# Small recorded steps, applied in order; never edit one that has shipped, add the next.
MIGRATIONS = [
    ("initial schema", """
CREATE TABLE devices (
    dev TEXT PRIMARY KEY,
    hall TEXT NOT NULL,
    window_no TEXT, dept_code TEXT, dept_name TEXT, staff_no TEXT,
    state TEXT NOT NULL DEFAULT 'unknown',          -- online | offline | unknown
    boot TEXT, fw TEXT, uptime_s INTEGER, heap INTEGER, rssi INTEGER, outbox INTEGER,
    last_error TEXT, config_ver INTEGER, last_seen REAL
);
CREATE TABLE cases (
    case_ref TEXT PRIMARY KEY,                      -- what the prompt and the device's rating carry
    project_no TEXT NOT NULL, task_code TEXT NOT NULL, task_name TEXT NOT NULL,
    dept_code TEXT NOT NULL, dept_name TEXT, staff_no TEXT NOT NULL, window_no TEXT, dev TEXT,
    user_prop INTEGER,
    finished_at REAL NOT NULL,                      -- 办结
    deadline REAL,                                  -- rating window closes; NULL until the calendar knows
    state TEXT NOT NULL DEFAULT 'open'              -- open | rated | defaulted | cancelled
);
CREATE INDEX cases_open ON cases(deadline) WHERE state = 'open';
CREATE TABLE ratings (
    id INTEGER PRIMARY KEY,
    origin TEXT NOT NULL,                           -- device id, or the gateway's name (QR, default)
    rid TEXT NOT NULL,                              -- the protocol's rating id
    channel TEXT NOT NULL,                          -- device | qr | default
    boot TEXT, seq INTEGER,
    case_ref TEXT,
    level TEXT NOT NULL, public INTEGER NOT NULL, reasons TEXT, comment TEXT,
    device_time REAL, received_at REAL NOT NULL, assessed_at REAL NOT NULL,
    UNIQUE (origin, rid)
);
CREATE UNIQUE INDEX ratings_one_per_case ON ratings(case_ref) WHERE case_ref IS NOT NULL;
CREATE TABLE outbox (
    rating_id INTEGER PRIMARY KEY REFERENCES ratings(id) ON DELETE CASCADE,
    state TEXT NOT NULL DEFAULT 'pending',          -- pending | forwarded | dead
    attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    done_at REAL
);
CREATE INDEX outbox_pending ON outbox(rating_id) WHERE state = 'pending';
-- Every stored rating is queued for the province and closes its case, in the same statement as its insert.
CREATE TRIGGER rating_stored AFTER INSERT ON ratings BEGIN
    INSERT INTO outbox (rating_id) VALUES (NEW.id);
    UPDATE cases SET state = 'rated' WHERE NEW.case_ref IS NOT NULL AND case_ref = NEW.case_ref AND state != 'rated';
END;
CREATE INDEX outbox_dead ON outbox(rating_id) WHERE state = 'dead';
CREATE TABLE already_rated (                        -- later attempts at a case already rated: not ratings
    id INTEGER PRIMARY KEY,
    origin TEXT NOT NULL, rid TEXT NOT NULL, channel TEXT NOT NULL, case_ref TEXT NOT NULL,
    level TEXT NOT NULL, received_at REAL NOT NULL,
    UNIQUE (origin, rid)
);
CREATE TABLE forward_attempts (
    id INTEGER PRIMARY KEY, at REAL NOT NULL, records INTEGER NOT NULL,
    http_status INTEGER, outcome TEXT NOT NULL, detail TEXT, duration_ms REAL
);
CREATE TABLE rejects (
    id INTEGER PRIMARY KEY, received_at REAL NOT NULL, topic TEXT NOT NULL, dev TEXT, ref TEXT,
    code TEXT NOT NULL, field TEXT, detail TEXT, payload BLOB
);
CREATE TABLE followups (                            -- a 差评 to rectify (policy art. 12-13)
    rating_id INTEGER PRIMARY KEY REFERENCES ratings(id),
    opened_at REAL NOT NULL, deadline REAL,
    state TEXT NOT NULL DEFAULT 'open',             -- open | closed
    notify_state TEXT NOT NULL DEFAULT 'pending',   -- pending | sent | none
    notify_attempts INTEGER NOT NULL DEFAULT 0, notify_error TEXT, notify_after REAL NOT NULL DEFAULT 0
);
CREATE INDEX followups_notify ON followups(notify_after) WHERE notify_state = 'pending';
CREATE TABLE audit (
    id INTEGER PRIMARY KEY, at REAL NOT NULL, actor TEXT NOT NULL, action TEXT NOT NULL, detail TEXT
);
"""),
    ("rating tokens", """
CREATE TABLE tokens (                               -- one per case: the citizen's rating page (QR)
    token TEXT PRIMARY KEY, case_ref TEXT NOT NULL UNIQUE, created_at REAL NOT NULL
);
"""),
    ("device configuration", """
ALTER TABLE devices ADD COLUMN config TEXT;         -- the retained config last pushed (JSON); its ver is config_sent
ALTER TABLE devices ADD COLUMN config_sent INTEGER;
"""),
    ("append-only audit log and device credentials", """
CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
ALTER TABLE devices ADD COLUMN mqtt_hash TEXT;      -- the broker password's hash (Mosquitto PBKDF2 form)
ALTER TABLE devices ADD COLUMN command_key TEXT;    -- hex HMAC key: prompts and configs the device accepts
ALTER TABLE devices ADD COLUMN revoked_at REAL;     -- retired or stolen: no broker account, messages refused
"""),
    ("registry generation and window rating limits", """
-- Bumped by every change of who may send or how they are signed to, whoever makes it (the gateway, or
-- `hcp-gateway revoke` from another process): a running gateway polls it to refresh its device gate.
CREATE TABLE registry_generation (id INTEGER PRIMARY KEY CHECK (id = 1), generation INTEGER NOT NULL);
INSERT INTO registry_generation VALUES (1, 0);
CREATE TRIGGER registry_added AFTER INSERT ON devices BEGIN
    UPDATE registry_generation SET generation = generation + 1;
END;
CREATE TRIGGER registry_changed AFTER UPDATE OF revoked_at, command_key ON devices BEGIN
    UPDATE registry_generation SET generation = generation + 1;
END;
CREATE TRIGGER registry_removed AFTER DELETE ON devices BEGIN
    UPDATE registry_generation SET generation = generation + 1;
END;
-- Ratings of a window itself (its standing QR, no case): one per phone (a random cookie, hashed) per window
-- per China day, and a cap per window per hour.
CREATE TABLE window_ratings (
    id INTEGER PRIMARY KEY, window_no TEXT NOT NULL, phone TEXT NOT NULL, day TEXT NOT NULL, at REAL NOT NULL,
    UNIQUE (window_no, phone, day)
);
CREATE INDEX window_ratings_recent ON window_ratings(window_no, at);
"""),
    ("forwarded outbox by age", """
-- Pruning looks for ratings forwarded years ago; without this it scans the whole outbox.
CREATE INDEX outbox_forwarded ON outbox(done_at) WHERE state = 'forwarded';
"""),
    ("差评 work orders", """
-- A follow-up is the 差评's work order: assigned to a department, handled in steps (gateway/workorders.py).
ALTER TABLE followups ADD COLUMN dept_code TEXT;   -- its department: the case's, else the window's
ALTER TABLE followups ADD COLUMN staff_no TEXT;    -- the staff member the 差评 is about
ALTER TABLE followups ADD COLUMN last_step TEXT;   -- the step taken last; NULL: none yet
UPDATE followups SET
    dept_code = (SELECT coalesce(c.dept_code, d.dept_code) FROM ratings r LEFT JOIN cases c ON c.case_ref = r.case_ref
                 LEFT JOIN devices d ON d.dev = r.origin WHERE r.id = followups.rating_id),
    staff_no = (SELECT coalesce(c.staff_no, d.staff_no) FROM ratings r LEFT JOIN cases c ON c.case_ref = r.case_ref
                LEFT JOIN devices d ON d.dev = r.origin WHERE r.id = followups.rating_id);
CREATE TABLE steps (                               -- each step of a work order, and its way to the province
    id INTEGER PRIMARY KEY,
    rating_id INTEGER NOT NULL REFERENCES followups(rating_id),
    number INTEGER NOT NULL,                       -- 1, 2, ... within its work order: its stepId
    step TEXT NOT NULL, at REAL NOT NULL, handler TEXT NOT NULL,
    actor TEXT NOT NULL,                           -- who made the call (API key, cli:user): the audit's name
    visit_result INTEGER, content TEXT, deadline TEXT,
    state TEXT NOT NULL DEFAULT 'pending',         -- pending | forwarded | dead
    attempts INTEGER NOT NULL DEFAULT 0, last_error TEXT, done_at REAL,
    UNIQUE (rating_id, number)
);
CREATE INDEX steps_pending ON steps(id) WHERE state = 'pending';
"""),
    ("work order warnings", """
ALTER TABLE followups ADD COLUMN visit_deadline REAL;  -- 回访 due (cases.visit_days working days); NULL: not yet known
CREATE TABLE warnings (                             -- 超期预警: raised once each, then sent to the duty manager
    id INTEGER PRIMARY KEY,
    rating_id INTEGER NOT NULL REFERENCES followups(rating_id),
    kind TEXT NOT NULL,                             -- visit | rectify
    level INTEGER NOT NULL,                         -- the share of the time gone: cases.warn_percent, or 100
    deadline REAL NOT NULL, raised_at REAL NOT NULL,
    notify_state TEXT NOT NULL DEFAULT 'pending',   -- pending | sent | none
    notify_attempts INTEGER NOT NULL DEFAULT 0, notify_error TEXT, notify_after REAL NOT NULL DEFAULT 0,
    UNIQUE (rating_id, kind, level, deadline)
);
CREATE INDEX warnings_notify ON warnings(notify_after) WHERE notify_state = 'pending';
"""),
    ("follow-up evaluations", """
-- 追评: after a 差评 is rectified its citizen may rate the case once more, as a second evaluation.
ALTER TABLE ratings ADD COLUMN assess_number INTEGER NOT NULL DEFAULT 1;  -- 1 first, 2 追评
DROP INDEX ratings_one_per_case;
CREATE UNIQUE INDEX ratings_one_per_case ON ratings(case_ref, assess_number) WHERE case_ref IS NOT NULL;
"""),
]


def connect(path: Path, readonly: bool = False) -> sqlite_utils.Database:
    """Open the database. The writer's connection is in WAL mode with full fsync: an ack means on disk."""
    path = Path(path)
    try:
        if readonly:
            conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False, timeout=30)
        else:
            # A statement per batch size of the writer's group insert (gateway.ratings), all kept prepared.
            conn = sqlite3.connect(path, check_same_thread=False, timeout=30, isolation_level=None,
                                   cached_statements=1024)
        conn.row_factory = sqlite3.Row  # rows read by column name, and still by position
        db = sqlite_utils.Database(conn)
        if not readonly:
            db.enable_wal()
            conn.execute("PRAGMA synchronous = FULL")
            conn.execute("PRAGMA foreign_keys = ON")
        return db
    except sqlite3.Error as e:
        raise StorageError(f"cannot open database {path}: {e}") from None


class Reader:
    """The read-only connection the HTTP threads share. Each query is read to its end under a lock, so no
    half-read cursor keeps an old snapshot open for the others: what the writer committed is what they see."""

    def __init__(self, path: Path):
        self.conn = connect(path, readonly=True).conn
        self._lock = threading.Lock()

    def execute(self, sql: str, params=()) -> "Rows":
        with self._lock:
            cursor = self.conn.execute(sql, params)
            return Rows(cursor.description, cursor.fetchall())


class Rows:
    """A query's whole result, read like a cursor."""

    def __init__(self, description, rows: list):
        self.description = description
        self._rows = iter(rows)

    def fetchone(self):
        return next(self._rows, None)

    def fetchall(self) -> list:
        return list(self._rows)

    def __iter__(self):
        return self._rows


def migrate(db: sqlite_utils.Database) -> list[str]:
    """Apply the migrations this database has not had yet; return their names."""
    conn = db.conn
    try:
        conn.execute("CREATE TABLE IF NOT EXISTS migrations (version INTEGER PRIMARY KEY, name TEXT, applied_at REAL)")
        done = {row[0] for row in conn.execute("SELECT version FROM migrations")}
        applied = []
        for version, (name, sql) in enumerate(MIGRATIONS, start=1):
            if version in done:
                continue
            statements = _statements(sql)  # before the transaction: a bad script leaves nothing open
            conn.execute("BEGIN IMMEDIATE")
            for statement in statements:
                conn.execute(statement)
            conn.execute("INSERT INTO migrations VALUES (?, ?, ?)", (version, name, time.time()))
            conn.execute("COMMIT")
            applied.append(name)
        return applied
    except sqlite3.Error as e:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise StorageError(f"cannot prepare database: {e}") from None


def _statements(script: str) -> list[str]:
    """Split a script into statements (a trigger's body holds semicolons of its own)."""
    statements, pending = [], ""
    for line in script.splitlines(keepends=True):
        pending += line
        if sqlite3.complete_statement(pending):
            statements.append(pending.strip())
            pending = ""
    if pending.strip() and not all(line.strip().startswith("--") or not line.strip() for line in pending.splitlines()):
        raise StorageError(f"a migration ends in an unfinished statement (missing ';'?): {pending.strip()[:80]}")
    return statements


def used_bytes(db: sqlite_utils.Database) -> int:
    """Bytes the database really uses (pages in use, not free pages left by pruning)."""
    pages = db.execute("PRAGMA page_count").fetchone()[0]
    free = db.execute("PRAGMA freelist_count").fetchone()[0]
    size = db.execute("PRAGMA page_size").fetchone()[0]
    return (pages - free) * size
