"""The one SQLite writer: every write goes through its queue, in group-committed transactions.

A job is a function of the connection, or an item for a group function that stores many items with a few
statements (the ingest path: every SQLite call releases and retakes the GIL, which the MQTT thread wants
too). The writer runs many waiting jobs in one transaction (up to `batch_max`, waiting at most `batch_wait`
to fill it), commits with fsync, and only then tells each job's `done` callback its result, so nothing is
acknowledged before it is on disk. A job that raises rolls back its batch; the batch is then retried one job
per transaction, so one bad job cannot sink the others.
"""
from __future__ import annotations

import logging
import queue
import sqlite3
import threading
import time
from pathlib import Path
from typing import Callable

from gateway import db
from gateway.errors import GatewayError

log = logging.getLogger("gateway.store")


class StorageFull(db.StorageError):
    """The quota is reached or the disk is full: ratings are not taken until space is back."""


class _Job:
    __slots__ = ("run", "group", "item", "done", "needs_space")

    def __init__(self, run, group, item, done, needs_space):
        self.run, self.group, self.item, self.done, self.needs_space = run, group, item, done, needs_space


_STOP = object()


class Writer:
    def __init__(self, path: Path, batch_max: int = 500, batch_wait: float = 0.005,
                 quota_bytes: int | None = None, alarm_bytes: int | None = None):
        self.path = Path(path)
        self.batch_max = batch_max
        self.batch_wait = batch_wait
        self.quota_bytes = quota_bytes
        self.alarm_bytes = alarm_bytes
        self.used_bytes = 0
        self.full = False
        self.alarm = False
        self.commits = 0
        self.batch_listeners: list[Callable[[], None]] = []
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._space_checked = 0.0
        self.db = None

    def start(self) -> "Writer":
        """Open and migrate the database (StorageError on failure), then start the writer thread."""
        self.db = db.connect(self.path)
        db.migrate(self.db)
        self._check_space(force=True)
        self._thread = threading.Thread(target=self._loop, name="writer", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Finish what is queued, then stop."""
        if self._thread:
            self._queue.put(_STOP)
            self._thread.join()
            self._thread = None
        if self.db is not None:
            self.db.conn.close()
            self.db = None

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def submit(self, run: Callable, done: Callable | None = None, needs_space: bool = False) -> None:
        """Queue a job; `done(result)` runs after commit, with the job's return value or an exception."""
        self._queue.put(_Job(run, None, None, done, needs_space))

    def submit_item(self, group: Callable, item, done: Callable | None = None, needs_space: bool = False) -> None:
        """Queue an item for `group(conn, items) -> results`, which stores neighbouring items of a batch at once."""
        self._queue.put(_Job(None, group, item, done, needs_space))

    def call(self, run: Callable, timeout: float = 60, needs_space: bool = False):
        """Run a job and wait for it to be committed; return its result or raise its exception."""
        finished = threading.Event()
        box = []

        def done(result):
            box.append(result)
            finished.set()

        self.submit(run, done, needs_space)
        if not finished.wait(timeout):
            raise db.StorageError(f"the writer did not answer within {timeout} s")
        if isinstance(box[0], Exception):
            raise box[0]
        return box[0]

    def _loop(self) -> None:
        while True:
            job = self._queue.get()
            if job is _STOP:
                return
            batch = [job]
            stopping = False
            deadline = time.monotonic() + self.batch_wait
            while len(batch) < self.batch_max:
                try:
                    nxt = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                if nxt is _STOP:
                    stopping = True
                    break
                batch.append(nxt)
            self._run_batch(batch)
            for listener in self.batch_listeners:
                try:
                    listener()
                except Exception:  # noqa: BLE001 - a listener's failure must not stop the writer
                    log.exception("after-commit listener failed")
            if stopping:
                return

    def _run_batch(self, batch: list[_Job]) -> None:
        self._check_space()
        if self.full:
            refused = [j for j in batch if j.needs_space]
            batch = [j for j in batch if not j.needs_space]
            for job in refused:
                self._finish(job, StorageFull(f"database uses {self.used_bytes} of {self.quota_bytes} bytes allowed"))
        if not batch:
            return
        results = self._transaction(batch)
        if results is None:
            if len(batch) == 1:
                return
            for job in batch:  # isolate the job that failed; the others still get their results
                alone = self._transaction([job])
                if alone is not None:
                    self._finish(job, alone[0])
            return
        for job, result in zip(batch, results):
            self._finish(job, result)

    def _transaction(self, batch: list[_Job]) -> list | None:
        """Run the jobs in one transaction. On failure a lone job gets the error; a batch gets None."""
        conn = self.db.conn
        try:
            conn.execute("BEGIN IMMEDIATE")
            results = _run_jobs(conn, batch)
            conn.execute("COMMIT")
            self.commits += 1
            return results
        except Exception as e:  # noqa: BLE001 - the job's own error goes back to whoever submitted it
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            if len(batch) > 1:
                return None
            error = self._translate(e)
            if not isinstance(error, GatewayError):  # a refusal is the caller's to report, not a failure
                log.error("write failed: %s", error)
            self._finish(batch[0], error)
            return None

    def _translate(self, e: Exception) -> Exception:
        if isinstance(e, sqlite3.OperationalError) and "full" in str(e):
            self.full = True
            return StorageFull(f"disk full: {e}")
        if isinstance(e, sqlite3.Error):
            return db.StorageError(str(e))
        return e

    @staticmethod
    def _finish(job: _Job, result) -> None:
        if job.done is not None:
            try:
                job.done(result)
            except Exception:  # noqa: BLE001 - a callback's failure must not stop the writer
                log.exception("callback after commit failed")

    def _check_space(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._space_checked < 1.0:
            return
        self._space_checked = now
        self.used_bytes = db.used_bytes(self.db)
        was_full = self.full
        self.full = self.quota_bytes is not None and self.used_bytes >= self.quota_bytes
        self.alarm = self.alarm_bytes is not None and self.used_bytes >= self.alarm_bytes
        if self.full and not was_full:
            log.error("storage quota reached (%d bytes): ratings wait at the broker until space is freed",
                      self.used_bytes)
        elif was_full and not self.full:
            log.info("storage below quota again (%d bytes): taking ratings", self.used_bytes)


def _run_jobs(conn, batch: list[_Job]) -> list:
    """Each job's result, in order; neighbouring items of one group go to the group function together."""
    results: list = []
    i = 0
    while i < len(batch):
        job = batch[i]
        if job.group is None:
            results.append(job.run(conn))
            i += 1
            continue
        j = i + 1
        while j < len(batch) and batch[j].group == job.group:  # bound methods are equal, not identical
            j += 1
        results.extend(job.group(conn, [b.item for b in batch[i:j]]))
        i = j
    return results
