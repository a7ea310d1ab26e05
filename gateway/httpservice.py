"""An HTTP server on its own thread, for the gateway's monitor and its API."""
from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class HttpService:
    """Serves `handler` (a request handler class, given `attributes`) on host:port; port 0 picks a free one."""

    def __init__(self, name: str, host: str, port: int, handler: type[BaseHTTPRequestHandler], **attributes):
        bound = type("Handler", (handler,), attributes)
        self.server = ThreadingHTTPServer((host, port), bound)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
