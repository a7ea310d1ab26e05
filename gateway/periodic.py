"""A background thread that does one round of work every `interval` seconds until stopped."""
from __future__ import annotations

import logging
import threading

log = logging.getLogger("gateway")


class Periodic:
    interval = 1.0  # seconds between rounds; a class attribute, so a test can shorten it
    name = "periodic"

    def __init__(self):
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name=self.name, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join()

    def run_once(self) -> None:
        raise NotImplementedError

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.run_once()
            except Exception:  # noqa: BLE001 - a failed round is logged; the next one runs
                log.exception("%s failed", self.name)
            self._stop.wait(self.interval)
