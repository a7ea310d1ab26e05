"""A database written by the last release opens under the current code with every row intact (issue 12).

tests/fixtures/release-0.1.0.db is the gateway database of a simulated hall day run on release 0.1.0
(tests/fixtures/README.md says how it was made). It is never regenerated: every later schema change must open
it. The tests copy it, read every row of every table with plain sqlite3, upgrade it as a gateway does on start,
and check that every old row is still there with every old column's value unchanged (new columns and tables
may be added); then a whole gateway runs on the upgraded data and forwards, stores and acks beside it.
"""
from __future__ import annotations

import hashlib
import shutil
import sqlite3
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

from gateway import db
from gateway.clock import Clock
from protocol import upstream
from tests.helpers import wait_until

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "release-0.1.0.db"
# The fixture must never change: a new one would no longer be what the release wrote.
FIXTURE_SHA256 = "966e32c9f047dfde5c46a9dddee3fb009aa8bc91427ee640049159e18738e295"
RELEASE_MIGRATIONS = [(1, "initial schema"), (2, "rating tokens"), (3, "device configuration"),
                      (4, "append-only audit log and device credentials")]
AREA = "361102"  # tests.helpers.gateway_config's upstream.area_code

# What the release's hall day left in the database (tests/fixtures/README.md), by table and state.
FIXTURE_SHAPE = {
    "SELECT channel, count(*) FROM ratings GROUP BY 1 ORDER BY 1":
        [("default", 74), ("device", 598), ("qr", 51)],
    "SELECT state, count(*) FROM cases GROUP BY 1 ORDER BY 1":
        [("cancelled", 1), ("defaulted", 74), ("open", 5), ("rated", 646)],
    "SELECT state, count(*) FROM outbox GROUP BY 1 ORDER BY 1":
        [("dead", 2), ("forwarded", 716), ("pending", 5)],
    "SELECT state, notify_state, count(*), count(deadline) FROM followups GROUP BY 1, 2 ORDER BY 1, 2":
        [("open", "pending", 3, 0), ("open", "sent", 64, 64)],
    "SELECT code, count(*) FROM rejects GROUP BY 1 ORDER BY 1":
        [("bad_json", 1), ("unknown_device", 1)],
    "SELECT outcome, count(*) FROM forward_attempts GROUP BY 1 ORDER BY 1":
        [("failed", 23), ("ok", 565)],
    "SELECT action, count(*) FROM audit GROUP BY 1 ORDER BY 1":
        [("configure_device", 1), ("issue_credentials", 203), ("register_device", 203), ("revoke_device", 1)],
    "SELECT state, count(*), count(revoked_at), count(config), count(command_key) FROM devices GROUP BY 1":
        [("offline", 203, 1, 1, 202)],
    "SELECT channel, count(*) FROM already_rated GROUP BY 1":
        [("qr", 1)],
    "SELECT count(*), count(DISTINCT case_ref) FROM tokens":
        [(726, 726)],
}




@dataclass
class Table:
    columns: list[str]
    rows: dict[tuple, dict]  # primary key -> {column: value}


Snapshot = dict[str, Table]


# ---- reading and comparing every row ----

def snapshot(path: Path) -> Snapshot:
    """Every row of every table, keyed by its primary key (the rowid where a table declares none)."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        tables = [name for (name,) in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name")]
        everything = {}
        for table in tables:
            info = conn.execute(f'PRAGMA table_info("{table}")').fetchall()
            columns = [row[1] for row in info]
            key = [row[1] for row in sorted(info, key=lambda row: row[5]) if row[5]] or ["rowid"]
            select = ", ".join(f'"{c}"' if c != "rowid" else c for c in key + columns)
            rows = {}
            for row in conn.execute(f'SELECT {select} FROM "{table}"'):
                rows[tuple(row[:len(key)])] = dict(zip(columns, row[len(key):]))
            everything[table] = Table(columns, rows)
        return everything
    finally:
        conn.close()


def differences(before: Snapshot, after: Snapshot, allowed=lambda table, old, column, new_value: False,
                limit: int = 20) -> list[str]:
    """What `after` lost or altered of `before`: tables, columns, rows, values. New tables, columns and rows
    are fine. `allowed(table, old_row, column, new_value)` may excuse a change the running gateway makes."""
    problems = []
    for table, old_table in before.items():
        if table not in after:
            problems.append(f"table {table} ({len(old_table.rows)} rows) is gone")
            continue
        new_rows = after[table].rows
        for column in old_table.columns:
            if column not in after[table].columns:
                problems.append(f"column {table}.{column} is gone")
        for key, old in old_table.rows.items():
            new = new_rows.get(key)
            if new is None:
                problems.append(f"{table} row {key} is gone")
                continue
            for column, value in old.items():
                if column not in new:
                    continue  # reported once above
                if new[column] != value or type(new[column]) is not type(value):
                    if not allowed(table, old, column, new[column]):
                        problems.append(f"{table} row {key}: {column} was {value!r}, is {new[column]!r}")
    if len(problems) > limit:
        problems = problems[:limit] + [f"... and {len(problems) - limit} more"]
    return problems


def fixture_copy(tmp_path: Path) -> Path:
    path = tmp_path / "gateway.db"  # where the gateway_factory fixture's gateways keep their database
    shutil.copyfile(FIXTURE, path)
    return path


def fixture_time(path: Path) -> float:
    """When the release's gateway last wrote: the upgraded gateway runs from there (its clock and the
    province's), so the old rows are as fresh for it as they were for the release."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return max(conn.execute(
            "SELECT (SELECT max(received_at) FROM ratings), (SELECT max(at) FROM forward_attempts), "
            "(SELECT max(at) FROM audit), (SELECT max(finished_at) FROM cases)").fetchone())
    finally:
        conn.close()


# ---- the fixture, the upgrade, and a gateway on it ----

def test_the_fixture_is_the_release_database_unchanged():
    assert hashlib.sha256(FIXTURE.read_bytes()).hexdigest() == FIXTURE_SHA256, (
        "tests/fixtures/release-0.1.0.db changed: it must stay what release 0.1.0 wrote (tests/fixtures/README.md)")
    conn = sqlite3.connect(f"file:{FIXTURE}?mode=ro&immutable=1", uri=True)
    try:
        assert conn.execute("SELECT version, name FROM migrations ORDER BY version").fetchall() == RELEASE_MIGRATIONS
        for query, expected in FIXTURE_SHAPE.items():
            assert conn.execute(query).fetchall() == expected, query
    finally:
        conn.close()


def test_release_database_upgrades_with_every_row_intact(tmp_path):
    path = fixture_copy(tmp_path)
    before = snapshot(path)

    database = db.connect(path)  # exactly what the gateway's writer does on start
    try:
        applied = db.migrate(database)
        names = [name for name, _ in db.MIGRATIONS]
        assert applied == names[len(RELEASE_MIGRATIONS):]
        assert db.migrate(database) == []  # and a second start applies nothing
        assert database.execute("PRAGMA integrity_check").fetchall()[0][0] == "ok"
        assert database.execute("PRAGMA foreign_key_check").fetchall() == []
    finally:
        database.conn.close()

    after = snapshot(path)
    assert differences(before, after) == []
    migrations = sorted((version, row["name"]) for (version,), row in after["migrations"].rows.items())
    assert migrations == list(enumerate(names, start=1))
    assert migrations[:len(RELEASE_MIGRATIONS)] == RELEASE_MIGRATIONS


def _changed_by_the_gateway(touched_cases: set[str]):
    """The changes a running gateway makes to old rows in this test, and no others."""
    def allowed(table: str, old: dict, column: str, new_value) -> bool:
        if table == "outbox":  # the release's pending ratings are forwarded now
            return old["state"] == "pending" and column in ("state", "attempts", "last_error", "done_at")
        if table == "cases":  # an open case rated by phone under the new code
            return old["case_ref"] in touched_cases and old["state"] == "open" and column == "state"
        if table == "followups":
            if column == "deadline":  # filled in once the calendar knows the year
                return old["deadline"] is None
            # the pending 差评 notices are delivered, or dropped when no webhook is configured
            return old["notify_state"] == "pending" and column.startswith("notify_")
        return False
    return allowed


def page_post(gateway, path: str, form: dict) -> tuple[int, str]:
    request = urllib.request.Request(f"http://127.0.0.1:{gateway.api.port}{path}", method="POST",
                                     data=urllib.parse.urlencode(form, doseq=True).encode(),
                                     headers={"Content-Type": "application/x-www-form-urlencoded"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def test_upgraded_gateway_carries_on_with_the_release_data(tmp_path, province, gateway_factory, wire_device):
    path = fixture_copy(tmp_path)
    before = snapshot(path)
    offset = fixture_time(path) + 60 - time.time()
    province.clock = lambda: time.time() + offset
    pending = {key[0] for key, row in before["outbox"].rows.items() if row["state"] == "pending"}
    forwarded = {key[0] for key, row in before["outbox"].rows.items() if row["state"] == "forwarded"}
    old_max_id = max(key[0] for key in before["ratings"].rows)
    open_case = min(row["case_ref"] for row in before["cases"].rows.values() if row["state"] == "open")
    [token] = [key[0] for key, row in before["tokens"].rows.items() if row["case_ref"] == open_case]

    gateway = gateway_factory(province.url, clock=Clock(offset))  # migrates the copy as it starts

    # The release's pending ratings reach the province; its dead letters stay dead, its forwarded ones are not
    # sent again.
    def eval_id(rating_id: int) -> str:
        rating = before["ratings"].rows[(rating_id,)]
        return upstream.eval_id(AREA, rating["origin"], rating["rid"])

    wait_until(lambda: province.count() >= len(pending), timeout=30, what="the release's pending ratings forwarded")
    assert {r["evalId"] for r in province.records()} == {eval_id(i) for i in pending}

    # An old device sends again a rating the release stored (its outbox kept it past a lost ack): acked, not
    # stored twice. Then a new rating from it: stored and acked beside the old ones, with a new id.
    old = before["ratings"].rows[(max(pending),)]
    assert old["channel"] == "device"
    device = wire_device(old["origin"], boot=old["boot"])
    assert device.press() == old["rid"]
    new_rid = device.press("very_dissatisfied", reasons=["502"])
    wait_until(device.all_acked, what="the device's acks")
    # A citizen rates an open case of the release by its old rating link.
    status, page = page_post(gateway, f"/r/{token}", {"level": "dissatisfied", "reason": ["505"]})
    assert status == 200 and "感谢您的评价" in page
    wait_until(lambda: province.count() == len(pending) + 2, timeout=30, what="the new ratings forwarded")

    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        new = conn.execute("SELECT id, origin, rid, channel, case_ref FROM ratings WHERE id > ? ORDER BY id",
                           (old_max_id,)).fetchall()
        assert len(new) == 2
        assert new[0][1:] == (old["origin"], new_rid, "device", None)
        assert (new[1][1], new[1][3], new[1][4]) == ("gw", "qr", open_case)
        assert conn.execute("SELECT count(*) FROM ratings WHERE origin = ? AND rid = ?",
                            (old["origin"], old["rid"])).fetchone()[0] == 1
        assert conn.execute("SELECT count(*) FROM followups WHERE rating_id IN (?, ?)",
                            (new[0][0], new[1][0])).fetchone()[0] == 2
        wait_until(lambda: conn.execute("SELECT count(*) FROM outbox WHERE state = 'pending'").fetchone()[0] == 0,
                   what="an empty queue")
    finally:
        conn.close()
    landed = {r["evalId"] for r in province.records()}
    assert not landed & {eval_id(i) for i in forwarded}
    gateway.stop()

    after = snapshot(path)
    assert differences(before, after, _changed_by_the_gateway({open_case})) == []
    assert {key[0] for key, row in after["outbox"].rows.items() if row["state"] == "dead"} == \
        {key[0] for key, row in before["outbox"].rows.items() if row["state"] == "dead"}
    assert all(after["outbox"].rows[(i,)]["state"] == "forwarded" for i in pending)
    assert after["cases"].rows[(open_case,)]["state"] == "rated"


# ---- the comparison can fail ----

DESTRUCTIVE = {
    "a row deleted": ("DELETE FROM followups WHERE rating_id = (SELECT min(rating_id) FROM followups);",
                      "followups row"),
    "a value altered": ("UPDATE ratings SET level = 'satisfied' WHERE level = 'basic';", "level was 'basic'"),
    "a type changed": ("UPDATE rejects SET payload = CAST(payload AS TEXT);", "payload was b'"),
    "a column dropped": ("ALTER TABLE ratings DROP COLUMN comment;", "column ratings.comment is gone"),
    "a table dropped": ("DROP TABLE already_rated;", "table already_rated (1 rows) is gone"),
    "a table rebuilt without a row": (
        "CREATE TABLE tokens_new (token TEXT PRIMARY KEY, case_ref TEXT NOT NULL UNIQUE, created_at REAL NOT NULL);\n"
        "INSERT INTO tokens_new SELECT * FROM tokens WHERE case_ref != 'EVE0000005';\n"
        "DROP TABLE tokens;\nALTER TABLE tokens_new RENAME TO tokens;", "tokens row"),
    "rows renumbered": ("UPDATE rejects SET id = id + 100;", "rejects row"),
}


@pytest.mark.parametrize("what", list(DESTRUCTIVE))
def test_a_destructive_migration_is_reported(tmp_path, monkeypatch, what):
    sql, expected = DESTRUCTIVE[what]
    path = fixture_copy(tmp_path)
    before = snapshot(path)
    monkeypatch.setattr(db, "MIGRATIONS", [*db.MIGRATIONS, ("a careless change", sql)])
    database = db.connect(path)
    try:
        assert db.migrate(database)[-1] == "a careless change"
    finally:
        database.conn.close()
    problems = differences(before, snapshot(path))
    assert problems and any(expected in problem for problem in problems), problems


def test_a_migration_left_unfinished_is_refused_not_recorded_as_applied():
    """A statement without its ';' at the end of a migration would be dropped while the step is recorded."""
    with pytest.raises(db.StorageError, match="unfinished statement"):
        db._statements("CREATE TABLE a (x);\nCREATE TABLE b (y)")
    assert db._statements("CREATE TABLE a (x);\n-- a closing comment\n") == ["CREATE TABLE a (x);"]
