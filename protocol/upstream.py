"""The upstream contract: how a stored rating becomes a provincial 好差评 record.

The record follows docs/upstream.md (GB/T 39046-2020 table 9 with the field names of deployed provincial
interfaces). What differs between provinces is a `Profile`: the direction of the satisfaction codes, the
channel codes, the region code. CPython only; the device never sees upstream codes.
"""
from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass, field

from protocol.codec import BAD_LEVELS, LEVELS, REASON_CODES

# Where a rating came from. The wire carries none of these: the gateway knows the channel.
CHANNELS = ("device", "qr", "default")

# Satisfaction code directions seen in practice (docs/domain.md).
DIRECTIONS = {
    "deployed": (5, 4, 3, 2, 1),  # Zhejiang, Guangdong, docs/upstream.md: 5 = 非常满意
    "national": (1, 2, 3, 4, 5),  # GB/T 39046-2020 table A.8: 1 = 非常满意
}


class MappingError(ValueError):
    """A rating that cannot be expressed in the upstream record (bad profile or missing case data)."""


@dataclass(frozen=True)
class Profile:
    """Per-province settings of the upstream mapping."""

    area_code: str  # 行政区划, 6 or 9 digits
    data_source: str = ""  # submitting system's code; the area code when empty
    direction: str = "deployed"
    channel_codes: dict = field(default_factory=lambda: {"device": "5", "qr": "3", "default": "7"})
    default_bad_reason: str = "599"  # 其他: sent when a citizen gave a 差评 but skipped the reasons
    utc_offset_minutes: int = 480  # assessTime is China time

    def __post_init__(self):
        if not (self.area_code.isdigit() and len(self.area_code) in (6, 9)):
            raise MappingError(f"area_code must be 6 or 9 digits, got {self.area_code!r}")
        if self.direction not in DIRECTIONS:
            raise MappingError(f"direction must be one of {sorted(DIRECTIONS)}, got {self.direction!r}")
        missing = [c for c in CHANNELS if c not in self.channel_codes]
        if missing:
            raise MappingError(f"channel_codes lacks {missing}")
        if self.default_bad_reason not in REASON_CODES:
            raise MappingError(f"default_bad_reason must be one of {REASON_CODES}")

    @property
    def source(self) -> str:
        return self.data_source or self.area_code

    def satisfaction(self, level: str) -> int:
        return DIRECTIONS[self.direction][LEVELS.index(level)]

    def assess_time(self, epoch_seconds: int) -> str:
        return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(epoch_seconds + self.utc_offset_minutes * 60))


def eval_id(source: str, origin: str, rating_id: str) -> str:
    """The upstream idempotency key: stable for a rating, so every retry carries the same one.

    `origin` is the device id for a press, or the gateway's name for QR and default ratings.
    At most 6/9 + 1 + 32 + 1 + 16 = 59 characters of [A-Za-z0-9_-].
    """
    return f"{source}-{origin}-{rating_id}"


def to_record(rating: dict, case: dict | None, profile: Profile) -> dict:
    """Map a stored rating (and its case, if any) onto one upstream record.

    rating: eval_id, level, channel, assessed_at (epoch s), public, reasons (list), comment,
            assess_number (1 or 2), window_no, staff_no, dept_code, dept_name
    case:   project_no, task_code, task_name, dept_code, dept_name, staff_no, user_prop (or None)
    """
    channel = rating["channel"]
    if channel not in CHANNELS:
        raise MappingError(f"unknown channel {channel!r}")
    if rating["level"] not in LEVELS:
        raise MappingError(f"unknown level {rating['level']!r}")
    case = case or {}
    is_default = channel == "default"
    if not rating.get("window_no"):
        raise MappingError("windowNo is required: register the device's window, or give the case one")
    record = {
        "evalId": rating["eval_id"],
        "deptCode": case.get("dept_code") or rating.get("dept_code"),
        "proManager": case.get("staff_no") or rating.get("staff_no"),
        "windowNo": rating["window_no"],
        "areaCode": profile.area_code,
        "pf": profile.channel_codes[channel],
        "satisfaction": profile.satisfaction(rating["level"]),
        "assessTime": profile.assess_time(rating["assessed_at"]),
        "assessNumber": rating.get("assess_number", 1),
        "isDefault": 1 if is_default else 0,
        "isPublic": 1 if rating["public"] else 0,
    }
    for key, value in (("deptCode", record["deptCode"]), ("proManager", record["proManager"])):
        if not value:
            raise MappingError(f"{key} is required: give the window's department and staff")
    if case.get("project_no"):
        record.update(projectNo=case["project_no"], taskCode=case["task_code"], taskName=case["task_name"])
    dept_name = case.get("dept_name") or rating.get("dept_name")
    if dept_name:
        record["proDepart"] = dept_name
    if case.get("user_prop"):
        record["userProp"] = case["user_prop"]
    if rating["level"] in BAD_LEVELS and not is_default:
        record["evalDetail"] = ",".join(rating.get("reasons") or [profile.default_bad_reason])
    if rating.get("comment"):
        record["writingEvaluation"] = rating["comment"][:500]
    return record


# ---- request signing (docs/upstream.md, "Authentication and signature") ----

BATCH_PATH = "/api/hcp/v1/evaluations/batch"
RECORD_PATH = "/api/hcp/v1/evaluations/"


def signature(app_secret: str, app_key: str, timestamp_ms: str, nonce: str, body: bytes) -> str:
    """Lowercase hex HMAC-SHA256 of appKey, timestamp, nonce and the body's SHA-256, newline-joined."""
    message = "\n".join([app_key, timestamp_ms, nonce, hashlib.sha256(body).hexdigest()])
    return hmac.new(app_secret.encode(), message.encode(), hashlib.sha256).hexdigest()


def auth_headers(app_key: str, app_secret: str, body: bytes, now_s: float) -> dict:
    """The four authentication headers of one request, with a fresh nonce."""
    timestamp = str(int(now_s * 1000))
    nonce = secrets.token_hex(16)
    return {"X-App-Key": app_key, "X-Timestamp": timestamp, "X-Nonce": nonce,
            "X-Signature": signature(app_secret, app_key, timestamp, nonce, body)}
