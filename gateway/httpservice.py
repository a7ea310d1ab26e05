"""The gateway's HTTP services (the case API with the citizens' pages, and the monitor): WSGI apps served by
waitress on their own thread.

Waitress reads each request whole on one event loop before a worker thread sees it, so a phone on a slow
network, or someone holding connections open on purpose, costs a socket and no thread. A connection silent for
`http.request_timeout_s` (in its request head, its body, or between requests) is closed; at most
`http.max_connections` are open at once, beyond which new ones wait in the listen backlog.
"""
from __future__ import annotations

import json
import logging
import threading
from dataclasses import dataclass, field
from http.cookies import CookieError, SimpleCookie
from typing import Callable
from urllib.parse import parse_qs

from waitress import wasyncore
from waitress.server import create_server

log = logging.getLogger("gateway.http")
MAX_BODY = 16 * 1024
WORKER_THREADS = 8
BACKLOG = 2048


@dataclass
class Request:
    """What a handler needs of a WSGI request."""

    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]  # lower-case names
    client: str
    body: bytes = b""
    args: dict[str, str] = field(default_factory=dict)  # the path's {parameters}
    caller: object = None  # the API key that made the call (gateway.access.ApiKey), once authorised

    @classmethod
    def from_environ(cls, environ: dict) -> "Request":
        headers = {key[5:].replace("_", "-").lower(): value for key, value in environ.items()
                   if key.startswith("HTTP_")}
        if environ.get("CONTENT_TYPE"):
            headers["content-type"] = environ["CONTENT_TYPE"]
        length = int(environ.get("CONTENT_LENGTH") or 0)  # waitress refuses bodies over max_request_body_size
        body = environ["wsgi.input"].read(length) if length else b""
        path = environ.get("PATH_INFO", "/").encode("latin-1").decode("utf-8", errors="replace")
        return cls(environ["REQUEST_METHOD"], path, parse_qs(environ.get("QUERY_STRING", "")), headers,
                   environ.get("REMOTE_ADDR", ""), body)

    def param(self, name: str, default: str = "") -> str:
        return self.query.get(name, [default])[0]

    def form(self) -> dict[str, list[str]]:
        return parse_qs(self.body.decode(errors="replace"))

    def cookie(self, name: str) -> str | None:
        try:
            morsel = SimpleCookie(self.headers.get("cookie", "")).get(name)
        except CookieError:
            return None
        return morsel.value if morsel else None


@dataclass
class Response:
    status: int
    body: bytes
    content_type: str = "application/json; charset=utf-8"
    headers: list[tuple[str, str]] = field(default_factory=list)

    @classmethod
    def json(cls, status: int, document, headers: list | None = None) -> "Response":
        return cls(status, json.dumps(document, ensure_ascii=False).encode(), headers=headers or [])

    @classmethod
    def html(cls, status: int, page: str, headers: list | None = None) -> "Response":
        return cls(status, page.encode(), "text/html; charset=utf-8", headers or [])

    def __call__(self, start_response) -> list[bytes]:
        reason = _REASONS.get(self.status, "")
        start_response(f"{self.status} {reason}", [("Content-Type", self.content_type),
                                                   ("Content-Length", str(len(self.body))),
                                                   ("Cache-Control", "no-store"), *self.headers])
        return [self.body]


_REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 403: "Forbidden",
            404: "Not Found", 405: "Method Not Allowed", 409: "Conflict", 413: "Payload Too Large",
            429: "Too Many Requests", 500: "Internal Server Error", 503: "Service Unavailable"}


def wsgi(handle: Callable[[Request], Response]):
    """A WSGI application around `handle`; an unexpected failure is a 500 for the client, details in the log."""

    def application(environ, start_response):
        request = Request.from_environ(environ)
        try:
            response = handle(request)
        except Exception:  # noqa: BLE001 - the log gets the details, the client a plain 500
            log.exception("request %s %s failed", request.method, request.path[:80])
            response = Response.json(500, {"error": "internal error"})
        return response(start_response)

    return application


class HttpService:
    """Serves a WSGI `app` on host:port (port 0 picks a free one) until stopped."""

    def __init__(self, name: str, host: str, port: int, app, config: dict):
        self._map: dict = {}  # waitress's socket map, ours so stop() can close every connection in it
        self.server = create_server(
            app, map=self._map, host=host, port=port, threads=WORKER_THREADS, backlog=BACKLOG,
            connection_limit=config["http.max_connections"], channel_timeout=config["http.request_timeout_s"],
            cleanup_interval=1, asyncore_use_poll=True, max_request_body_size=MAX_BODY, ident="hcp-gateway",
            expose_tracebacks=False, clear_untrusted_proxy_headers=True)
        self.port = int(self.server.effective_port)
        self._thread = threading.Thread(target=self.server.run, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def connections(self) -> int:
        """Client connections open now (waitress's map also holds the listening socket and its wake-up pipe)."""
        return max(0, len(self._map) - 2)

    def stop(self) -> None:
        self.server.task_dispatcher.shutdown()
        wasyncore.close_all(self._map)  # the loop ends once its map is empty
        if self._thread.is_alive():
            self._thread.join(5)
