"""The citizens' pages: no login, no JavaScript, rendered from gateway/templates (a province may restyle them).

/r/{token}   a case's one-time rating page, which its QR code opens: the only way to rate a case off the device
/w/{window}  the window's standing QR: rates the window itself, never a case (whoever scans it may not be the
             citizen just served). One rating per phone (a cookie) per window per China day, and at most
             `api.window_ratings_per_hour` per window; beyond that a page says so and nothing is stored.
"""
from __future__ import annotations

import hashlib
import secrets
from pathlib import Path

import jinja2

from gateway import cases, ratings
from gateway.errors import InvalidInput, NotFound
from gateway.httpservice import Request, Response
from gateway.workdays import china_day
from protocol import codec

PHONE_COOKIE = "hcp_phone"
PHONE_COOKIE_MAX_AGE = 400 * 86400
TEMPLATES = jinja2.Environment(loader=jinja2.FileSystemLoader(Path(__file__).parent / "templates"),
                               autoescape=True, trim_blocks=True, lstrip_blocks=True)

RESULTS = {  # outcome -> (status, title, text)
    ratings.STORED: (200, "感谢您的评价", "您的评价已提交。"),
    ratings.ALREADY_RATED: (409, "该办件已评价", "每个办件只能评价一次(一次一评),此次评价未计入。"),
    ratings.PHONE_LIMIT: (429, "今天已评价过该窗口", "每部手机每天可对同一窗口评价一次,此次评价未计入。"),
    ratings.WINDOW_LIMIT: (429, "评价过于频繁", "该窗口本小时收到的评价已达上限,请稍后再试。此次评价未计入。"),
    cases.EXPIRED: (409, "评价期限已过", "该办件的评价期限已过或已撤销。"),
    cases.UNKNOWN: (404, "链接无效", "未找到该评价链接,请扫描窗口评价器上的二维码。"),
}


def message(status: int, title: str, text: str, headers: list | None = None) -> Response:
    return Response.html(status, TEMPLATES.get_template("base.html").render(title=title, text=text), headers)


def result(outcome: str, status: int | None = None) -> Response:
    default_status, title, text = RESULTS[outcome]
    return message(status or default_status, title, text)


def rating_form(subject: str, headers: list | None = None, measures: str | None = None) -> Response:
    """The rating form; with `measures`, the 追评 form after a 差评 was rectified."""
    page = TEMPLATES.get_template("rate.html").render(
        title="请对整改结果进行追评" if measures else "请对本次服务进行评价", subject=subject, measures=measures,
        levels=list(zip(codec.LEVELS, codec.LEVEL_LABELS)), reasons=codec.REASONS)
    return Response.html(200, page, headers)


def choice_from(form: dict) -> dict:
    """What the citizen chose on the page."""
    level = (form.get("level") or [""])[0]
    if level not in codec.LEVELS:
        raise InvalidInput("请选择满意程度", "level")
    reasons = [r for r in form.get("reason", []) if r in codec.REASON_CODES][:3] if level in codec.BAD_LEVELS else []
    return {"level": level, "public": "private" not in form, "reasons": reasons,
            "comment": (form.get("comment") or [""])[0].strip()[:500]}


class Pages:
    def __init__(self, config: dict, writer, reader, registry, downlink, clock, calendar):
        self.config, self.writer, self.reader = config, writer, reader
        self.registry, self.downlink, self.clock, self.calendar = registry, downlink, clock, calendar

    # ---- a case's own page ----

    def case_page(self, request: Request, token: str) -> Response:
        row = self.reader.execute("SELECT c.case_ref, c.task_name, c.state, c.deadline, c.finished_at FROM tokens t "
                                  "JOIN cases c ON c.case_ref = t.case_ref WHERE t.token = ?", (token,)).fetchone()
        if row is None:
            return result(cases.UNKNOWN)
        if row["state"] in ("rated", "defaulted"):
            measures = cases.second_rating_offer(self.reader, row["case_ref"], row["finished_at"], self.clock.now(),
                                                 self.calendar, self.config["cases.rating_window_days"])
            if measures is not None:  # rectified: the citizen sees what was done and may rate once more
                return rating_form(row["task_name"], measures=measures)
            return result(ratings.ALREADY_RATED, 200)
        if row["state"] == "cancelled" or (row["deadline"] is not None and self.clock.now() >= row["deadline"]):
            return result(cases.EXPIRED, 200)
        return rating_form(row["task_name"])

    def rate_case(self, request: Request, token: str) -> Response:
        choice = choice_from(request.form())
        c = self.config
        outcome = self.writer.call(lambda conn: cases.rate_by_token(conn, token, choice, self.clock.now(),
                                                                    c["gateway.name"], self.calendar,
                                                                    c["cases.followup_days"],
                                                                    c["cases.rating_window_days"]), needs_space=True)
        if outcome == ratings.STORED:  # rated by phone: the evaluator stops asking
            row = self.reader.execute("SELECT c.case_ref, c.dev FROM tokens t JOIN cases c ON c.case_ref = t.case_ref "
                                      "WHERE t.token = ?", (token,)).fetchone()
            if row["dev"]:
                self.downlink.cancel(row["dev"], row["case_ref"])
        return result(outcome)

    # ---- the window's standing QR ----

    def window_page(self, request: Request, window_no: str) -> Response:
        self._device_of(window_no)
        headers = []
        if not request.cookie(PHONE_COOKIE):
            secure = "; Secure" if self.config["api.public_url"].startswith("https:") else ""
            cookie = (f"{PHONE_COOKIE}={secrets.token_urlsafe(16)}; Max-Age={PHONE_COOKIE_MAX_AGE}; Path=/w/; "
                      f"HttpOnly; SameSite=Lax{secure}")
            headers.append(("Set-Cookie", cookie))
        return rating_form(f"窗口 {window_no}", headers)

    def rate_window(self, request: Request, window_no: str) -> Response:
        device = self._device_of(window_no)
        phone = request.cookie(PHONE_COOKIE)
        if not phone:
            return message(400, "无法提交评价", "请允许浏览器保存 Cookie,再扫描窗口的二维码评价。此次评价未计入。")
        choice = choice_from(request.form())
        now = self.clock.now()
        rating = ratings.from_page(device, None, choice, now)
        phone_hash = hashlib.sha256(phone.encode()).hexdigest()[:32]  # the cookie itself is never stored
        day = china_day(now).isoformat()
        c = self.config
        outcome = self.writer.call(lambda conn: ratings.store_window_rating(
            conn, rating, window_no, phone_hash, day, c["api.window_ratings_per_hour"], self.calendar,
            c["cases.followup_days"]), needs_space=True)
        return result(outcome)

    def _device_of(self, window_no: str) -> str:
        device = self.registry.device_of_window(window_no)
        if device is None:
            raise NotFound("没有这个窗口")
        return device
