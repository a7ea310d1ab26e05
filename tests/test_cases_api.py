"""The case API and the citizen's rating page: a window's 办结 prompts its evaluator (real firmware on the
unix port), the QR on the screen is the case's URL, and the case is rated once, whichever channel is first."""
from __future__ import annotations

import json
import sqlite3
import time
import urllib.error
import urllib.parse
import urllib.request

import pytest
import zxingcpp

from gateway.access import key_entry
from gateway.cases import mask_name
from gateway.clock import ManualClock
from tests.conftest import APPLICANT_CERT, APPLICANT_NAME
from tests.helpers import DEPT, register_device, wait_until

KEY = "window-system-key-0123456789"
MANAGER, AUDITOR = "duty-manager-key-0123456789", "auditor-key-0123456789"
KEYS = [key_entry(KEY, ["window", "technician"], "erp"), key_entry(MANAGER, ["manager"], "duty"),
        key_entry(AUDITOR, ["auditor"], "audit")]


def call(gateway, method: str, path: str, body=None, key: str | None = KEY, form: dict | None = None,
         cookie: str | None = None):
    data, headers = None, {}
    if cookie:
        headers["Cookie"] = cookie
    if body is not None:
        data, headers["Content-Type"] = json.dumps(body).encode(), "application/json"
    if form is not None:
        data = urllib.parse.urlencode(form, doseq=True).encode()
        headers["Content-Type"] = "application/x-www-form-urlencoded"
    if key:
        headers["Authorization"] = f"Bearer {key}"
    request = urllib.request.Request(f"http://127.0.0.1:{gateway.api.port}{path}", data=data, method=method,
                                     headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def case_body(project_no: str = "3611022026112900017", **changes) -> dict:
    body = {"project_no": project_no, "task_code": "361100-000-XK-001", "task_name": "不动产登记",
            "dept_code": DEPT, "staff_no": "N0321", "window_no": "A01", "user_prop": 1,
            "applicant_name": APPLICANT_NAME, "applicant_cert_no": APPLICANT_CERT}
    body.update(changes)
    return body


@pytest.fixture
def api_gateway(gateway_factory, province):
    def start(**overrides):
        gateway = gateway_factory(province.url, **{"api.keys": KEYS, **overrides})
        register_device(gateway.writer, "W01", window_no="A01")
        return gateway
    return start


def test_the_api_needs_a_key_and_explains_bad_input(api_gateway):
    gateway = api_gateway()
    assert call(gateway, "POST", "/api/v1/cases", case_body(), key=None)[0] == 401
    assert call(gateway, "POST", "/api/v1/cases", case_body(), key="wrong")[0] == 401
    assert call(gateway, "GET", "/api/v1/cases/X1", key=None)[0] == 401
    status, answer = call(gateway, "POST", "/api/v1/cases", case_body(dept_code="123"))
    assert status == 400 and json.loads(answer)["field"] == "dept_code"
    status, answer = call(gateway, "POST", "/api/v1/cases", case_body(project_no="有 空格"))
    assert status == 400 and json.loads(answer)["field"] == "project_no"
    assert call(gateway, "GET", "/api/v1/cases/NOPE")[0] == 404
    assert call(gateway, "GET", "/api/v2/cases/NOPE")[0] == 404
    status, answer = call(gateway, "GET", "/api/v1/openapi.json")
    assert status == 200 and "/api/v1/cases" in json.loads(answer)["paths"]


def test_a_finished_case_prompts_its_window_and_is_rated_once(api_gateway, sim_device, province):
    gateway = api_gateway()
    device = sim_device("W01")
    wait_until(lambda: gateway.registry.online("W01"), what="the evaluator online")
    before = device.last_frame
    sent = time.monotonic()
    status, answer = call(gateway, "POST", "/api/v1/cases", case_body())
    assert status == 200, answer
    case = json.loads(answer)
    assert (case["state"], case["device"], case["device_online"], case["prompted"]) == ("open", "W01", True, True)
    shown = device.wait_frame("prompt", after=before, timeout=5)
    assert shown["host_t"] - sent < 1.0  # on the window's screen within a second

    image = device.screenshot()
    assert [r.text for r in zxingcpp.read_barcodes(image)] == [case["url"]]
    # The applicant's name and certificate number reached neither the device nor the gateway's database: the
    # name only masked on the screen, the number not at all.
    for path in [*device.flash.iterdir(), *gateway.writer.path.parent.glob("gateway.db*")]:
        if path.is_file():
            data = path.read_bytes()
            assert APPLICANT_NAME.encode() not in data and APPLICANT_CERT.encode() not in data, path

    before = device.last_frame
    device.press(0)
    device.wait_frame("thanks", after=before)
    wait_until(lambda: json.loads(call(gateway, "GET", f"/api/v1/cases/{case['case_ref']}")[1])["state"] == "rated",
               what="the case rated at the counter")
    # The window's own system learns that the case was rated, never how (policy art. 11); the manager does.
    seen_by_window = json.loads(call(gateway, "GET", f"/api/v1/cases/{case['case_ref']}")[1])
    assert set(seen_by_window) == {"case_ref", "project_no", "state", "deadline"}
    seen_by_manager = json.loads(call(gateway, "GET", f"/api/v1/cases/{case['case_ref']}", key=MANAGER)[1])
    assert (seen_by_manager["level"], seen_by_manager["channel"]) == ("very_satisfied", "device")

    token = case["url"].rsplit("/", 1)[1]
    page_status, page = call(gateway, "GET", f"/r/{token}", key=None)
    assert page_status == 200 and "该办件已评价" in page
    status, page = call(gateway, "POST", f"/r/{token}", key=None, form={"level": "very_dissatisfied"})
    assert status == 409 and "一次一评" in page
    with sqlite3.connect(gateway.config["store.path"]) as conn:
        assert conn.execute("SELECT channel, level FROM already_rated").fetchall() == [("qr", "very_dissatisfied")]
        assert conn.execute("SELECT channel FROM ratings").fetchall() == [("device",)]
    wait_until(lambda: province.count() == 1, what="the one rating at the province")


def test_a_citizen_who_walked_away_rates_by_phone(api_gateway, province):
    gateway = api_gateway()
    case = json.loads(call(gateway, "POST", "/api/v1/cases", case_body(device="W01"))[1])
    assert (case["device_online"], case["prompted"]) == (False, False)  # said so: the evaluator is offline
    token = case["url"].rsplit("/", 1)[1]
    status, page = call(gateway, "GET", f"/r/{token}", key=None)
    assert status == 200 and "非常不满意" in page and "不公开我的评价" in page
    status, page = call(gateway, "POST", f"/r/{token}", key=None,
                        form={"level": "dissatisfied", "reason": ["502", "505"], "comment": "等了很久",
                              "private": "on"})
    assert status == 200 and "感谢您的评价" in page
    wait_until(lambda: province.count() == 1, what="the phone rating at the province")
    [record] = province.records()
    assert (record["pf"], record["satisfaction"], record["evalDetail"], record["isPublic"]) == ("3", 2, "502,505", 0)
    assert record["writingEvaluation"] == "等了很久" and record["projectNo"] == "3611022026112900017"
    assert call(gateway, "POST", f"/r/{token}", key=None, form={"level": "satisfied"})[0] == 409


def test_unknown_tokens_and_missing_levels_are_refused(api_gateway):
    gateway = api_gateway()
    assert call(gateway, "GET", "/r/not-a-token", key=None)[0] == 404
    case = json.loads(call(gateway, "POST", "/api/v1/cases", case_body())[1])
    token = case["url"].rsplit("/", 1)[1]
    assert call(gateway, "POST", f"/r/{token}", key=None, form={"level": "great"})[0] == 400


def test_a_cancelled_case_withdraws_its_prompt(api_gateway, sim_device):
    gateway = api_gateway()
    device = sim_device("W01")
    wait_until(lambda: gateway.registry.online("W01"), what="the evaluator online")
    before = device.last_frame
    case = json.loads(call(gateway, "POST", "/api/v1/cases", case_body())[1])
    device.wait_frame("prompt", after=before)
    status, answer = call(gateway, "POST", f"/api/v1/cases/{case['case_ref']}/cancel")
    assert status == 200 and json.loads(answer)["state"] == "cancelled"
    device.wait_frame("idle", after=before)
    assert call(gateway, "POST", f"/api/v1/cases/{case['case_ref']}/cancel")[0] == 409


def test_a_case_nobody_rates_gets_its_default_rating_on_the_right_working_day(gateway_factory, tmp_path):
    from simulator.province import Province
    from tests.helpers import APP_KEY, APP_SECRET

    finished = 1790240400.0  # 2026-09-24 (Thu) 16:00 China; 中秋 and 国庆 follow
    clock = ManualClock(finished)
    province = Province(tmp_path / "p.db", APP_KEY, APP_SECRET, clock=clock.now).start()
    try:
        gateway = gateway_factory(province.url, clock=clock, **{"api.keys": KEYS})
        register_device(gateway.writer, "W01", window_no="A01")
        case = json.loads(call(gateway, "POST", "/api/v1/cases", case_body(finished_at=finished))[1])
        assert case["deadline"] == 1791561600.0  # end of 2026-10-09, the 5th working day
        clock.set(case["deadline"] - 1)
        gateway.housekeeping.run_once()
        assert json.loads(call(gateway, "GET", f"/api/v1/cases/{case['case_ref']}")[1])["state"] == "open"
        clock.set(case["deadline"] + 1)
        gateway.housekeeping.run_once()
        assert json.loads(call(gateway, "GET", f"/api/v1/cases/{case['case_ref']}")[1])["state"] == "defaulted"
        wait_until(lambda: province.count() == 1, what="the default rating at the province")
        assert (province.records()[0]["pf"], province.records()[0]["isDefault"]) == ("7", 1)
    finally:
        province.stop()


def test_names_are_masked():
    assert [mask_name(n) for n in ("张三", "张三丰", "欧阳娜娜", "")] == ["张*", "张*丰", "欧**娜", ""]


def test_device_registry_and_config_push_with_the_windows_standing_qr(api_gateway, sim_device):
    gateway = api_gateway()
    status, answer = call(gateway, "PUT", "/api/v1/devices/W02", {"window_no": "B07", "dept_code": DEPT,
                                                                 "staff_no": "N0999"})
    assert status == 200 and json.loads(answer)["window_no"] == "B07"
    assert call(gateway, "PUT", "/api/v1/devices/W02", {"dept_code": "short"})[0] == 400
    device = sim_device("W01")
    wait_until(lambda: gateway.registry.online("W01"), what="the evaluator online")
    before = device.last_frame
    status, answer = call(gateway, "PUT", "/api/v1/devices/W01/config",
                          {"hall": "信州区政务服务中心", "window": "A01", "staff": "李*华", "staff_no": "N0321"})
    assert status == 200 and json.loads(answer)["config_sent"] == 1
    assert call(gateway, "PUT", "/api/v1/devices/W01/config", {"policy": "sometimes"})[0] == 400
    device.wait_frame("idle", after=before)
    wait_until(lambda: [d for d in json.loads(call(gateway, "GET", "/api/v1/devices")[1])["devices"]
                        if d["dev"] == "W01"][0]["config_ver"] == 1, what="the device's acknowledgement")
    [standing] = zxingcpp.read_barcodes(device.screenshot())
    assert standing.text == gateway.config["api.public_url"] + "/w/A01"
    assert call(gateway, "GET", "/api/v1/devices", key=None)[0] == 401


def window_page(gateway, window: str, cookie: str | None = None) -> tuple[int, str, str | None]:
    """GET a window's standing QR page: (status, page, the phone cookie it set, if any)."""
    headers = {"Cookie": cookie} if cookie else {}
    request = urllib.request.Request(f"http://127.0.0.1:{gateway.api.port}/w/{window}", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            set_cookie = response.headers.get("Set-Cookie")
            return response.status, response.read().decode(), set_cookie.split(";")[0] if set_cookie else None
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(), None


def test_the_standing_qr_rates_only_the_window_and_within_its_limits(api_gateway, province):
    clock = ManualClock(time.time())
    gateway = api_gateway(clock=clock, **{"api.window_ratings_per_hour": 3})
    case = json.loads(call(gateway, "POST", "/api/v1/cases", case_body())[1])  # someone else's case is open
    status, page, phone = window_page(gateway, "A01")
    assert status == 200 and "窗口 A01" in page and "不动产登记" not in page and phone
    assert call(gateway, "POST", "/w/A01", key=None, form={"level": "satisfied"}, cookie=phone)[0] == 200
    status, page = call(gateway, "POST", "/w/A01", key=None, form={"level": "dissatisfied"}, cookie=phone)
    assert status == 429 and "今天已评价过该窗口" in page  # one a phone a day
    status, page = call(gateway, "POST", "/w/A01", key=None, form={"level": "satisfied"})
    assert status == 400 and "Cookie" in page  # no phone to count: nothing stored
    for _ in range(2):
        other = window_page(gateway, "A01")[2]
        assert call(gateway, "POST", "/w/A01", key=None, form={"level": "basic"}, cookie=other)[0] == 200
    status, page = call(gateway, "POST", "/w/A01", key=None, form={"level": "basic"},
                        cookie=window_page(gateway, "A01")[2])
    assert status == 429 and "本小时" in page  # the window's hourly cap
    wait_until(lambda: province.count() == 3, what="the three window ratings at the province")
    assert {(r["windowNo"], r["pf"], r.get("projectNo")) for r in province.records()} == {("A01", "3", None)}
    clock.advance(86400)  # the next day the first phone may rate the window again
    assert call(gateway, "POST", "/w/A01", key=None, form={"level": "very_satisfied"}, cookie=phone)[0] == 200
    with sqlite3.connect(gateway.config["store.path"]) as conn:
        assert conn.execute("SELECT count(*), count(case_ref) FROM ratings").fetchone() == (4, 0)
    assert json.loads(call(gateway, "GET", f"/api/v1/cases/{case['case_ref']}")[1])["state"] == "open"
    assert window_page(gateway, "Z99")[0] == 404
