"""The duty manager's webhook: POSTed once for every 差评, retried until it answers 2xx.

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
        self.sent = Counter("hcp_webhooks_sent", "差评 notices delivered to the duty manager", registry=metrics)

    def run_once(self) -> None:
        now = self.clock.now()
        for row in [dict(r) for r in self.reader.execute(_DUE, (now,))]:
            if not self.url:
                self._mark(row["rating_id"], "none", None, 0)
                continue
            error = self._post(notice(row))
            if error is None:
                self.sent.inc()
                self._mark(row["rating_id"], "sent", None, 0)
            else:
                log.warning("webhook for rating %d failed: %s", row["rating_id"], error)
                retry_in = min(RETRY_MAX_S, 5.0 * 2 ** row["notify_attempts"])
                self._mark(row["rating_id"], "pending", error, now + retry_in)

    def _post(self, body: dict) -> str | None:
        request = urllib.request.Request(self.url, data=json.dumps(body, ensure_ascii=False).encode(),
                                         headers={"Content-Type": "application/json"}, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return None if 200 <= response.status < 300 else f"HTTP {response.status}"
        except (urllib.error.URLError, OSError) as e:
            return str(e)

    def _mark(self, rating_id: int, state: str, error: str | None, retry_at: float) -> None:
        self.writer.call(lambda conn: conn.execute(
            "UPDATE followups SET notify_state = ?, notify_error = ?, notify_after = ?, "
            "notify_attempts = notify_attempts + (? IS NOT NULL) WHERE rating_id = ?",
            (state, error, retry_at, error, rating_id)))
