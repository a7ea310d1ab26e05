"""The case API (what a window's business or queue system calls) and the citizens' rating pages.

/api/v1/...   JSON, Bearer key with roles (gateway/access.py), versioned paths, OpenAPI at /api/v1/openapi.json;
              reads of rating data and administrative changes go to the append-only audit log
/r/{token}    the page a case's QR code opens: rate once, no login, no JavaScript; rate-limited per address
"""
from __future__ import annotations

import datetime as dt
import html
import json
import logging
import re
import secrets
import urllib.parse
from http.server import BaseHTTPRequestHandler
from urllib.parse import parse_qs

from gateway import access, brokerauth, cases, prompts, ratings, report
from gateway.httpservice import HttpService
from protocol import codec

log = logging.getLogger("gateway.api")
MAX_BODY = 16 * 1024
_CASE_REF = re.compile(r"^[A-Za-z0-9_-]{1,50}$")


class ApiError(Exception):
    """An HTTP error with a status and a message a caller can act on."""

    def __init__(self, status: int, message: str, field: str | None = None, retry_after: float = 0):
        super().__init__(message)
        self.status, self.message, self.field = status, message, field
        self.retry_after = retry_after


hash_key = access.hash_key
def mask_name(name: str) -> str:
    """张三 -> 张*, 李小华 -> 李*华: enough for the citizen to recognise the case, no more."""
    name = name.strip()
    if len(name) <= 2:
        return name[:1] + "*" if name else ""
    return name[0] + "*" * (len(name) - 2) + name[-1]


class Api(HttpService):
    def __init__(self, gateway):
        self.gateway = gateway
        config = gateway.config
        self.keys = [access.parse_entry(entry) for entry in config["api.keys"]]
        self.key_limit = access.RateLimiter(config["api.rate_per_minute"])
        self.page_limit = access.RateLimiter(config["api.page_rate_per_minute"])
        super().__init__("api", config["api.host"], config["api.port"], _Handler, api=self)

    # ---- the case API ----

    def authorise(self, header: str | None, roles: set) -> access.ApiKey:
        """The caller's key if it may make this call: 401 without a valid key, 403 without the role, 429 over
        its rate."""
        caller = access.find_key(self.keys, header[7:] if header and header.startswith("Bearer ") else None)
        if caller is None:
            raise ApiError(401, "a valid API key is required (Authorization: Bearer KEY)")
        if not caller.roles & roles:
            raise ApiError(403, f"key {caller.name} may not make this call (needs one of: {', '.join(sorted(roles))})")
        wait = self.key_limit.wait_s(caller.name)
        if wait:
            raise ApiError(429, f"key {caller.name} is over {self.gateway.config['api.rate_per_minute']} calls a "
                                f"minute", retry_after=wait)
        return caller

    def audit(self, caller: access.ApiKey, action: str, detail: str) -> None:
        """Append to the audit log: who read rating data or changed the hall's set-up, and when."""
        g = self.gateway
        g.writer.call(lambda conn: conn.execute("INSERT INTO audit (at, actor, action, detail) VALUES (?, ?, ?, ?)",
                                                (g.clock.now(), caller.name, action, detail[:500])))

    def ratings(self, query: dict) -> dict:
        """Ratings assessed between two China dates, as the export gives them (public_only honoured)."""
        try:
            start = dt.date.fromisoformat(query.get("from", [""])[0])
            end = dt.date.fromisoformat(query.get("to", [""])[0])
        except ValueError:
            raise ApiError(400, "from and to are dates: YYYY-MM-DD") from None
        public_only = query.get("public_only", ["0"])[0] in ("1", "true")
        return {"ratings": report.export_rows(self.gateway.reader, start, end, public_only)}

    def audit_log(self, query: dict) -> dict:
        since = query.get("since", ["0"])[0]
        if not since.isdigit():
            raise ApiError(400, "since is an audit entry id")
        rows = self.gateway.reader.execute("SELECT id, at, actor, action, detail FROM audit WHERE id > ? "
                                           "ORDER BY id LIMIT 1000", (int(since),)).fetchall()
        return {"audit": [dict(zip(("id", "at", "actor", "action", "detail"), row)) for row in rows]}

    def finish_case(self, body: dict) -> dict:
        g = self.gateway
        case = _case_from(body, g.clock.now())
        device = body.get("device") or self.device_of_window(case["window_no"])
        case["dev"] = device
        token = g.writer.call(lambda conn: cases.finish_case(conn, case, g.calendar,
                                                              g.config["cases.rating_window_days"], g.clock.now()),
                              needs_space=True)
        url = g.config["api.public_url"].rstrip("/") + "/r/" + token
        state = self.case_state(case["case_ref"])
        online = device is not None and self.device_online(device)
        prompted = False
        if device is not None and state["state"] == "open":
            text = (mask_name(body.get("applicant_name") or "") + "的 " if body.get("applicant_name") else "") \
                + case["task_name"]
            message = prompts.prompt(case["case_ref"], text[:64], url, g.config["cases.prompt_s"])
            g.ingest.send(codec.topic(g.config["gateway.hall"], device, "prompt"), codec.encode(message))
            prompted = online
        return {**state, "url": url, "device": device, "device_online": online, "prompted": prompted}

    def case_state(self, case_ref: str) -> dict:
        row = self.gateway.reader.execute(
            "SELECT c.case_ref, c.project_no, c.state, c.deadline, r.level, r.channel FROM cases c "
            "LEFT JOIN ratings r ON r.case_ref = c.case_ref WHERE c.case_ref = ?", (case_ref,)).fetchone()
        if row is None:
            raise ApiError(404, f"no case {case_ref}")
        keys = ("case_ref", "project_no", "state", "deadline", "level", "channel")
        return dict(zip(keys, row))

    def cancel_case(self, case_ref: str) -> dict:
        g = self.gateway
        state = self.case_state(case_ref)
        if not g.writer.call(lambda conn: cases.cancel_case(conn, case_ref)):
            raise ApiError(409, f"case {case_ref} is {state['state']}, not open")
        device = g.reader.execute("SELECT dev FROM cases WHERE case_ref = ?", (case_ref,)).fetchone()[0]
        if device:
            g.ingest.send(codec.topic(g.config["gateway.hall"], device, "cancel"),
                          codec.encode({"v": 1, "k": "cancel", "case": case_ref}))
        return self.case_state(case_ref)

    # ---- the device registry and its configuration ----

    def devices(self, dev: str | None = None) -> dict:
        cursor = self.gateway.reader.execute(
            "SELECT dev, hall, window_no, dept_code, dept_name, staff_no, state, fw, boot, uptime_s, heap, rssi, "
            "outbox, last_error, config_ver, config_sent, config, last_seen, revoked_at FROM devices "
            "WHERE ? IS NULL OR dev = ? ORDER BY dev", (dev, dev))
        columns = [d[0] for d in cursor.description]
        return {"devices": [dict(zip(columns, row)) for row in cursor.fetchall()]}

    def register(self, dev: str, body: dict) -> dict:
        if codec.DEVICE(dev):
            raise ApiError(400, "device id: 1-32 of A-Z a-z 0-9 _ -", "dev")
        fields = ("window_no", "dept_code", "dept_name", "staff_no")
        for name in fields:
            if body.get(name) is not None and not isinstance(body[name], str):
                raise ApiError(400, f"{name} must be text", name)
        if body.get("dept_code") and len(body["dept_code"]) != 18:
            raise ApiError(400, "dept_code: the 18-character unified social credit code", "dept_code")
        hall = self.gateway.config["gateway.hall"]
        values = [body.get(name) for name in fields]
        self.gateway.writer.call(lambda conn: conn.execute(
            "INSERT INTO devices (dev, hall, window_no, dept_code, dept_name, staff_no) VALUES (?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (dev) DO UPDATE SET window_no = coalesce(excluded.window_no, window_no), "
            "dept_code = coalesce(excluded.dept_code, dept_code), dept_name = coalesce(excluded.dept_name, "
            "dept_name), staff_no = coalesce(excluded.staff_no, staff_no)", (dev, hall, *values)))
        self.gateway.ingest.gate.admit(dev)  # its first status may be on the way already
        return self._device(dev)

    def issue_credentials(self, dev: str) -> dict:
        """A device's broker account and command key, shown this once (provisioning writes them to the device)."""
        g = self.gateway
        try:
            issued = g.writer.call(lambda conn: brokerauth.issue(conn, dev))
        except brokerauth.CredentialError as e:
            raise ApiError(404 if isinstance(e, brokerauth.UnknownDevice) else 409, str(e)) from None
        brokerauth.write_files(g.reader, g.config)
        g.ingest.gate.admit(dev, issued["command_key"])
        return issued

    def revoke(self, dev: str) -> dict:
        """Retire a device at once: its broker account goes, its messages are refused from now on."""
        g = self.gateway
        if not g.writer.call(lambda conn: brokerauth.revoke(conn, dev, g.clock.now())):
            raise ApiError(404, f"no device {dev}")
        brokerauth.write_files(g.reader, g.config)
        g.ingest.gate.refresh()
        return self._device(dev)

    def configure(self, dev: str, body: dict) -> dict:
        """Push a configuration (retained): the next version, with the window's standing QR filled in."""
        g = self.gateway
        registered = self._device(dev)
        previous = json.loads(registered["config"] or "{}")
        message = {**{k: v for k, v in previous.items() if k not in ("v", "k", "ver")}, **body,
                   "v": 1, "k": "config", "ver": (registered["config_sent"] or 0) + 1}
        if registered["window_no"] and "idle_qr" not in body:
            url = g.config["api.public_url"].rstrip("/") + "/w/" + registered["window_no"]
            message["idle_qr"] = prompts.qr_matrix(url)
        try:
            payload = codec.encode(message)
        except codec.ProtocolError as e:
            raise ApiError(400, f"config: {e}", e.field) from None
        if len(payload) + codec.SIGNED_OVERHEAD > codec.MAX_MESSAGE:  # it goes out signed (protocol/codec.py)
            raise ApiError(400, f"config: {len(payload)} bytes leave no room for the device's mac; shorten the texts")
        g.writer.call(lambda conn: conn.execute("UPDATE devices SET config = ?, config_sent = ? WHERE dev = ?",
                                                (payload.decode(), message["ver"], dev)))
        g.ingest.send(codec.topic(g.config["gateway.hall"], dev, "config"), payload, retain=True)
        return self._device(dev)

    def _device(self, dev: str) -> dict:
        found = self.devices(dev)["devices"]
        if not found:
            raise ApiError(404, f"no device {dev}")
        return found[0]

    def window_page(self, window_no: str) -> str:
        """Where a window's standing QR leads: its latest open case, or a rating of the window itself."""
        row = self.gateway.reader.execute(
            "SELECT t.token FROM cases c JOIN tokens t ON t.case_ref = c.case_ref WHERE c.window_no = ? "
            "AND c.state = 'open' ORDER BY c.finished_at DESC LIMIT 1", (window_no,)).fetchone()
        if row:
            return "/r/" + row[0]
        device = self.device_of_window(window_no)
        if device is None:
            raise ApiError(404, "没有这个窗口")
        return "/w/" + urllib.parse.quote(window_no) + "/rate"

    def rate_window(self, window_no: str, form: dict) -> str:
        choice = _choice(form)
        device = self.device_of_window(window_no)
        if device is None:
            raise ApiError(404, "没有这个窗口")
        g = self.gateway
        now = g.clock.now()
        rating = {"origin": device, "rid": secrets.token_hex(8), "channel": "qr", "boot": None, "seq": None,
                  "case_ref": None, "level": choice["level"], "public": int(choice["public"]),
                  "reasons": ",".join(choice["reasons"]) or None, "comment": choice["comment"] or None,
                  "device_time": None, "received_at": now, "assessed_at": now}
        return g.writer.call(lambda conn: ratings.store(conn, rating, g.calendar, g.config["cases.followup_days"]),
                             needs_space=True)

    def device_of_window(self, window_no: str) -> str | None:
        row = self.gateway.reader.execute("SELECT dev FROM devices WHERE window_no = ? AND revoked_at IS NULL "
                                          "ORDER BY last_seen DESC",
                                          (window_no,)).fetchone()
        return row[0] if row else None

    def device_online(self, device: str) -> bool:
        row = self.gateway.reader.execute("SELECT state FROM devices WHERE dev = ?", (device,)).fetchone()
        return bool(row and row[0] == "online")

    # ---- the citizen's page ----

    def rate(self, token: str, form: dict) -> str:
        choice = _choice(form)
        g = self.gateway
        outcome = g.writer.call(lambda conn: cases.rate_by_token(conn, token, choice, g.clock.now(),
                                                                  g.config["gateway.name"], g.calendar,
                                                                  g.config["cases.followup_days"]), needs_space=True)
        if outcome == ratings.STORED:  # rated by phone: the evaluator stops asking
            case_ref, device = g.reader.execute("SELECT c.case_ref, c.dev FROM tokens t JOIN cases c "
                                                "ON c.case_ref = t.case_ref WHERE t.token = ?", (token,)).fetchone()
            if device:
                g.ingest.send(codec.topic(g.config["gateway.hall"], device, "cancel"),
                              codec.encode({"v": 1, "k": "cancel", "case": case_ref}))
        return outcome

    def page_case(self, token: str) -> tuple | None:
        return self.gateway.reader.execute(
            "SELECT c.case_ref, c.task_name, c.state, c.deadline FROM tokens t JOIN cases c ON c.case_ref = t.case_ref "
            "WHERE t.token = ?", (token,)).fetchone()


def _choice(form: dict) -> dict:
    """What the citizen chose on the page."""
    level = (form.get("level") or [""])[0]
    if level not in codec.LEVELS:
        raise ApiError(400, "请选择满意程度")
    reasons = [r for r in form.get("reason", []) if r in codec.REASON_CODES][:3] if level in codec.BAD_LEVELS else []
    return {"level": level, "public": "private" not in form, "reasons": reasons,
            "comment": (form.get("comment") or [""])[0].strip()[:500]}


def _case_from(body: dict, now: float) -> dict:
    required = ("project_no", "task_code", "task_name", "dept_code", "staff_no", "window_no")
    for name in required:
        if not isinstance(body.get(name), str) or not body[name].strip():
            raise ApiError(400, f"{name} is required (text)", name)
    if not _CASE_REF.match(body["project_no"]):
        raise ApiError(400, "project_no: 1-50 of A-Z a-z 0-9 _ -", "project_no")
    if len(body["dept_code"]) != 18:
        raise ApiError(400, "dept_code: the 18-character unified social credit code", "dept_code")
    if body.get("user_prop") not in (None, 1, 2):
        raise ApiError(400, "user_prop: 1 natural person, 2 legal person", "user_prop")
    finished_at = body.get("finished_at", now)
    if not isinstance(finished_at, (int, float)) or finished_at > now + 300:
        raise ApiError(400, "finished_at: Unix seconds, not in the future", "finished_at")
    return {"case_ref": body["project_no"], "project_no": body["project_no"], "task_code": body["task_code"][:64],
            "task_name": body["task_name"][:200], "dept_code": body["dept_code"],
            "dept_name": (body.get("dept_name") or None), "staff_no": body["staff_no"][:30],
            "window_no": body["window_no"][:30], "user_prop": body.get("user_prop"), "finished_at": float(finished_at)}


# (method, path under /api/v1 with * for one part, roles that may call it, audit action or None)
ROUTES = [
    ("GET", "openapi.json", set(access.ROLES), None),
    ("POST", "cases", {"window"}, None),
    ("GET", "cases/*", {"window", "manager", "auditor"}, "read_case"),
    ("POST", "cases/*/cancel", {"window"}, None),
    ("GET", "devices", {"technician", "manager", "auditor"}, None),
    ("PUT", "devices/*", {"technician"}, "register_device"),
    ("PUT", "devices/*/config", {"technician"}, "configure_device"),
    ("POST", "devices/*/credentials", {"technician"}, "issue_credentials"),
    ("POST", "devices/*/revoke", {"technician"}, "revoke_device"),
    ("GET", "ratings", {"manager", "auditor"}, "read_ratings"),
    ("GET", "audit", {"auditor"}, "read_audit"),
]


def _match(method: str, parts: list[str]) -> tuple[tuple, list[str]]:
    """The route for a path (below /api/v1) and the path parts its stars stand for; 404 or 405 if none."""
    allowed = False
    for route in ROUTES:
        pattern = route[1].split("/")
        if len(pattern) == len(parts) and all(p in ("*", part) for p, part in zip(pattern, parts)):
            if route[0] == method:
                return route, [part for p, part in zip(pattern, parts) if p == "*"]
            allowed = True
    raise ApiError(405 if allowed else 404, "method not allowed here" if allowed else "no such path")


OPENAPI = {
    "openapi": "3.0.3",
    "info": {"title": "hcp-gateway case API", "version": "1"},
    "components": {"securitySchemes": {"key": {"type": "http", "scheme": "bearer"}}},
    "security": [{"key": []}],
    "paths": {
        "/api/v1/cases": {"post": {
            "summary": "Report a case finished (办结) at a window: records it and prompts that window's evaluator",
            "requestBody": {"required": True, "content": {"application/json": {"schema": {
                "type": "object",
                "required": ["project_no", "task_code", "task_name", "dept_code", "staff_no", "window_no"],
                "properties": {"project_no": {"type": "string", "maxLength": 50, "description": "办件编号"},
                               "task_code": {"type": "string"}, "task_name": {"type": "string"},
                               "dept_code": {"type": "string", "minLength": 18, "maxLength": 18},
                               "dept_name": {"type": "string"}, "staff_no": {"type": "string"},
                               "window_no": {"type": "string"}, "device": {"type": "string"},
                               "user_prop": {"type": "integer", "enum": [1, 2]},
                               "applicant_name": {"type": "string", "description": "shown masked on the "
                                                  "evaluator (张*丰), never stored, never logged"},
                               "applicant_cert_no": {"type": "string", "description": "certificate number: "
                                                     "accepted and dropped; never stored, logged or shown"},
                               "finished_at": {"type": "number", "description": "Unix seconds; default now"}}}}}},
            "responses": {"200": {"description": "the case, its rating URL, whether the evaluator was prompted"},
                          "400": {"description": "bad input"}, "401": {"description": "no valid key"}}}},
        "/api/v1/cases/{case_ref}": {"get": {
            "summary": "A case's state: open, rated, defaulted, cancelled",
            "parameters": [{"name": "case_ref", "in": "path", "required": True, "schema": {"type": "string"}}],
            "responses": {"200": {"description": "the case"}, "404": {"description": "no such case"}}}},
        "/api/v1/devices": {"get": {"summary": "The device registry with each device's last status",
                                    "responses": {"200": {"description": "the devices"}}}},
        "/api/v1/devices/{dev}": {"put": {
            "summary": "Register a device or change its window, department or staff on duty",
            "parameters": [{"name": "dev", "in": "path", "required": True, "schema": {"type": "string"}}],
            "requestBody": {"content": {"application/json": {"schema": {"type": "object", "properties": {
                "window_no": {"type": "string"}, "dept_code": {"type": "string"}, "dept_name": {"type": "string"},
                "staff_no": {"type": "string"}}}}}},
            "responses": {"200": {"description": "the device"}, "400": {"description": "bad input"}}}},
        "/api/v1/devices/{dev}/config": {"put": {
            "summary": "Push a configuration (protocol kind config: staff, texts, timeouts, press policy, "
                       "reasons); the device reports the version it applied as config_ver",
            "parameters": [{"name": "dev", "in": "path", "required": True, "schema": {"type": "string"}}],
            "responses": {"200": {"description": "the device, config_sent is the new version"},
                          "400": {"description": "not a valid config"}, "404": {"description": "no such device"}}}},
        "/api/v1/devices/{dev}/credentials": {"post": {
            "summary": "Issue the device's broker account and command key (replacing any before); shown once",
            "parameters": [{"name": "dev", "in": "path", "required": True, "schema": {"type": "string"}}],
            "responses": {"200": {"description": "mqtt_user, mqtt_password, command_key"},
                          "404": {"description": "no such device"}, "409": {"description": "revoked"}}}},
        "/api/v1/devices/{dev}/revoke": {"post": {
            "summary": "Retire a device (stolen, broken): broker account removed, its messages refused",
            "parameters": [{"name": "dev", "in": "path", "required": True, "schema": {"type": "string"}}],
            "responses": {"200": {"description": "the device"}, "404": {"description": "no such device"}}}},
        "/api/v1/cases/{case_ref}/cancel": {"post": {
            "summary": "Cancel an open case and withdraw its prompt",
            "parameters": [{"name": "case_ref", "in": "path", "required": True, "schema": {"type": "string"}}],
            "responses": {"200": {"description": "the case"}, "409": {"description": "not open"}}}},
    },
}

PAGE_STYLE = """body{font-family:sans-serif;margin:0;padding:16px;max-width:480px;background:#f4f6fa;color:#222}
h1{font-size:20px;color:#1f5fbf}label{display:block;margin:8px 0;padding:12px;border-radius:8px;background:#fff;
font-size:18px}button{width:100%;padding:14px;font-size:18px;background:#1f5fbf;color:#fff;border:0;
border-radius:8px}textarea{width:100%;box-sizing:border-box;height:80px}.small{font-size:14px;color:#666}"""


def _page(title: str, body: str) -> str:
    return (f"<!doctype html><html lang='zh-CN'><head><meta charset='utf-8'><meta name='viewport' "
            f"content='width=device-width,initial-scale=1'><title>{html.escape(title)}</title>"
            f"<style>{PAGE_STYLE}</style></head><body><h1>{html.escape(title)}</h1>{body}</body></html>")


def rating_form(task_name: str) -> str:
    levels = "".join(f"<label><input type='radio' name='level' value='{name}' required> {label}</label>"
                     for name, label in zip(codec.LEVELS, codec.LEVEL_LABELS))
    reasons = "".join(f"<label class='small'><input type='checkbox' name='reason' value='{code}'> {label}</label>"
                      for code, label in codec.REASONS)
    return _page("请对本次服务进行评价", (
        f"<p>{html.escape(task_name)}</p><form method='post'>{levels}"
        f"<p class='small'>不满意时请选择原因(可多选):</p>{reasons}"
        "<p><textarea name='comment' maxlength='500' placeholder='您的意见(选填)'></textarea></p>"
        "<label class='small'><input type='checkbox' name='private'> 不公开我的评价</label>"
        "<button type='submit'>提交评价</button></form>"))


RESULT_PAGES = {
    ratings.STORED: ("感谢您的评价", "您的评价已提交。"),
    ratings.ALREADY_RATED: ("该办件已评价", "每个办件只能评价一次(一次一评),此次评价未计入。"),
    ratings.DUPLICATE: ("该办件已评价", "每个办件只能评价一次(一次一评),此次评价未计入。"),
    cases.EXPIRED: ("评价期限已过", "该办件的评价期限已过或已撤销。"),
    cases.UNKNOWN: ("链接无效", "未找到该评价链接,请扫描窗口评价器上的二维码。"),
}


class _Handler(BaseHTTPRequestHandler):
    api: Api = None  # type: ignore[assignment]
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    def do_GET(self):  # noqa: N802 - the http.server API
        self._route("GET")

    def do_POST(self):  # noqa: N802
        self._route("POST")

    def do_PUT(self):  # noqa: N802
        self._route("PUT")

    def _route(self, method: str) -> None:
        try:
            path, _, query = self.path.partition("?")
            if path.startswith("/api/"):
                self._api(method, path, query)
                return
            wait = self.api.page_limit.wait_s(self.client_address[0])
            if wait:
                raise ApiError(429, "请求过于频繁,请稍后再试", retry_after=wait)
            if path.startswith("/w/"):
                self._window(method, urllib.parse.unquote(path[3:]))
            elif path.startswith("/r/") and method == "GET":
                self._citizen_page(path[3:])
            elif path.startswith("/r/") and method == "POST":
                outcome = self.api.rate(path[3:], parse_qs(self._body().decode(errors="replace")))
                self._result(200 if outcome == ratings.STORED else 409, outcome)
            else:
                raise ApiError(404, "no such path")
        except ApiError as e:
            headers = {"Retry-After": str(max(1, round(e.retry_after)))} if e.retry_after else {}
            if self.path.startswith(("/r/", "/w/")):
                self._html(e.status, _page("提交未成功", f"<p>{html.escape(e.message)}</p>"), headers)
            else:
                self._json(e.status, {"error": e.message, "field": e.field}, headers)
        except Exception:  # noqa: BLE001 - a client gets a 500, the log gets the details
            log.exception("request %s %s failed", method, self.path.split("?")[0][:80])
            self._json(500, {"error": "internal error"})

    def _api(self, method: str, path: str, query: str) -> None:
        parts = path.strip("/").split("/")
        if parts[:2] != ["api", "v1"]:
            raise ApiError(404, "unknown API version; this gateway speaks /api/v1")
        route, args = _match(method, parts[2:])
        caller = self.api.authorise(self.headers.get("Authorization"), route[2])
        api, params = self.api, parse_qs(query)
        calls = {
            "openapi.json": lambda: OPENAPI,
            "cases": lambda: api.finish_case(self._json_body()),
            "cases/*": lambda: api.case_state(*args),
            "cases/*/cancel": lambda: api.cancel_case(*args),
            "devices": lambda: api.devices(),
            "devices/*": lambda: api.register(*args, self._json_body()),
            "devices/*/config": lambda: api.configure(*args, self._json_body()),
            "devices/*/credentials": lambda: api.issue_credentials(*args),
            "devices/*/revoke": lambda: api.revoke(*args),
            "ratings": lambda: api.ratings(params),
            "audit": lambda: api.audit_log(params),
        }
        answer = calls[route[1]]()
        if route[3]:
            api.audit(caller, route[3], f"{method} {path}" + (f"?{query}" if query else ""))
        self._json(200, answer)

    def _window(self, method: str, rest: str) -> None:
        window_no, _, action = rest.partition("/")
        if method == "GET" and not action:
            location = self.api.window_page(window_no)
            self.send_response(303)
            self.send_header("Location", location)
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif method == "GET" and action == "rate":
            if self.api.device_of_window(window_no) is None:
                raise ApiError(404, "没有这个窗口")
            self._html(200, rating_form(f"窗口 {window_no}"))
        elif method == "POST" and action == "rate":
            self._result(200, self.api.rate_window(window_no, parse_qs(self._body().decode(errors="replace"))))
        else:
            raise ApiError(404, "no such path")

    def _citizen_page(self, token: str) -> None:
        row = self.api.page_case(token)
        if row is None:
            return self._result(404, cases.UNKNOWN)
        _, task_name, state, deadline = row
        if state in ("rated", "defaulted"):
            return self._result(200, ratings.ALREADY_RATED)
        if state == "cancelled" or (deadline is not None and self.api.gateway.clock.now() >= deadline):
            return self._result(200, cases.EXPIRED)
        self._html(200, rating_form(task_name))

    def _result(self, status: int, outcome: str) -> None:
        title, text = RESULT_PAGES[outcome]
        self._html(status, _page(title, f"<p>{text}</p>"))

    def _body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY:
            raise ApiError(413, "request body too large")
        return self.rfile.read(length)

    def _json_body(self) -> dict:
        try:
            body = json.loads(self._body())
        except ValueError:
            raise ApiError(400, "the body must be JSON") from None
        if not isinstance(body, dict):
            raise ApiError(400, "the body must be a JSON object")
        return body

    def _json(self, status: int, body: dict, headers: dict | None = None) -> None:
        self._send(status, "application/json; charset=utf-8", json.dumps(body, ensure_ascii=False).encode(), headers)

    def _html(self, status: int, page: str, headers: dict | None = None) -> None:
        self._send(status, "text/html; charset=utf-8", page.encode(), headers)

    def _send(self, status: int, content_type: str, data: bytes, headers: dict | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-store")
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format, *args):  # noqa: A002 - request lines carry tokens; keep them out of logs
        pass
