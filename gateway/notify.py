"""The duty manager's webhook: POSTed once for every 差评 and every 超期预警, retried until it answers 2xx.

The notice names the window, level, time and deadline; it never carries personal data.
"""
from __future__ import annotations

import json
import logging
import urllib.error
import urllib.request

from prometheus_client import Counter

from gateway.periodic import Periodic
from gateway.store import Writer
from protocol.codec import LEVEL_LABELS, LEVELS

log = logging.getLogger("gateway.notify")
RETRY_MAX_S = 600.0

_DUE = """
SELECT f.rating_id, f.deadline, f.notify_attempts, r.origin, r.channel, r.case_ref, r.level, r.reasons,
       r.assessed_at, coalesce(c.window_no, d.window_no) AS window_no
FROM followups f JOIN ratings r ON r.id = f.rating_id
LEFT JOIN cases c ON c.case_ref = r.case_ref LEFT JOIN devices d ON d.dev = r.origin
WHERE f.notify_state = 'pending' AND f.notify_after <= ? ORDER BY f.rating_id LIMIT 50
"""


_WARNINGS_DUE = """
SELECT w.id, w.rating_id, w.kind, w.level, w.deadline, w.notify_attempts, f.dept_code,
       coalesce(c.window_no, d.window_no) AS window_no
FROM warnings w JOIN followups f ON f.rating_id = w.rating_id JOIN ratings r ON r.id = w.rating_id
LEFT JOIN cases c ON c.case_ref = r.case_ref LEFT JOIN devices d ON d.dev = r.origin
WHERE w.notify_state = 'pending' AND w.notify_after <= ? ORDER BY w.id LIMIT 50
"""


def warning(row: dict) -> dict:
    """超期预警: a work order's 回访 or 整改 deadline nearly or already passed; `warning_id` is stable, so a
    receiver can tell a resend (after a crash between its answer and our record of it) from a new warning."""
    return {"event": "overdue_warning", "warning_id": row["id"], "rating_id": row["rating_id"], "kind": row["kind"],
            "level": row["level"], "deadline": row["deadline"], "window": row["window_no"],
            "dept_code": row["dept_code"]}


def notice(row: dict) -> dict:
    return {"event": "bad_rating", "rating_id": row["rating_id"], "window": row["window_no"],
            "device": row["origin"] if row["channel"] == "device" else None, "channel": row["channel"],
            "case_ref": row["case_ref"], "level": row["level"],
            "level_label": LEVEL_LABELS[LEVELS.index(row["level"])],
            "reasons": row["reasons"].split(",") if row["reasons"] else [],
            "assessed_at": row["assessed_at"], "followup_deadline": row["deadline"]}


class Notifier(Periodic):
    interval = 1.0
    name = "notifier"

    def __init__(self, config: dict, writer: Writer, clock, reader, metrics):
        super().__init__()
        self.url = config["cases.webhook_url"]
        self.writer = writer
        self.clock = clock
        self.reader = reader
        self.sent = Counter("hcp_webhooks_sent", "notices delivered to the duty manager (差评, 超期预警)",
                            registry=metrics)

    def run_once(self) -> None:
        now = self.clock.now()
        for table, key, due, message in (("followups", "rating_id", _DUE, notice),
                                         ("warnings", "id", _WARNINGS_DUE, warning)):
            for row in [dict(r) for r in self.reader.execute(due, (now,))]:
                self._deliver(table, key, row, message(row), now)

    def _deliver(self, table: str, key: str, row: dict, body: dict, now: float) -> None:
        """POST one notice; record it sent, or when to try again."""
        if not self.url:
            self._mark(table, key, row[key], "none", None, 0)
            return
        error = self._post(body)
        if error is None:
            self.sent.inc()
            self._mark(table, key, row[key], "sent", None, 0)
        else:
            log.warning("webhook for %s %d failed: %s", table, row[key], error)
            retry_in = min(RETRY_MAX_S, 5.0 * 2 ** row["notify_attempts"])
            self._mark(table, key, row[key], "pending", error, now + retry_in)

    def _post(self, body: dict) -> str | None:
        request = urllib.request.Request(self.url, data=json.dumps(body, ensure_ascii=False).encode(),
                                         headers={"Content-Type": "application/json"}, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return None if 200 <= response.status < 300 else f"HTTP {response.status}"
        except (urllib.error.URLError, OSError) as e:
            return str(e)

    def _mark(self, table: str, key: str, row_id: int, state: str, error: str | None, retry_at: float) -> None:
        self.writer.call(lambda conn: conn.execute(
            f"UPDATE {table} SET notify_state = ?, notify_error = ?, notify_after = ?, "
            f"notify_attempts = notify_attempts + (? IS NOT NULL) WHERE {key} = ?",
            (state, error, retry_at, error, row_id)))
