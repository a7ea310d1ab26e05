"""/healthz and Prometheus /metrics on a local HTTP port.

The counters and histograms live where things happen (ingest, forwarder, housekeeping, notifier); the queue
depths and the storage state are read when scraped, by QueueCollector.
"""
from __future__ import annotations

import json

from prometheus_client import make_wsgi_app
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from gateway import report
from gateway.httpservice import HttpService


class QueueCollector(Collector):
    """Gauges read at scrape time from the database and the running parts."""

    def __init__(self, gateway):
        self.gateway = gateway

    def collect(self):
        g = self.gateway
        figures = report.status(g.reader, g.clock.now())
        gauges = {
            "outbox_pending": ("queue: ratings waiting to be forwarded", figures["pending"]),
            "dead_letters": ("ratings the province rejected or that cannot be mapped", figures["dead_letters"]),
            "oldest_pending_age_seconds": ("age of the oldest unforwarded rating",
                                           figures["oldest_pending_age_s"] or 0),
            "devices_online": ("devices whose last status is online", figures["devices_online"]),
            "devices_offline": ("devices whose last status is offline", figures["devices_offline"]),
            "followups_open": ("差评 follow-ups not closed", figures["followups_open"]),
            "cases_open": ("cases waiting for a rating", figures["cases_open"]),
            "steps_pending": ("work-order steps waiting to be forwarded", figures["steps_pending"]),
            "steps_dead": ("work-order steps the province refused (they hold back their work order)",
                           figures["steps_dead"]),
            "db_bytes": ("bytes the database uses", figures["db_bytes"]),
            "storage_alarm": ("1 when the database passed the alarm size", int(g.writer.alarm)),
            "storage_full": ("1 when the quota is reached and ratings are not taken", int(g.writer.full)),
            "broker_connected": ("1 while connected to the broker", int(g.ingest.connected.is_set())),
            "api_connections": ("connections open to the case API and the citizens' pages", g.api.connections()),
        }
        for name, (help_text, value) in gauges.items():
            yield GaugeMetricFamily(f"hcp_{name}", help_text, value=value)


class Monitor(HttpService):
    """Serves the gateway's health and figures; `gateway` is the running service.Gateway."""

    def __init__(self, gateway):
        config = gateway.config
        self.gateway = gateway
        self.metrics_app = make_wsgi_app(gateway.metrics)
        super().__init__("monitor", config["http.host"], config["http.port"], self.app, config)

    def app(self, environ, start_response):
        path = environ.get("PATH_INFO")
        if path == "/metrics":
            return self.metrics_app(environ, start_response)
        if path == "/healthz":
            health = self.gateway.health()
            status, body = ("200 OK" if health["ok"] else "503 Service Unavailable"), json.dumps(health)
        else:
            status, body = "404 Not Found", json.dumps({"error": "not found"})
        data = body.encode()
        start_response(status, [("Content-Type", "application/json"), ("Content-Length", str(len(data)))])
        return [data]
