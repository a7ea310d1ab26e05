"""The running gateway: one writer, MQTT ingest, forwarder, housekeeping, notifier and monitor, wired up."""
from __future__ import annotations

import logging
import signal
import threading

from gateway import brokerauth, db, report
from gateway.api import Api
from gateway.cases import Housekeeping
from gateway.clock import Clock
from gateway.forwarder import Forwarder
from gateway.ingest import Ingest
from gateway.monitor import Monitor
from gateway.notify import Notifier
from gateway.store import Writer
from gateway.workdays import WorkCalendar

log = logging.getLogger("gateway")
MB = 1024 * 1024


class Gateway:
    def __init__(self, config: dict, clock: Clock | None = None):
        self.config = config
        self.clock = clock or Clock(config["clock.offset_s"])
        self.calendar = WorkCalendar(config["calendar.extra_years"], config["calendar.holidays"],
                                     config["calendar.workdays"])
        quota = config["store.quota_mb"] * MB
        self.writer = Writer(config["store.path"], config["store.batch_max"], config["store.batch_wait_ms"] / 1000,
                             quota_bytes=quota, alarm_bytes=quota * config["store.alarm_percent"] // 100)
        self.ingest = Ingest(config, self.writer, self.clock, self.calendar)
        self.forwarder = Forwarder(config, self.writer, self.clock)
        self.writer.batch_listeners.append(self.forwarder.wake.set)
        self.housekeeping = Housekeeping(config, self.writer, self.clock, self.calendar)
        self.reader = None
        self.notifier: Notifier | None = None
        self.monitor: Monitor | None = None
        self.api: Api | None = None

    def start(self) -> "Gateway":
        """Start every part; StorageError if the database cannot be used, OSError if the port is taken."""
        self.writer.start()
        self.reader = db.Reader(self.config["store.path"])
        brokerauth.write_files(self.reader, self.config)  # the broker's accounts as the registry has them
        self.notifier = Notifier(self.config, self.writer, self.clock, self.reader)
        self.monitor = Monitor(self.config["http.host"], self.config["http.port"], self)
        self.api = Api(self)
        self.ingest.start()
        self.forwarder.start()
        self.housekeeping.start()
        self.notifier.start()
        self.monitor.start()
        self.api.start()
        log.info("gateway for hall %s started: database %s, monitor http://%s:%d/metrics",
                 self.config["gateway.hall"], self.config["store.path"], self.config["http.host"], self.monitor.port)
        return self

    def stop(self) -> None:
        """Stop every part, letting the writer commit what is queued. Safe to call twice."""
        for part in (self.api, self.monitor, self.ingest, self.notifier, self.housekeeping, self.forwarder):
            if part is not None:
                part.stop()
        self.writer.stop()
        if self.reader is not None:
            self.reader.conn.close()

    def run_until_signal(self) -> None:
        stop = threading.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
        stop.wait()
        log.info("stopping")
        self.stop()

    def health(self) -> dict:
        checks = {"writer": self.writer.alive, "broker": self.ingest.connected.is_set(),
                  "storage_below_quota": not self.writer.full}
        return {"ok": all(checks.values()), **checks, "storage_alarm": self.writer.alarm,
                "forward_last_error": self.forwarder.last_error}

    def metrics(self) -> dict:
        figures = report.status(self.reader, self.clock.now())
        counts = self.ingest.counts
        gauges = {
            "outbox_pending": ("queue: ratings waiting to be forwarded", figures["pending"]),
            "dead_letters": ("ratings the province rejected or that cannot be mapped", figures["dead_letters"]),
            "oldest_pending_age_seconds": ("age of the oldest unforwarded rating",
                                           figures["oldest_pending_age_s"] or 0),
            "devices_online": ("devices whose last status is online", figures["devices_online"]),
            "devices_offline": ("devices whose last status is offline", figures["devices_offline"]),
            "db_bytes": ("bytes the database uses", figures["db_bytes"]),
            "storage_alarm": ("1 when the database passed the alarm size", int(self.writer.alarm)),
            "storage_full": ("1 when the quota is reached and ratings are not taken", int(self.writer.full)),
            "broker_connected": ("1 while connected to the broker", int(self.ingest.connected.is_set())),
        }
        counters = {
            "ratings_stored_total": ("ratings stored since start", counts["stored"]),
            "ratings_duplicate_total": ("ratings received again and acked again", counts["duplicate"]),
            "ratings_already_rated_total": ("attempts at a case already rated", counts["already_rated"]),
            "messages_rejected_total": ("messages refused with a reason", counts["rejected"]),
            "messages_refused_total": ("messages not stored (storage full), left at the broker", counts["refused"]),
            "forwarded_total": ("ratings the province accepted", self.forwarder.counts["forwarded"]),
            "forward_duplicate_total": ("ratings the province had already", self.forwarder.counts["duplicate"]),
            "forward_failures_total": ("submissions that failed and will be retried",
                                       self.forwarder.counts["failed_attempts"]),
            "default_ratings_total": ("default ratings issued", self.housekeeping.defaults_issued),
            "webhooks_sent_total": ("差评 notices delivered", self.notifier.sent if self.notifier else 0),
        }
        return {**{k: ("gauge", h, v) for k, (h, v) in gauges.items()},
                **{k: ("counter", h, v) for k, (h, v) in counters.items()}}
