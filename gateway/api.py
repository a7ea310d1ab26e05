"""The gateway's HTTP front: the case API (what a window's business or queue system and the hall's staff call)
and the citizens' rating pages, dispatched from one route table.

/api/v1/...   JSON, Bearer key with roles (gateway/access.py); the OpenAPI document at /api/v1/openapi.json is
              generated from the table; reads of rating data and administrative changes go to the audit log
/r/, /w/      the citizens' pages (gateway/pages.py): no key, rate-limited per address

The table says, for each route, who may call it and what the audit log calls it; the work is done by
gateway.cases, gateway.registry, gateway.pages and gateway.report. Their domain errors (gateway.errors) become
HTTP statuses here.
"""
from __future__ import annotations

import datetime as dt
import json
import re
from dataclasses import dataclass, field
from typing import Callable

from gateway import access, audit, openapi, pages, report, workorders
from gateway.db import StorageError
from gateway.errors import GatewayError, InvalidInput, NotFound
from gateway.httpservice import HttpService, Request, Response, wsgi
from gateway.store import StorageFull

ALL_ROLES = frozenset(access.ROLES)
RATINGS_RANGE_DAYS = 366  # one read of rating data: at most a year, so one call cannot hold the reader for long
READERS = frozenset({"manager", "auditor"})


class Refused(GatewayError):
    """Refused at the door: no key (401), the wrong role (403), too many calls (429), wrong method (405)."""

    def __init__(self, status: int, message: str, retry_after: float = 0):
        super().__init__(message)
        self.status, self.retry_after = status, retry_after


@dataclass(frozen=True)
class Route:
    method: str
    path: str  # with {parameters}
    handler: Callable  # (api, request) -> dict (JSON answer) or Response
    roles: frozenset | None  # who may call it; None: a citizen's page, no key
    summary: str = ""
    audit: str | None = None  # the audit log's name for the call; None: not audited
    body: dict | None = None  # JSON schema of the request body
    query: tuple = ()  # (name, schema, required, description)
    answer: str = "OK"
    errors: dict = field(default_factory=dict)  # status -> when
    pattern: re.Pattern = field(init=False, compare=False)

    def __post_init__(self):
        regex = re.sub(r"{(\w+)}", r"(?P<\1>[^/]+)", self.path)
        object.__setattr__(self, "pattern", re.compile(regex))


ROUTES: list[Route] = []


def route(method: str, path: str, roles=None, summary: str = "", **details):
    def register(handler):
        ROUTES.append(Route(method, path, handler, frozenset(roles) if roles is not None else None, summary,
                            **details))
        return handler
    return register


def _json_body(request: Request) -> dict:
    try:
        body = json.loads(request.body or b"null")
    except ValueError:
        raise InvalidInput("the body must be JSON") from None
    if not isinstance(body, dict):
        raise InvalidInput("the body must be a JSON object")
    return body


def _date(request: Request, name: str) -> dt.date:
    try:
        return dt.date.fromisoformat(request.param(name))
    except ValueError:
        raise InvalidInput(f"{name} is a date: YYYY-MM-DD", name) from None


# ---- the case API ----

@route("GET", "/api/v1/openapi.json", ALL_ROLES, "This document")
def _openapi(api, request):
    return openapi.document(ROUTES)


@route("POST", "/api/v1/cases", {"window"}, "Report a case finished (办结) at a window: records it and prompts "
       "that window's evaluator", body=openapi.CASE, answer="the case (its state), its rating URL, whether the "
       "evaluator was prompted", errors={"400": "bad input"})
def _report_case(api, request):
    return api.cases.report(_json_body(request), request.caller.roles)


@route("GET", "/api/v1/cases/{case_ref}", {"window", "manager", "auditor"}, "A case: open, rated, defaulted or "
       "cancelled. Window keys see the state only; managers and auditors the rating; managers its comment",
       audit="read_case", errors={"404": "no such case"})
def _read_case(api, request):
    return api.cases.view(request.args["case_ref"], request.caller.roles)


@route("POST", "/api/v1/cases/{case_ref}/cancel", {"window"}, "Cancel an open case and withdraw its prompt",
       audit="cancel_case", errors={"404": "no such case", "409": "not open"})
def _cancel_case(api, request):
    return api.cases.cancel(request.args["case_ref"], request.caller.roles)


@route("GET", "/api/v1/devices", {"technician", "manager", "auditor"}, "The device registry with each device's "
       "last status")
def _devices(api, request):
    return {"devices": api.registry.devices()}


@route("GET", "/api/v1/devices/{dev}", {"technician", "manager", "auditor"}, "One device and its last status",
       errors={"404": "no such device"})
def _device(api, request):
    return api.registry.device(request.args["dev"])


@route("PUT", "/api/v1/devices/{dev}", {"technician"}, "Register a device or change its window, department or "
       "staff on duty", audit="register_device", body=openapi.DEVICE, errors={"400": "bad input"})
def _register(api, request):
    return api.registry.register(request.args["dev"], _json_body(request))


@route("PUT", "/api/v1/devices/{dev}/config", {"technician"}, "Push a configuration (retained); the device "
       "reports the version it applied as config_ver", audit="configure_device", body=openapi.CONFIG,
       answer="the device; config_sent is the new version", errors={"400": "not a valid config",
                                                                   "404": "no such device"})
def _configure(api, request):
    return api.registry.configure(request.args["dev"], _json_body(request))


@route("POST", "/api/v1/devices/{dev}/credentials", {"technician"}, "Issue the device's broker account and "
       "command key (replacing any before); shown once", audit="issue_credentials",
       answer="mqtt_user, mqtt_password, command_key", errors={"404": "no such device", "409": "revoked"})
def _credentials(api, request):
    return api.registry.issue_credentials(request.args["dev"])


@route("POST", "/api/v1/devices/{dev}/revoke", {"technician"}, "Retire a device (stolen, broken): broker account "
       "removed, its messages refused", audit="revoke_device", errors={"404": "no such device"})
def _revoke(api, request):
    return api.registry.revoke(request.args["dev"])


@route("GET", "/api/v1/ratings", READERS, "Ratings assessed between two China dates, without comments or names",
       audit="read_ratings", query=(("from", {"type": "string", "format": "date"}, True, "first day"),
                                    ("to", {"type": "string", "format": "date"}, True, "last day, included"),
                                    ("public_only", {"type": "string", "enum": ["0", "1"]}, False,
                                     "1: only ratings the citizen allowed to publish")),
       errors={"400": "bad dates"})
def _ratings(api, request):
    start, end = _date(request, "from"), _date(request, "to")
    if not 0 <= (end - start).days < RATINGS_RANGE_DAYS:
        raise InvalidInput(f"from..to: at most {RATINGS_RANGE_DAYS} days, from not after to", "to")
    public_only = request.param("public_only", "0") in ("1", "true")
    return {"ratings": report.export_rows(api.reader, start, end, public_only)}


@route("GET", "/api/v1/audit", {"auditor"}, "The audit log after an entry id, oldest first, 1000 at most",
       audit="read_audit", query=(("since", {"type": "integer"}, False, "the last entry id already read"),),
       errors={"400": "since is not an id"})
def _audit(api, request):
    since = request.param("since", "0")
    if not since.isdigit():
        raise InvalidInput("since is an audit entry id", "since")
    return {"audit": audit.entries(api.reader, int(since))}


# ---- the citizens' pages ----

@route("GET", "/api/v1/workorders", READERS, "差评 work orders, newest first", audit="read_workorders",
       query=(("state", {"type": "string", "enum": ["open", "closed"]}, False, "open or closed"),
              ("dept", {"type": "string"}, False, "a department's unified social credit code"),
              ("overdue", {"type": "string", "enum": ["0", "1"]}, False, "1: open past their 整改 deadline")))
def _workorders(api, request):
    overdue = api.clock.now() if request.param("overdue") == "1" else None
    return {"workorders": workorders.orders(api.reader, request.param("state") or None,
                                            request.param("dept") or None, overdue)}


@route("GET", "/api/v1/workorders/{rating_id}", READERS, "One work order with its steps and the steps that may "
       "come next", audit="read_workorder", errors={"404": "no such work order"})
def _workorder(api, request):
    return workorders.order(api.reader, _rating_id(request))


@route("POST", "/api/v1/workorders/{rating_id}/steps", {"manager"}, "Take the next step of a work order (回访, "
       "申诉, 复核, 整改, 延期, 整改完成); audited, and sent to the province in order", body=openapi.STEP,
       errors={"400": "a missing or bad field", "404": "no such work order", "409": "the step may not come now"})
def _take_step(api, request):
    body, rating_id, now = _json_body(request), _rating_id(request), api.clock.now()
    handler, actor = body.get("handler") or request.caller.name[:30], request.caller.name
    api.writer.call(lambda conn: workorders.take_step(conn, rating_id, body.get("step"), handler, body, now, actor))
    return workorders.order(api.reader, rating_id)


def _rating_id(request: Request) -> int:
    if not (request.args["rating_id"].isascii() and request.args["rating_id"].isdigit()):
        raise NotFound("a work order is named by its 差评's rating id")
    return int(request.args["rating_id"])


def _page(action: str) -> Callable:
    return lambda api, request: getattr(api.pages, action)(request, **request.args)


for _method, _path, _action in (("GET", "/r/{token}", "case_page"), ("POST", "/r/{token}", "rate_case"),
                                ("GET", "/w/{window_no}", "window_page"), ("POST", "/w/{window_no}", "rate_window")):
    route(_method, _path)(_page(_action))


def _refusal(e: GatewayError, citizen: bool) -> Response:
    """A domain error as the caller reads it: a page for a citizen, JSON for a system."""
    wait = getattr(e, "retry_after", 0)
    headers = [("Retry-After", str(max(1, round(wait))))] if wait else []
    if citizen:
        return pages.message(e.status, "提交未成功", e.message, headers)
    return Response.json(e.status, {"error": e.message, "field": e.field}, headers)


class Api(HttpService):
    def __init__(self, gateway):
        config = gateway.config
        self.config, self.clock, self.reader, self.writer = config, gateway.clock, gateway.reader, gateway.writer
        self.cases, self.registry, self.pages = gateway.cases, gateway.registry, gateway.pages
        self.keys = [access.parse_entry(entry) for entry in config["api.keys"]]
        self.key_limit = access.RateLimiter(config["api.rate_per_minute"])
        self.page_limit = access.RateLimiter(config["api.page_rate_per_minute"])
        super().__init__("api", config["api.host"], config["api.port"], wsgi(self.handle), config)

    def handle(self, request: Request) -> Response:
        citizen = not request.path.startswith("/api/")
        try:
            found = self._match(request)
            if found.roles is None:
                self._within_page_rate(request)
            else:
                request.caller = self._authorise(request.headers.get("authorization"), found.roles)
            answer = found.handler(self, request)
            if found.audit:
                self._audit(request, found.audit)
            return answer if isinstance(answer, Response) else Response.json(200, answer)
        except StorageError as e:  # full, or the disk failed: nothing was stored; come back later
            wait = 60 if isinstance(e, StorageFull) else 5
            return _refusal(Refused(503, "暂时无法保存,请稍后再试" if citizen else f"storage unavailable: {e}", wait),
                            citizen)
        except GatewayError as e:
            return _refusal(e, citizen)

    def _match(self, request: Request) -> Route:
        """The route for the request, its path parameters in request.args; NotFound, or 405 for a wrong method."""
        allowed = []
        for candidate in ROUTES:
            matched = candidate.pattern.fullmatch(request.path)
            if matched:
                if candidate.method == request.method:
                    request.args = matched.groupdict()
                    return candidate
                allowed.append(candidate.method)
        if allowed:
            raise Refused(405, f"method not allowed here (allowed: {', '.join(allowed)})")
        raise NotFound("no such path" if request.path.startswith("/api/v1/") or not request.path.startswith("/api/")
                       else "unknown API version; this gateway speaks /api/v1")

    def _authorise(self, header: str | None, roles: frozenset) -> access.ApiKey:
        """The caller's key if it may make this call: 401 without a valid key, 403 without the role, 429 over
        its rate."""
        caller = access.find_key(self.keys, header[7:] if header and header.startswith("Bearer ") else None)
        if caller is None:
            raise Refused(401, "a valid API key is required (Authorization: Bearer KEY)")
        if not caller.roles & roles:
            raise Refused(403, f"key {caller.name} may not make this call (needs one of: {', '.join(sorted(roles))})")
        wait = self.key_limit.wait_s(caller.name)
        if wait:
            raise Refused(429, f"key {caller.name} is over {self.config['api.rate_per_minute']} calls a minute", wait)
        return caller

    def _within_page_rate(self, request: Request) -> None:
        wait = self.page_limit.wait_s(request.client)
        if wait:
            raise Refused(429, "请求过于频繁,请稍后再试", wait)

    def _audit(self, request: Request, action: str) -> None:
        query = "&".join(f"{k}={v}" for k, values in request.query.items() for v in values)
        detail = f"{request.method} {request.path}" + (f"?{query}" if query else "")
        if request.method == "PUT":  # what was changed: registry fields or a configuration, never personal data
            detail += " " + request.body.decode(errors="replace")
        now, actor = self.clock.now(), request.caller.name
        self.writer.call(lambda conn: audit.append(conn, now, actor, action, detail))
