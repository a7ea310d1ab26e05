"""Who may call what: API keys with roles, stored hashed, and rate limits per caller.

A key entry in `api.keys` is `NAME:ROLE[+ROLE...]:SHA256-OF-KEY`, printed by `hcp-gateway hash-key`. The
name is who the audit log says acted; the key itself is never stored.
"""
from __future__ import annotations

import hashlib
import hmac
import re
import threading
import time
from dataclasses import dataclass

ROLES = {
    "window": "the window's business or queue system: reports and cancels cases, reads their state",
    "technician": "registers devices, pushes their configuration, issues and revokes their credentials",
    "manager": "reads ratings and the device registry (follows up 差评)",
    "auditor": "reads ratings, the registry and the audit log; changes nothing",
}
_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,32}$")
_DIGEST = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class ApiKey:
    name: str
    roles: frozenset
    digest: str


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def key_entry(key: str, roles, name: str) -> str:
    """The api.keys entry for `key` (the secret itself stays with its holder)."""
    return f"{name}:{'+'.join(sorted(roles))}:{hash_key(key)}"


def parse_entry(entry: str) -> ApiKey:
    """An api.keys entry as an ApiKey; ValueError saying what is wrong."""
    parts = entry.split(":")
    if len(parts) != 3:
        raise ValueError(f"api.keys entry {entry[:20]!r}...: expected NAME:ROLE[+ROLE]:SHA256")
    name, roles, digest = parts
    if not _NAME.match(name):
        raise ValueError(f"api.keys entry for {name!r}: the name is 1-32 of A-Z a-z 0-9 _ . -")
    unknown = set(roles.split("+")) - set(ROLES)
    if unknown:
        raise ValueError(f"api.keys entry for {name}: unknown role {', '.join(sorted(unknown))} "
                         f"(roles: {', '.join(ROLES)})")
    if not _DIGEST.match(digest.lower()):
        raise ValueError(f"api.keys entry for {name}: the last part is the key's SHA-256 in hex")
    return ApiKey(name, frozenset(roles.split("+")), digest.lower())


def find_key(keys: list[ApiKey], presented: str | None) -> ApiKey | None:
    """The key whose hash matches the presented secret, comparing in constant time."""
    if not presented:
        return None
    digest = hash_key(presented)
    found = None
    for key in keys:
        if hmac.compare_digest(digest, key.digest):
            found = key
    return found


class RateLimiter:
    """A token bucket per caller: `per_minute` requests a minute, bursts of up to that many."""

    def __init__(self, per_minute: int, clock=time.monotonic):
        self.rate = per_minute / 60.0
        self.burst = float(per_minute)
        self.clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # caller -> (tokens, when)
        self._lock = threading.Lock()

    def wait_s(self, caller: str) -> float:
        """0 when the request may go ahead (and counts it); else the seconds until it may."""
        now = self.clock()
        with self._lock:
            tokens, then = self._buckets.get(caller, (self.burst, now))
            tokens = min(self.burst, tokens + (now - then) * self.rate)
            if tokens >= 1:
                self._buckets[caller] = (tokens - 1, now)
                return 0.0
            self._buckets[caller] = (tokens, now)
            if len(self._buckets) > 10000:  # forget callers whose buckets have refilled
                self._buckets = {c: b for c, b in self._buckets.items() if b[0] + (now - b[1]) * self.rate < self.burst}
            return (1 - tokens) / self.rate
