"""Who may call what: roles on API keys, rate limits, and the append-only audit log of reads and changes."""
from __future__ import annotations

import datetime as dt
import json

import pytest

from gateway import settings
from gateway.access import RateLimiter, key_entry
from gateway.db import StorageError
from tests.helpers import register_device, wait_until
from tests.test_cases_api import call, case_body

TODAY = dt.date.today()
THIS_MONTH = f"from={TODAY - dt.timedelta(days=30)}&to={TODAY + dt.timedelta(days=1)}"  # around now, wherever it is
WINDOW, TECH, MANAGER, AUDITOR = "window-key-0001", "tech-key-0002", "manager-key-0003", "auditor-key-0004"
KEYS = [key_entry(WINDOW, ["window"], "erp"), key_entry(TECH, ["technician"], "tech1"),
        key_entry(MANAGER, ["manager"], "duty-mgr"), key_entry(AUDITOR, ["auditor"], "audit1")]


@pytest.fixture
def gateway(gateway_factory, province):
    gateway = gateway_factory(province.url, **{"api.keys": KEYS})
    register_device(gateway.writer, "W01", window_no="A01")
    return gateway


def test_each_role_may_make_its_calls_and_no_others(gateway):
    assert call(gateway, "POST", "/api/v1/cases", case_body(), key=WINDOW)[0] == 200
    for key in (TECH, MANAGER, AUDITOR):
        status, answer = call(gateway, "POST", "/api/v1/cases", case_body(), key=key)
        assert status == 403 and "needs one of: window" in json.loads(answer)["error"]
    assert call(gateway, "PUT", "/api/v1/devices/W02", {"window_no": "A02"}, key=TECH)[0] == 200
    assert call(gateway, "PUT", "/api/v1/devices/W03", {"window_no": "A03"}, key=WINDOW)[0] == 403
    assert call(gateway, "PUT", "/api/v1/devices/W03", {"window_no": "A03"}, key=AUDITOR)[0] == 403
    ratings = f"/api/v1/ratings?{THIS_MONTH}"
    assert call(gateway, "GET", ratings, key=MANAGER)[0] == 200
    assert call(gateway, "GET", ratings, key=WINDOW)[0] == 403
    assert call(gateway, "GET", ratings, key=TECH)[0] == 403
    assert call(gateway, "GET", "/api/v1/audit", key=MANAGER)[0] == 403
    assert call(gateway, "GET", "/api/v1/audit", key=None)[0] == 401
    assert call(gateway, "GET", "/api/v1/audit", key="not-a-key")[0] == 401
    assert call(gateway, "DELETE", "/api/v1/audit", key=AUDITOR)[0] in (405, 501)
    assert call(gateway, "POST", "/api/v1/audit", key=AUDITOR)[0] == 405


def test_reads_of_rating_data_and_changes_are_audited_and_the_log_cannot_be_altered(gateway, wire_device):
    device = wire_device("W01")
    case = json.loads(call(gateway, "POST", "/api/v1/cases", case_body(), key=WINDOW)[1])
    device.press("dissatisfied", case=case["case_ref"], reasons=["502"])
    wait_until(device.all_acked, 10, "the rating acked")
    status, answer = call(gateway, "GET", f"/api/v1/ratings?{THIS_MONTH}&public_only=1", key=MANAGER)
    assert status == 200 and [r["level"] for r in json.loads(answer)["ratings"]] == ["dissatisfied"]
    call(gateway, "GET", f"/api/v1/cases/{case['case_ref']}", key=WINDOW)
    call(gateway, "PUT", "/api/v1/devices/W01/config", {"bright": 40}, key=TECH)
    status, answer = call(gateway, "GET", "/api/v1/audit", key=AUDITOR)
    entries = [(e["actor"], e["action"]) for e in json.loads(answer)["audit"]]
    assert entries == [("duty-mgr", "read_ratings"), ("erp", "read_case"), ("tech1", "configure_device")]
    assert "public_only=1" in json.loads(answer)["audit"][0]["detail"]
    # The auditor's own read is audited too, and nobody, not even the gateway's writer, can change the log.
    status, answer = call(gateway, "GET", "/api/v1/audit?since=3", key=AUDITOR)
    assert [(e["actor"], e["action"]) for e in json.loads(answer)["audit"]] == [("audit1", "read_audit")]
    for tamper in ("UPDATE audit SET actor = 'someone'", "DELETE FROM audit"):
        with pytest.raises(StorageError, match="append-only"):
            gateway.writer.call(lambda conn, sql=tamper: conn.execute(sql))


def test_over_the_rate_limit_the_api_and_the_rating_page_answer_429(gateway_factory, province):
    gateway = gateway_factory(province.url, **{"api.keys": KEYS, "api.rate_per_minute": 3,
                                               "api.page_rate_per_minute": 2})
    statuses = [call(gateway, "GET", "/api/v1/devices", key=TECH)[0] for _ in range(4)]
    assert statuses == [200, 200, 200, 429]
    assert call(gateway, "GET", "/api/v1/devices", key=MANAGER)[0] == 200  # limits are per key
    pages = [call(gateway, "GET", "/r/not-a-token", key=None)[0] for _ in range(3)]
    assert pages == [404, 404, 429]


def test_the_rate_limiter_refills_at_its_rate():
    now = [0.0]
    limiter = RateLimiter(60, clock=lambda: now[0])
    assert all(limiter.wait_s("a") == 0 for _ in range(60))
    assert limiter.wait_s("a") == pytest.approx(1.0)
    now[0] += 1.0
    assert limiter.wait_s("a") == 0 and limiter.wait_s("a") > 0


@pytest.mark.parametrize("entry, message", [
    ("abc", "expected NAME:ROLE[+ROLE]:SHA256"),
    ("erp:admin:" + "0" * 64, "unknown role admin"),
    ("erp:window:xyz", "the key's SHA-256 in hex"),
    ("有名字:window:" + "0" * 64, "the name is 1-32 of"),
])
def test_a_bad_key_entry_is_a_configuration_error(entry, message):
    with pytest.raises(settings.ConfigError, match=message.replace("[", r"\[").replace("+", r"\+")):
        settings.load(None, {"api.keys": [entry]})
