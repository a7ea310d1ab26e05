"""Forwarding stored ratings, and then the steps of 差评 work orders, to the provincial 好差评 system
(docs/upstream.md), oldest first, in batches.

Every record carries a stable id (evalId, stepId), so a retry after a timeout or a crash is harmless (the
province answers "duplicate"). Failures back off exponentially with full jitter; 429/503 wait as long as
Retry-After says. A record the province rejects (or that cannot be mapped) becomes a dead letter with the
reason: visible, retryable by an operator, never retried on its own.
"""
from __future__ import annotations

import http.client
import json
import logging
import random
import threading
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

from prometheus_client import CollectorRegistry, Counter, Histogram

from gateway import db
from gateway.settings import upstream_profile
from gateway.store import Writer
from protocol import upstream

log = logging.getLogger("gateway.forwarder")
MAX_BODY = 1024 * 1024
IDLE_POLL_S = 0.5
RESULTS = {  # what became of the records sent, and of the submissions
    "forwarded": "ratings the province accepted",
    "duplicate": "ratings the province had already (a retry)",
    "dead": "ratings the province rejected or that cannot be mapped (dead letters)",
    "attempts": "batches settled: answered by the province, or set aside as unmappable without sending",
    "failures": "submissions that failed and will be retried",
}

_PENDING = """
SELECT r.id, r.origin, r.rid, r.channel, r.level, r.public, r.reasons, r.comment, r.assessed_at, r.received_at,
       r.assess_number,
       c.project_no, c.task_code, c.task_name, c.dept_code AS case_dept, c.dept_name AS case_dept_name,
       c.staff_no AS case_staff, c.window_no AS case_window, c.user_prop,
       d.window_no, d.dept_code, d.dept_name, d.staff_no
FROM outbox o JOIN ratings r ON r.id = o.rating_id
LEFT JOIN cases c ON c.case_ref = r.case_ref
LEFT JOIN devices d ON d.dev = r.origin
WHERE o.state = 'pending' AND o.rating_id > ?
ORDER BY o.rating_id LIMIT ?
"""


_PENDING_STEPS = """
SELECT s.id, s.number, s.step, s.at, s.handler, s.visit_result, s.content, s.deadline, r.origin, r.rid
FROM steps s JOIN outbox o ON o.rating_id = s.rating_id JOIN ratings r ON r.id = s.rating_id
WHERE s.state = 'pending' AND o.state = 'forwarded'
  AND NOT EXISTS (SELECT 1 FROM steps e WHERE e.rating_id = s.rating_id AND e.number < s.number
                  AND e.state != 'forwarded')
ORDER BY s.id LIMIT ?
"""


@dataclass(frozen=True)
class Queue:
    """What is forwarded where: the province's batch path, the records' idempotency key, and the table (with
    its key column) whose rows record each one's state."""

    name: str
    path: str
    key: str
    table: str
    id_column: str


RATINGS = Queue("ratings", upstream.BATCH_PATH, "evalId", "outbox", "rating_id")
# A work order's steps go one at a time (the next once the one before is at the province), after the 差评.
STEPS = Queue("work-order steps", upstream.WORKORDER_BATCH_PATH, "stepId", "steps", "id")


class Forwarder:
    def __init__(self, config: dict, writer: Writer, clock, metrics: CollectorRegistry):
        self.config = config
        self.writer = writer
        self.clock = clock
        self.profile = upstream_profile(config)
        url = urlsplit(config["upstream.url"])
        self.enabled = bool(config["upstream.url"])
        self._https = url.scheme == "https"
        self._host, self._port = url.hostname, url.port
        self._base = url.path.rstrip("/")
        self._conn: http.client.HTTPConnection | None = None
        self.failures = 0
        self.results = {name: Counter(f"hcp_forward_{name}", help_text, registry=metrics)
                        for name, help_text in RESULTS.items()}
        self.request_seconds = Histogram("hcp_forward_request_seconds", "one submission to the province, sent to "
                                         "answered", registry=metrics)
        self.latency = Histogram("hcp_forward_latency_seconds", "a rating from stored to accepted by the province",
                                 registry=metrics, buckets=(.01, .05, .1, .5, 1, 2, 5, 10, 30, 60, 300, 3600, 86400))
        self.last_error = ""
        self.wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._reader = None
        self._cursor = 0  # highest rating id sent since the last rewind
        self._steps_sent = False  # their results may not be committed yet

    def start(self) -> None:
        if not self.enabled:
            log.info("upstream.url is empty: ratings are stored and kept, not forwarded")
            return
        self._reader = db.connect(self.writer.path, readonly=True)
        self._thread = threading.Thread(target=self._loop, name="forwarder", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self.wake.set()
        if self._thread:
            self._thread.join()
        if self._reader is not None:
            self._reader.conn.close()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                delay = self.forward_once()
            except Exception:  # noqa: BLE001 - keep forwarding whatever one batch did
                log.exception("forwarding failed")
                delay = self._backoff()
            if delay == IDLE_POLL_S:  # nothing to send: a new rating wakes us early
                self.wake.clear()
                self.wake.wait(delay)
            elif delay:  # backing off: new ratings must not cut the wait short
                self._stop.wait(delay)

    def forward_once(self) -> float:
        """Send what is pending; return how long to wait before the next round (0: go on at once).

        Batches go out oldest first. While the province works on one, the next is read and mapped (the
        cursor skips the batch in flight), and results are written without waiting, so the forwarder and
        the province are both busy.
        """
        items = self._prepare()
        if items is None:  # caught up: look again from the oldest (retried dead letters), then the steps
            return 0 if self._rewind() else self._forward_steps()
        while items:
            delay, items = self._send(items, read_ahead=True)
            if delay:
                self._rewind()
                return delay
        return 0

    def _prepare(self) -> list[tuple[int, dict, float]] | None:
        """The next batch after the cursor as (rating id, record, received at); None when nothing is pending."""
        cursor = self._reader.execute(_PENDING, (self._cursor, self.config["upstream.batch_size"]))
        rows = cursor.fetchall()
        if not rows:
            return None
        items, unmappable = [], []
        for row in rows:
            try:
                items.append((row["id"], self.record(row), row["received_at"]))
            except upstream.MappingError as e:
                unmappable.append((row["id"], f"mapping: {e}"))
        self._cursor = rows[-1]["id"]
        if unmappable:
            self._settle([], [], unmappable, None, "unmappable", "", 0)
        return items

    def _forward_steps(self) -> float:
        """The next step of each work order whose 差评 is at the province, in one batch; IDLE_POLL_S if none."""
        if self._steps_sent:  # the last batch's results first, so no step is read as pending again
            self.writer.call(lambda conn: None)
            self._steps_sent = False
        rows = self._reader.execute(_PENDING_STEPS, (self.config["upstream.batch_size"],)).fetchall()
        if not rows:
            return IDLE_POLL_S
        items = [(row["id"], upstream.step_record(dict(row), upstream.eval_id(self.profile.source, row["origin"],
                                                                        row["rid"]), self.profile), None)
                 for row in rows]
        self._steps_sent = True
        return self._send(items, queue=STEPS)[0]

    def _rewind(self) -> bool:
        """Read from the oldest pending rating again (after a failure, or to find retried dead letters),
        once the results already sent to the writer are committed. False if the cursor was at the start."""
        if self._cursor == 0:
            return False
        self.writer.call(lambda conn: None)
        self._cursor = 0
        return True

    def record(self, row: dict) -> dict:
        rating = {
            "eval_id": upstream.eval_id(self.profile.source, row["origin"], row["rid"]),
            "level": row["level"], "channel": row["channel"], "assessed_at": int(row["assessed_at"]),
            "public": bool(row["public"]), "reasons": row["reasons"].split(",") if row["reasons"] else None,
            "comment": row["comment"], "window_no": row["case_window"] or row["window_no"],
            "dept_code": row["dept_code"], "dept_name": row["dept_name"], "staff_no": row["staff_no"],
            "assess_number": row["assess_number"],
        }
        case = None
        if row["project_no"]:
            case = {"project_no": row["project_no"], "task_code": row["task_code"], "task_name": row["task_name"],
                    "dept_code": row["case_dept"], "dept_name": row["case_dept_name"],
                    "staff_no": row["case_staff"], "user_prop": row["user_prop"]}
        return upstream.to_record(rating, case, self.profile)

    def _send(self, items: list[tuple[int, dict, float | None]], read_ahead: bool = False,
              queue: Queue = RATINGS) -> tuple[float, list | None]:
        """Submit one batch of (row id, record, received at); return (delay, the next batch if read ahead). A
        delay means: failed, back off."""
        body = json.dumps({"dataSource": self.profile.source, "records": [r for _, r, _ in items]},
                          ensure_ascii=False, separators=(",", ":")).encode()
        if len(body) > MAX_BODY and len(items) > 1:
            return self._send_halves(items, queue), None
        started = time.monotonic()
        following = None
        try:
            self._request(body, queue.path)
            if read_ahead:
                following = self._prepare()
            response = self._conn.getresponse()
            status, headers, answer = response.status, response.headers, response.read()
        except (OSError, http.client.HTTPException) as e:
            self._close()
            return self._failed(items, None, f"{type(e).__name__}: {e}", (time.monotonic() - started) * 1000,
                                queue), None
        took = (time.monotonic() - started) * 1000
        self.request_seconds.observe(took / 1000)
        if status == 200:
            return self._accepted(items, answer, took, queue), following
        if status in (429, 503):
            wait = _retry_after(headers, self.config["upstream.backoff_max_s"])
            backoff = self._failed(items, status, f"busy, retry after {wait} s", took, queue)
            return (wait if wait is not None else backoff), None
        if status in (400, 413):
            if len(items) > 1:  # the envelope is refused as a whole: find the record that breaks it
                return self._send_halves(items, queue), following
            self._settle([], [], [(items[0][0], f"HTTP {status}: {answer[:300]!r}")], status, "dead", "", took,
                         queue)
            return 0, following
        # 401/403/404, other 4xx and 5xx: a setting or the province is wrong, not the records; keep them.
        return self._failed(items, status, f"HTTP {status}: {answer[:300]!r}", took, queue), None

    def _send_halves(self, items, queue: Queue) -> float:
        half = len(items) // 2
        return self._send(items[:half], queue=queue)[0] or self._send(items[half:], queue=queue)[0]

    def _request(self, body: bytes, path: str) -> None:
        if self._conn is None:
            make = http.client.HTTPSConnection if self._https else http.client.HTTPConnection
            self._conn = make(self._host, self._port, timeout=self.config["upstream.timeout_s"])
        headers = {"Content-Type": "application/json", **upstream.auth_headers(
            self.config["upstream.app_key"], self.config["upstream.app_secret"], body, self.clock.now())}
        self._conn.request("POST", self._base + path, body=body, headers=headers)

    def _close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _accepted(self, items, answer: bytes, took: float, queue: Queue) -> float:
        try:
            results = json.loads(answer)["results"]
            by_id = {r[queue.key]: r for r in results}
        except (ValueError, KeyError, TypeError):
            return self._failed(items, 200, f"unreadable answer: {answer[:300]!r}", took, queue)
        done, duplicate, dead, missing = [], [], [], []
        now = self.clock.now()
        for rating_id, record, received_at in items:
            result = by_id.get(record[queue.key])
            status = result.get("status") if result else None
            if status == "accepted":
                done.append(rating_id)
                if received_at is not None:
                    self.latency.observe(max(0.0, now - received_at))
            elif status == "duplicate":
                duplicate.append(rating_id)
            elif status == "rejected":
                dead.append((rating_id, f"{result.get('error')}: {result.get('message', '')}"[:500]))
            else:
                missing.append(rating_id)
        self._settle(done, duplicate, dead, 200, "ok", "" if not missing else f"{len(missing)} without result", took,
                     queue)
        self.failures = 0
        return self._backoff() if missing else 0

    def _failed(self, items, status: int | None, detail: str, took: float, queue: Queue) -> float:
        self.last_error = detail
        self.results["failures"].inc()
        log.warning("forwarding %d %s failed: %s", len(items), queue.name, detail)
        ids = [rating_id for rating_id, _, _ in items]
        now = self.clock.now()
        self.writer.submit(lambda conn: _record_failure(conn, queue, ids, now, status, detail, took))
        self.failures += 1
        return self._backoff()

    def _settle(self, done, duplicate, dead, status, outcome, detail, took, queue: Queue = RATINGS) -> None:
        now = self.clock.now()
        table, key = queue.table, queue.id_column

        def run(conn):
            forwarded = [(now, i) for i in done + duplicate]
            conn.executemany(f"UPDATE {table} SET state = 'forwarded', attempts = attempts + 1, done_at = ? "
                             f"WHERE {key} = ?", forwarded)
            conn.executemany(f"UPDATE {table} SET state = 'dead', attempts = attempts + 1, last_error = ?, "
                             f"done_at = ? WHERE {key} = ?", [(why, now, i) for i, why in dead])
            conn.execute("INSERT INTO forward_attempts (at, records, http_status, outcome, detail, duration_ms) "
                         "VALUES (?, ?, ?, ?, ?, ?)", (now, len(forwarded) + len(dead), status, outcome, detail, took))

        self.writer.submit(run)  # the cursor keeps these from being read again before it commits
        self.results["attempts"].inc()
        self.results["forwarded"].inc(len(done))
        self.results["duplicate"].inc(len(duplicate))
        self.results["dead"].inc(len(dead))
        for row_id, why in dead:
            log.error("%s %d is a dead letter: %s", queue.name, row_id, why)

    def _backoff(self) -> float:
        base, cap = self.config["upstream.backoff_base_s"], self.config["upstream.backoff_max_s"]
        return random.uniform(0, min(cap, base * 2 ** min(self.failures, 30)))


def _record_failure(conn, queue: Queue, ids, now, status, detail, took) -> None:
    conn.executemany(f"UPDATE {queue.table} SET attempts = attempts + 1, last_error = ? WHERE {queue.id_column} = ?",
                     [(detail[:500], i) for i in ids])
    conn.execute("INSERT INTO forward_attempts (at, records, http_status, outcome, detail, duration_ms) "
                 "VALUES (?, ?, ?, 'failed', ?, ?)", (now, len(ids), status, detail[:500], took))


def _retry_after(headers, cap: float) -> float | None:
    try:
        return min(cap, max(0.0, float(headers.get("Retry-After"))))
    except (TypeError, ValueError):
        return None
