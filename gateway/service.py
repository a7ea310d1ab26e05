"""The running gateway: one writer, MQTT ingest and downlink, forwarder, housekeeping, notifier, the case API
with the citizens' pages, and the monitor, wired up."""
from __future__ import annotations

import logging
import signal
import threading

from prometheus_client import CollectorRegistry

from gateway import brokerauth, db
from gateway.api import Api
from gateway.cases import Cases, Housekeeping
from gateway.clock import Clock
from gateway.downlink import Downlink
from gateway.forwarder import Forwarder
from gateway.ingest import Ingest
from gateway.monitor import Monitor, QueueCollector
from gateway.notify import Notifier
from gateway.pages import Pages
from gateway.registry import DeviceGate, Registry
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
        self.metrics = CollectorRegistry()  # this gateway's own, so several can run in one process (tests)
        quota = config["store.quota_mb"] * MB
        self.writer = Writer(config["store.path"], config["store.batch_max"], config["store.batch_wait_ms"] / 1000,
                             quota_bytes=quota, alarm_bytes=quota * config["store.alarm_percent"] // 100)
        self.gate = DeviceGate(config["store.path"], config["mqtt.registered_only"])
        self.downlink = Downlink(config["gateway.hall"], self.gate.key, self.clock)
        self.ingest = Ingest(config, self.writer, self.clock, self.calendar, self.gate, self.downlink, self.metrics)
        self.forwarder = Forwarder(config, self.writer, self.clock, self.metrics)
        self.writer.batch_listeners.append(self.forwarder.wake.set)
        self.housekeeping = Housekeeping(config, self.writer, self.clock, self.calendar, self.metrics)
        self.reader = None
        self.registry: Registry | None = None
        self.cases: Cases | None = None
        self.pages: Pages | None = None
        self.notifier: Notifier | None = None
        self.monitor: Monitor | None = None
        self.api: Api | None = None

    def start(self) -> "Gateway":
        """Start every part; StorageError if the database cannot be used, OSError if the port is taken.

        The case API opens as soon as the database is open, before anything that may take time or wait for
        others (the broker, the province, a backlog): 办结 reports are taken while the rest comes up, and their
        prompts wait in the downlink until the broker is there.
        """
        self.writer.start()
        self.reader = db.Reader(self.config["store.path"])
        self.gate.start()
        parts = (self.config, self.writer, self.reader)
        self.registry = Registry(*parts, self.gate, self.downlink, self.clock)
        self.cases = Cases(*parts, self.registry, self.downlink, self.clock, self.calendar)
        self.pages = Pages(*parts, self.registry, self.downlink, self.clock, self.calendar)
        self.notifier = Notifier(self.config, self.writer, self.clock, self.reader, self.metrics)
        self.metrics.register(QueueCollector(self))
        self.api = Api(self)
        self.monitor = Monitor(self)
        self.api.start()
        self.monitor.start()
        brokerauth.write_files(self.reader, self.config)  # the broker's accounts as the registry has them
        self.ingest.start()
        self.forwarder.start()
        self.housekeeping.start()
        self.notifier.start()
        log.info("gateway for hall %s started: database %s, monitor http://%s:%d/metrics",
                 self.config["gateway.hall"], self.config["store.path"], self.config["http.host"], self.monitor.port)
        return self

    def stop(self) -> None:
        """Stop every part, letting the writer commit what is queued. Safe to call twice."""
        for part in (self.api, self.monitor, self.ingest, self.notifier, self.housekeeping, self.forwarder):
            if part is not None:
                part.stop()
        self.writer.stop()
        self.gate.stop()
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
        checks = {"writer": self.writer.alive, "mqtt_thread": self.ingest.alive,
                  "broker": self.ingest.connected.is_set(), "storage_below_quota": not self.writer.full}
        return {"ok": all(checks.values()), **checks, "storage_alarm": self.writer.alarm,
                "forward_last_error": self.forwarder.last_error}

    def counter(self, name: str) -> int:
        """A counter's value since start, by its name without hcp_ and _total (ingest_stored, forward_failures)."""
        counters = {**{f"ingest_{k}": c for k, c in self.ingest.outcomes.items()},
                    **{f"forward_{k}": c for k, c in self.forwarder.results.items()},
                    "default_ratings": self.housekeeping.defaults_issued,
                    "webhooks_sent": self.notifier.sent}
        return int(counters[name].collect()[0].samples[0].value)
