"""/healthz and Prometheus /metrics on a local HTTP port."""
from __future__ import annotations

import json
import logging
from http.server import BaseHTTPRequestHandler

from gateway.httpservice import HttpService

log = logging.getLogger("gateway.monitor")


class Monitor(HttpService):
    """Serves the gateway's health and figures; `gateway` is the running service.Gateway."""

    def __init__(self, host: str, port: int, gateway):
        super().__init__("monitor", host, port, _Handler, gateway=gateway)


class _Handler(BaseHTTPRequestHandler):
    gateway = None
    disable_nagle_algorithm = True  # headers and body go out as two writes; don't hold the second back

    def do_GET(self):  # noqa: N802 - the http.server API
        if self.path == "/healthz":
            health = self.gateway.health()
            self._send(200 if health["ok"] else 503, "application/json", json.dumps(health))
        elif self.path == "/metrics":
            lines = []
            for name, (kind, help_text, value) in self.gateway.metrics().items():
                lines += [f"# HELP hcp_{name} {help_text}", f"# TYPE hcp_{name} {kind}", f"hcp_{name} {value}"]
            self._send(200, "text/plain; version=0.0.4", "\n".join(lines) + "\n")
        else:
            self._send(404, "application/json", json.dumps({"error": "not found"}))

    def _send(self, status: int, content_type: str, body: str) -> None:
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format, *args):  # noqa: A002 - keep request lines out of stderr
        log.debug("http %s", format % args)
