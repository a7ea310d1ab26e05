"""The simulated provincial 好差评 system: docs/upstream.md implemented strictly, with fault injection.

It refuses what the real interface would refuse (bad signature, stale timestamp, reused nonce, malformed
records), stores what it accepts in its own SQLite file (each evalId once), and can be made to fail:
5xx (after storing or not, as a real server might), timeouts, 429 with Retry-After, outages, latency.
"""
from __future__ import annotations

import datetime as dt
import hmac
import json
import random
import re
import socket
import sqlite3
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from protocol import upstream
from protocol.codec import REASON_CODES

CHINA = dt.timezone(dt.timedelta(hours=8))
MAX_BODY = 1024 * 1024
NONCE_TTL_S = 600
PF_CODES = {"1", "2", "3", "4", "5", "6", "7"}
_EVAL_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_TIME = re.compile(r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}$")


class Faults:
    """What the province does wrong, switchable while it runs. Rates are probabilities per request."""

    def __init__(self):
        self.error_rate = 0.0  # 500, after storing the batch half of the time
        self.timeout_rate = 0.0  # hold the request past the client's timeout (storing it first)
        self.timeout_s = 15.0
        self.busy_rate = 0.0  # 429 with Retry-After, nothing stored
        self.retry_after_s = 1
        self.latency_ms = 0.0
        self.duplicate_rate = 0.0  # answer "duplicate" for a record stored just now

    def update(self, changes: dict) -> None:
        for name, value in changes.items():
            if not hasattr(self, name):
                raise ValueError(f"unknown fault {name}")
            setattr(self, name, type(getattr(self, name))(value))


class Province:
    def __init__(self, db_path: Path, app_key: str, app_secret: str, host: str = "127.0.0.1", port: int = 0,
                 clock=time.time):
        self.app_key, self.app_secret = app_key, app_secret
        self.clock = clock
        self.faults = Faults()
        self.requests = 0
        self._nonces: dict[str, float] = {}
        self._lock = threading.Lock()
        self._db = sqlite3.connect(db_path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode = WAL")
        self._db.execute("PRAGMA synchronous = NORMAL")  # a simulator: durable across crashes, not power cuts
        self._db.execute("CREATE TABLE IF NOT EXISTS records (evalId TEXT PRIMARY KEY, projectNo TEXT, "
                         "assessNumber INTEGER, record TEXT NOT NULL, stored_at REAL NOT NULL)")
        self._db.execute("CREATE INDEX IF NOT EXISTS records_first ON records(projectNo) "
                         "WHERE assessNumber = 1 AND projectNo IS NOT NULL")
        self._db.execute("CREATE TABLE IF NOT EXISTS steps (stepId TEXT PRIMARY KEY, evalId TEXT NOT NULL, "
                         "step TEXT NOT NULL, record TEXT NOT NULL, stored_at REAL NOT NULL)")
        self.host, self.port = host, port
        self._server: ThreadingHTTPServer | None = None
        self._connections: set = set()  # open client connections, cut by down()

    # ---- lifecycle: down() and up() make a full outage (connection refused) ----

    def start(self) -> "Province":
        handler = type("Handler", (_Handler,), {"province": self})
        self._server = ThreadingHTTPServer((self.host, self.port), handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, name="province", daemon=True).start()
        return self

    def down(self) -> None:
        """A full outage: no new connections, and the open keep-alive ones are cut too (a client holding one
        would otherwise never notice)."""
        if self._server:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        with self._lock:
            connections, self._connections = list(self._connections), set()
        for connection in connections:
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:  # closed meanwhile
                pass

    up = start

    def stop(self) -> None:
        self.down()
        self._db.close()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    # ---- what tests and the GUI read ----

    def records(self) -> list[dict]:
        with self._lock:
            return [json.loads(r) for (r,) in self._db.execute("SELECT record FROM records ORDER BY rowid")]

    def record(self, eval_id: str) -> dict | None:
        with self._lock:
            row = self._db.execute("SELECT record FROM records WHERE evalId = ?", (eval_id,)).fetchone()
        return json.loads(row[0]) if row else None

    def landed(self) -> list[tuple]:
        """(evalId, projectNo, pf, satisfaction, stored_at) of every stored record, oldest first."""
        with self._lock:
            return self._db.execute("SELECT evalId, projectNo, record ->> 'pf', record ->> 'satisfaction', "
                                    "stored_at FROM records ORDER BY rowid").fetchall()

    def steps(self, eval_id: str | None = None) -> list[dict]:
        """Stored work-order steps (of one 差评, or all), oldest first."""
        with self._lock:
            rows = self._db.execute("SELECT record FROM steps WHERE ? IS NULL OR evalId = ? ORDER BY rowid",
                                    (eval_id, eval_id)).fetchall()
        return [json.loads(r) for (r,) in rows]

    def count(self) -> int:
        with self._lock:
            return self._db.execute("SELECT count(*) FROM records").fetchone()[0]

    # ---- the interface ----

    def authenticate(self, headers, body: bytes) -> str | None:
        """None when the request is signed right; else why not."""
        key, stamp, nonce, sig = (headers.get(h) for h in ("X-App-Key", "X-Timestamp", "X-Nonce", "X-Signature"))
        if not all((key, stamp, nonce, sig)):
            return "missing authentication headers"
        if not hmac.compare_digest(key, self.app_key):
            return "unknown app key"
        if not stamp.isdigit() or abs(int(stamp) / 1000 - self.clock()) > 300:
            return "timestamp more than 300 s off"
        if not 16 <= len(nonce) <= 64:
            return "nonce must be 16-64 characters"
        expected = upstream.signature(self.app_secret, key, stamp, nonce, body)
        if not hmac.compare_digest(sig, expected):
            return "bad signature"
        with self._lock:
            now = self.clock()
            self._nonces = {n: t for n, t in self._nonces.items() if now - t < NONCE_TTL_S}
            if nonce in self._nonces:
                return "nonce reused"
            self._nonces[nonce] = now
        return None

    def submit(self, records: list) -> list[dict]:
        """Validate and store a batch; one result per record, in order."""
        now = self.clock()
        ids = [r.get("evalId") if isinstance(r, dict) else None for r in records]
        projects = [r.get("projectNo") for r in records if isinstance(r, dict)]
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            known = self._present("SELECT evalId FROM records WHERE evalId IN (SELECT value FROM json_each(?))",
                                  [i for i in ids if isinstance(i, str)])
            rated = self._present("SELECT projectNo FROM records WHERE assessNumber = 1 AND projectNo IN "
                                  "(SELECT value FROM json_each(?))", [p for p in projects if isinstance(p, str)])
            results, rows = [], []
            for eval_id, record in zip(ids, records):
                result = self._judge(eval_id, record, known, rated, now)
                if result["status"] == "accepted":
                    known.add(eval_id)
                    if record["assessNumber"] == 1 and record.get("projectNo"):
                        rated.add(record["projectNo"])
                    rows.append(record)
                    if random.random() < self.faults.duplicate_rate:
                        result = {"evalId": eval_id, "status": "duplicate"}
                results.append(result)
            self._db.execute("INSERT INTO records SELECT value ->> 'evalId', value ->> 'projectNo', "
                             "value ->> 'assessNumber', value, ? FROM json_each(?)",
                             (now, json.dumps(rows, ensure_ascii=False, separators=(",", ":"))))
            self._db.execute("COMMIT")
        return results

    def submit_steps(self, records: list) -> list[dict]:
        """Validate and store a batch of work-order steps, in request order; one result per record."""
        results = []
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            for record in records:
                result = self._judge_step(record)
                if result["status"] == "accepted":
                    self._db.execute("INSERT INTO steps VALUES (?, ?, ?, ?, ?)",
                                     (record["stepId"], record["evalId"], record["step"],
                                      json.dumps(record, ensure_ascii=False), self.clock()))
                results.append(result)
            self._db.execute("COMMIT")
        return results

    def _judge_step(self, record) -> dict:
        step_id = record.get("stepId") if isinstance(record, dict) else None
        if not isinstance(record, dict):
            return {"stepId": None, "status": "rejected", "error": "E101", "message": "record is not an object"}
        if self._db.execute("SELECT 1 FROM steps WHERE stepId = ?", (step_id,)).fetchone():
            return {"stepId": step_id, "status": "duplicate"}
        error = upstream.step_problem(record)
        if error is None:
            # A first evaluation that is a 差评 (in the deployed direction this province speaks) and not a default.
            bad = self._db.execute("SELECT 1 FROM records WHERE evalId = ? AND record ->> 'satisfaction' <= 2 "
                                   "AND record ->> 'isDefault' = 0 AND assessNumber = 1",
                                   (record["evalId"],)).fetchone()
            if bad is None:
                error = ("E201", "the evalId is not a stored 差评")
        if error is None:
            last = self._db.execute("SELECT step FROM steps WHERE evalId = ? ORDER BY rowid DESC LIMIT 1",
                                    (record["evalId"],)).fetchone()
            if (last[0] if last else None) not in upstream.STEP_FOLLOWS[record["step"]]:
                error = ("E202", f"{record['step']} may not follow {last[0] if last else 'nothing'}")
        if error:
            return {"stepId": step_id, "status": "rejected", "error": error[0], "message": error[1]}
        return {"stepId": step_id, "status": "accepted"}

    def _present(self, sql: str, values: list) -> set:
        return {v for (v,) in self._db.execute(sql, (json.dumps(values),))} if values else set()

    @staticmethod
    def _judge(eval_id, record, known: set, rated: set, now: float) -> dict:
        if isinstance(eval_id, str) and eval_id in known:
            return {"evalId": eval_id, "status": "duplicate"}
        error = validate(record, now) if isinstance(record, dict) else ("E101", "record is not an object")
        if error is None and record.get("projectNo") and record["assessNumber"] == 1 and record["projectNo"] in rated:
            error = ("E106", "the case already has a first evaluation under another evalId")
        if error is None and record["assessNumber"] == 2 and record.get("projectNo") not in rated:
            error = ("E109", "a follow-up evaluation needs the case's first evaluation")
        if error:
            return {"evalId": eval_id, "status": "rejected", "error": error[0], "message": error[1]}
        return {"evalId": eval_id, "status": "accepted"}


def validate(r: dict, now: float) -> tuple[str, str] | None:
    """The first problem of a record as (error code, message), or None (docs/upstream.md, record fields)."""
    required = ["evalId", "deptCode", "proManager", "windowNo", "areaCode", "pf", "satisfaction", "assessTime",
                "assessNumber", "isDefault", "isPublic"]
    if r.get("projectNo") is not None:
        required += ["taskCode", "taskName"]
    for name in required:
        if r.get(name) is None:
            return "E101", f"{name} is required"
    text_limits = {"evalId": 64, "projectNo": 50, "taskCode": 64, "taskName": 200, "proDepart": 100,
                   "proManager": 30, "windowNo": 30, "writingEvaluation": 500, "evalDetail": 100}
    for name, limit in text_limits.items():
        if name in r and (not isinstance(r[name], str) or not 0 < len(r[name]) <= limit):
            return "E102", f"{name} must be text of 1-{limit} characters"
    if not _EVAL_ID.match(r["evalId"]):
        return "E102", "evalId: only A-Z a-z 0-9 _ -"
    if not isinstance(r["deptCode"], str) or len(r["deptCode"]) != 18:
        return "E102", "deptCode must be 18 characters"
    if not isinstance(r["areaCode"], str) or not r["areaCode"].isdigit() or len(r["areaCode"]) not in (6, 9):
        return "E102", "areaCode must be 6 or 9 digits"
    if r["pf"] not in PF_CODES:
        return "E103", f"unknown channel pf {r['pf']!r}"
    if type(r["satisfaction"]) is not int or not 1 <= r["satisfaction"] <= 5:
        return "E104", "satisfaction must be 1-5"
    for name, allowed in (("assessNumber", (1, 2)), ("isDefault", (0, 1)), ("isPublic", (0, 1)),
                          ("userProp", (1, 2))):
        if name in r and (type(r[name]) is not int or r[name] not in allowed):
            return "E102", f"{name} must be one of {allowed}"
    if not isinstance(r["assessTime"], str) or not _TIME.match(r["assessTime"]):
        return "E102", "assessTime must be yyyy-MM-dd HH:mm:ss"
    t = r["assessTime"]
    try:
        when = dt.datetime(int(t[:4]), int(t[5:7]), int(t[8:10]), int(t[11:13]), int(t[14:16]), int(t[17:19]),
                           tzinfo=CHINA).timestamp()
    except ValueError:
        return "E102", "assessTime is not a real time"
    if when > now + 300 or when < now - 30 * 86400:
        return "E105", "assessTime more than 5 minutes ahead or older than 30 days"
    if (r["isDefault"] == 1) != (r["pf"] == "7"):
        return "E108", "isDefault and pf disagree"
    if r["satisfaction"] <= 2 and r["isDefault"] == 0:
        codes = r.get("evalDetail", "").split(",") if isinstance(r.get("evalDetail"), str) else []
        if not codes or any(c not in REASON_CODES for c in codes):
            return "E107", "a 差评 needs evalDetail reason codes"
    return None


class _Handler(BaseHTTPRequestHandler):
    province: Province = None  # type: ignore[assignment]
    protocol_version = "HTTP/1.1"  # keep-alive, as the forwarder expects
    disable_nagle_algorithm = True  # headers and body go out as two writes; don't hold the second back

    def setup(self):
        super().setup()
        with self.province._lock:
            self.province._connections.add(self.connection)

    def finish(self):
        with self.province._lock:
            self.province._connections.discard(self.connection)
        super().finish()

    def do_POST(self):  # noqa: N802 - the http.server API
        p = self.province
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length <= MAX_BODY else b""
        if self.path == "/sim/faults":
            try:
                p.faults.update(json.loads(body))
            except (ValueError, TypeError) as e:
                return self._json(400, {"code": 400, "message": str(e)})
            return self._json(200, vars(p.faults))
        if self.path not in (upstream.BATCH_PATH, upstream.WORKORDER_BATCH_PATH):
            return self._json(404, {"code": 404, "message": "no such path"})
        p.requests += 1
        f = p.faults
        if f.latency_ms:
            time.sleep(f.latency_ms / 1000)
        if random.random() < f.busy_rate:
            return self._json(429, {"code": 429, "message": "busy"}, {"Retry-After": str(f.retry_after_s)})
        if length > MAX_BODY:
            return self._json(400, {"code": 400, "message": "body larger than 1 MiB"})
        why = p.authenticate(self.headers, body)
        if why:
            return self._json(401, {"code": 401, "message": why})
        try:
            envelope = json.loads(body)
            records = envelope["records"]
            if not isinstance(records, list) or not 1 <= len(records) <= 500:
                raise ValueError("records must hold 1-500 records")
        except (ValueError, KeyError, TypeError) as e:
            return self._json(400, {"code": 400, "message": f"bad envelope: {e}"})
        failing = random.random() < f.error_rate
        if failing and random.random() < 0.5:
            return self._json(500, {"code": 500, "message": "internal error"})
        results = p.submit(records) if self.path == upstream.BATCH_PATH else p.submit_steps(records)
        if failing:  # stored, but the answer never says so
            return self._json(500, {"code": 500, "message": "internal error"})
        if random.random() < f.timeout_rate:
            time.sleep(f.timeout_s)
        self._json(200, {"code": 0, "results": results})

    def do_GET(self):  # noqa: N802 - the http.server API
        p = self.province
        if self.path == "/sim/records":
            return self._json(200, {"records": p.records()})
        if self.path.startswith(upstream.RECORD_PATH):
            why = p.authenticate(self.headers, b"")
            if why:
                return self._json(401, {"code": 401, "message": why})
            found = p.record(self.path[len(upstream.RECORD_PATH):])
            if found is None:
                return self._json(404, {"code": 404, "message": "no such evaluation"})
            return self._json(200, {"code": 0, "record": found})
        if self.path.startswith(upstream.WORKORDER_PATH):
            why = p.authenticate(self.headers, b"")
            if why:
                return self._json(401, {"code": 401, "message": why})
            return self._json(200, {"code": 0, "steps": p.steps(self.path[len(upstream.WORKORDER_PATH):])})
        self._json(404, {"code": 404, "message": "no such path"})

    def _json(self, status: int, body: dict, headers: dict | None = None) -> None:
        data = json.dumps(body, ensure_ascii=False).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format, *args):  # noqa: A002 - quiet
        pass
