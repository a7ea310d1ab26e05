"""The one source of time in the gateway, so tests can move it forward."""
from __future__ import annotations

import threading
import time


class Clock:
    """Wall-clock time in Unix seconds, `offset_s` ahead of the system clock (simulations let days pass)."""

    def __init__(self, offset_s: float = 0.0):
        self.offset_s = offset_s

    def now(self) -> float:
        return time.time() + self.offset_s


class ManualClock(Clock):
    """A clock that stands still until told to move (tests, accelerated simulations)."""

    def __init__(self, start: float):
        self._now = start
        self._lock = threading.Lock()

    def now(self) -> float:
        with self._lock:
            return self._now

    def advance(self, seconds: float) -> None:
        with self._lock:
            self._now += seconds

    def set(self, when: float) -> None:
        with self._lock:
            self._now = when
