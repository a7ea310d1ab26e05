"""The upstream contract: how a stored rating becomes a provincial 好差评 record.

The record follows docs/upstream.md (GB/T 39046-2020 table 9 with the field names of deployed provincial
interfaces). What differs between provinces is a `Profile`: the direction of the satisfaction codes, the
channel codes, the region code. CPython only; the device never sees upstream codes.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import re
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


# ---- 差评 work orders (docs/upstream.md, "差评 work orders") ----

WORKORDER_BATCH_PATH = "/api/hcp/v1/workorders/batch"
WORKORDER_PATH = "/api/hcp/v1/workorders/"
# Each step and the steps it may follow (None: it may be a work order's first step).
STEP_FOLLOWS = {
    "visited": {None},
    "appealed": {None, "visited"},
    "appeal_upheld": {"appealed"},
    "appeal_rejected": {"appealed"},
    "rectifying": {"visited", "appeal_rejected"},
    "extended": {"rectifying", "extended"},
    "rectified": {"rectifying", "extended"},
}
FINAL_STEPS = ("appeal_upheld", "rectified")  # nothing may follow them
NEEDS_CONTENT = ("appealed", "appeal_upheld", "appeal_rejected", "rectified", "extended")
NEEDS_DEADLINE = ("rectifying", "extended")
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


def allowed_after(last: str | None) -> list[str]:
    """The steps that may follow `last` (None: a work order with no step yet), in the table's order."""
    return [step for step, follows in STEP_FOLLOWS.items() if last in follows]


def step_id(eval_id: str, number: int) -> str:
    """A step's idempotency key: its 差评's evalId and its place in the work order (at most 59 + 3 characters)."""
    return f"{eval_id}-{number}"


def step_record(step: dict, eval_id: str, profile: Profile) -> dict:
    """A stored step (gateway/workorders.py) as the province's step record."""
    record = {"stepId": step_id(eval_id, step["number"]), "evalId": eval_id, "step": step["step"],
              "stepTime": profile.assess_time(int(step["at"])), "handler": step["handler"]}
    for name, key in (("visit_result", "visitResult"), ("content", "content"), ("deadline", "deadline")):
        if step.get(name) is not None:
            record[key] = step[name]
    return record


def step_problem(record: dict) -> tuple[str, str] | None:
    """What is wrong with a step record's own fields, as (error code, message); None if nothing. The order of
    steps (E202) and whether the 差评 exists (E201) are for whoever holds the work order to judge."""
    for name in ("stepId", "evalId", "step", "stepTime", "handler"):
        if not isinstance(record.get(name), str) or not record[name]:
            return "E101", f"{name} is required"
    step = record["step"]
    if step not in STEP_FOLLOWS:
        return "E102", f"step must be one of {', '.join(STEP_FOLLOWS)}"
    if len(record["stepId"]) > 64 or not re.fullmatch(r"[A-Za-z0-9_-]+", record["stepId"]):
        return "E102", "stepId: 1-64 of A-Z a-z 0-9 _ -"
    if len(record["handler"]) > 30:
        return "E102", "handler: at most 30 characters"
    if not re.fullmatch(r"\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}", record["stepTime"]):
        return "E102", "stepTime must be yyyy-MM-dd HH:mm:ss"
    for name, needed in (("visitResult", step == "visited"), ("content", step in NEEDS_CONTENT),
                         ("deadline", step in NEEDS_DEADLINE)):
        if needed and record.get(name) is None:
            return "E101", f"{name} is required with {step}"
    visit, content, deadline = record.get("visitResult"), record.get("content"), record.get("deadline")
    if visit is not None and (type(visit) is not int or visit not in (1, 2)):
        return "E102", "visitResult: 1 reached, 2 not reached"
    if content is not None and (not isinstance(content, str) or not 1 <= len(content) <= 500):
        return "E102", "content: 1-500 characters"
    if deadline is not None and not _real_date(deadline):
        return "E102", "deadline must be a date, yyyy-MM-dd"
    return None


def _real_date(text) -> bool:
    if not isinstance(text, str) or not _DATE.match(text):
        return False
    try:
        dt.date.fromisoformat(text)
    except ValueError:
        return False
    return True
