"""Rating windows in Chinese working days, default ratings, follow-ups of 差评 and the duty manager's webhook."""
from __future__ import annotations

import datetime as dt
import json
import queue
import sqlite3
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from gateway import cases
from gateway.cases import mask_name
from gateway.clock import ManualClock
from gateway.workdays import CHINA, CalendarMissing, WorkCalendar
from simulator.province import Province
from tests.conftest import APPLICANT_CERT, APPLICANT_NAME
from tests.helpers import APP_KEY, APP_SECRET, DEPT, register_device, wait_until


def china(*args) -> float:
    return dt.datetime(*args, tzinfo=CHINA).timestamp()


def case(ref: str, finished_at: float, dev: str = "W01") -> dict:
    return {"case_ref": ref, "project_no": f"361102{ref}", "task_code": "361100-000-XK-001", "task_name": "不动产登记",
            "dept_code": DEPT, "staff_no": "N0321", "window_no": "A01", "dev": dev, "user_prop": 1,
            "finished_at": finished_at}


@pytest.mark.parametrize("finished,last_day", [
    ((2026, 9, 24, 10), (2026, 10, 9)),    # Thu; Mid-Autumn 9-25 and National Day 10-1..7 are holidays
    ((2026, 10, 7, 16), (2026, 10, 13)),   # finished on a holiday; Sat 10-10 is a make-up workday
    ((2026, 11, 27, 9), (2026, 12, 4)),    # an ordinary Friday: the window spans a weekend
])
def test_rating_window_counts_chinese_working_days(finished, last_day):
    deadline = WorkCalendar().deadline(china(*finished), 5)
    assert deadline == china(*last_day) + 86400


def test_a_year_the_calendar_lacks_is_a_clear_error_until_declared():
    with pytest.raises(CalendarMissing, match="no holiday data for 2027.*calendar.extra_years"):
        WorkCalendar().deadline(china(2026, 12, 28, 10), 5)
    declared = WorkCalendar(extra_years=[2027], holidays=["2027-01-01"])
    assert declared.deadline(china(2026, 12, 28, 10), 5) == china(2027, 1, 5) + 86400  # 29,30,31, 4, 5


@pytest.fixture
def manual_province(tmp_path):
    clock = ManualClock(china(2026, 9, 24, 10))
    province = Province(tmp_path / "province.db", APP_KEY, APP_SECRET, clock=clock.now).start()
    yield clock, province
    province.stop()


def test_unrated_case_gets_its_default_rating_on_the_right_working_day(gateway_factory, manual_province, wire_device):
    clock, province = manual_province
    gateway = gateway_factory(province.url, clock=clock)
    calendar, window = gateway.calendar, gateway.config["cases.rating_window_days"]
    for finished in (case("C1", china(2026, 9, 24, 10)), case("C2", china(2026, 9, 24, 11))):
        assert gateway.writer.call(lambda conn, c=finished: cases.record_case(conn, c, calendar, window))
    register_device(gateway.writer, "W01")
    device = wire_device("W01")
    device.press("very_satisfied", case="C2")  # C2 is rated at the counter
    wait_until(device.all_acked, what="the press acked")

    clock.set(china(2026, 10, 9, 23, 59, 59))  # last moment of the 5th working day
    gateway.housekeeping.run_once()
    assert gateway.counter("default_ratings") == 0
    clock.set(china(2026, 10, 10, 0, 0, 1))
    gateway.housekeeping.run_once()
    gateway.housekeeping.run_once()  # running twice issues nothing more
    assert gateway.counter("default_ratings") == 1

    wait_until(lambda: province.count() == 2, what="the press and the default rating at the province")
    by_project = {r["projectNo"]: r for r in province.records()}
    default = by_project["361102C1"]
    assert (default["pf"], default["isDefault"], default["satisfaction"]) == ("7", 1, 4)
    assert default["assessTime"] == "2026-10-10 00:00:01"
    assert by_project["361102C2"]["isDefault"] == 0
    with sqlite3.connect(gateway.config["store.path"]) as conn:
        assert dict(conn.execute("SELECT case_ref, state FROM cases").fetchall()) == {"C1": "defaulted", "C2": "rated"}


class Webhook:
    """A duty manager's webhook endpoint on loopback; fails the first `failures` calls."""

    def __init__(self, failures: int = 0):
        self.received: queue.Queue = queue.Queue()
        self.failures = failures
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                status = 500 if hook.failures > 0 else 204
                hook.failures -= 1
                if status == 204:
                    hook.received.put(body)
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def test_bad_rating_opens_a_followup_and_notifies_the_duty_manager(gateway_factory, monkeypatch, wire_device):
    from gateway import notify

    monkeypatch.setattr(notify.Notifier, "interval", 0.05)
    hook = Webhook(failures=1)
    clock = ManualClock(china(2026, 9, 24, 10))
    gateway = gateway_factory(clock=clock, **{"cases.webhook_url": hook.url})
    register_device(gateway.writer, "W01", window_no="A07")
    device = wire_device("W01")
    # The 差评 is of a case the window system reported with the applicant's name and certificate number.
    body = {**case("C9", clock.now()), "window_no": "A07", "applicant_name": APPLICANT_NAME,
            "applicant_cert_no": APPLICANT_CERT}
    reported = gateway.cases.report(body, frozenset({"window"}))
    device.press("satisfied")
    device.press("very_dissatisfied", case=reported["case_ref"], reasons=["502"])
    wait_until(device.all_acked, what="acks")
    with sqlite3.connect(gateway.config["store.path"]) as conn:
        wait_until(lambda: conn.execute("SELECT notify_attempts FROM followups").fetchall() == [(1,)],
                   what="the first webhook call to fail")
        clock.advance(10)  # past the retry delay
        deadline = conn.execute("SELECT deadline FROM followups").fetchall()
    assert deadline == [(china(2026, 10, 15) + 86400,)]  # 10 working days: 9-28,29,30, 10-8,9,10,12,13,14,15
    notice = hook.received.get(timeout=10)
    assert (notice["window"], notice["level_label"], notice["reasons"]) == ("A07", "非常不满意", ["502"])
    assert notice["case_ref"] == "361102C9"
    assert set(notice) == {"event", "rating_id", "window", "device", "channel", "case_ref", "level", "level_label",
                           "reasons", "assessed_at", "followup_deadline"}
    text = json.dumps(notice, ensure_ascii=False)
    assert APPLICANT_NAME not in text and APPLICANT_CERT not in text and mask_name(APPLICANT_NAME) not in text
    hook.close()


def test_ratings_are_kept_for_years_and_only_operational_rows_go_after_days(tmp_path):
    """The monthly 通报 and the yearly 考核 count ratings long after they were forwarded (store.retention_years);
    forward attempts, refused messages and spent rating links go after store.retention_days."""
    from gateway import db, ratings

    database = db.connect(tmp_path / "gateway.db")
    db.migrate(database)
    conn, calendar, t0 = database.conn, WorkCalendar(), china(2026, 9, 24, 10)
    cases.record_case(conn, case("C1", t0), calendar, 5)
    cases.record_case(conn, case("C2", t0), calendar, 5)  # stays open: its link stays
    cases.finish_case(conn, case("C1", t0), calendar, 5, t0)
    cases.finish_case(conn, case("C2", t0), calendar, 5, t0)
    choice = {"level": "satisfied", "public": True, "reasons": [], "comment": ""}
    bad = {"level": "very_dissatisfied", "public": True, "reasons": ["501"], "comment": ""}
    ratings.store(conn, ratings.from_page("gw", "C1", choice, t0), calendar, 10)
    ratings.store(conn, ratings.from_page("gw", None, bad, t0), calendar, 10)  # a 差评 whose follow-up stays open
    conn.execute("UPDATE outbox SET state = 'forwarded', done_at = ?", (t0,))
    conn.execute("INSERT INTO forward_attempts (at, records, outcome) VALUES (?, 2, 'ok')", (t0,))
    ratings.store_reject(conn, t0, "hcp/v1/h/W01/up/rating", "W01", None, "bad_json", None, "", b"{")
    counts = lambda: {t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0]  # noqa: E731
                      for t in ("ratings", "cases", "followups", "outbox", "tokens", "forward_attempts", "rejects")}

    assert cases.prune(conn, t0 + 100 * 86400, 90, 3) == {"tokens": 1, "forward_attempts": 1, "rejects": 1}
    assert counts() == {"ratings": 2, "cases": 2, "followups": 1, "outbox": 2, "tokens": 1, "forward_attempts": 0,
                        "rejects": 0}
    assert cases.prune(conn, t0 + 2 * 366 * 86400, 90, 3) == {}  # two years on: every rating still there
    four_years = t0 + 4 * 366 * 86400
    assert cases.prune(conn, four_years, 90, 3) == {"ratings": 1, "cases": 1}  # the open follow-up's rating stays
    conn.execute("UPDATE followups SET state = 'closed'")
    assert cases.prune(conn, four_years, 90, 3) == {"followups": 1, "ratings": 1}
    assert counts()["ratings"] == 0 and counts()["cases"] == 1  # C2: still open
    database.conn.close()
