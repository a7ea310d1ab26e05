"""The simulated province implements docs/upstream.md strictly: authentication, envelope, record checks."""
from __future__ import annotations

import hashlib
import hmac
import json
import time
import urllib.error
import urllib.request

import pytest

from protocol import upstream
from simulator.province import validate
from tests.helpers import APP_KEY, APP_SECRET, DEPT

NOW = time.time()


def record(**changes) -> dict:
    base = {"evalId": "361102-W01-00000001", "projectNo": "P1", "taskCode": "T1", "taskName": "不动产登记",
            "deptCode": DEPT, "proManager": "N0321", "windowNo": "A01", "areaCode": "361102", "pf": "5",
            "satisfaction": 5, "assessTime": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(NOW + 8 * 3600)),
            "assessNumber": 1, "isDefault": 0, "isPublic": 1}
    base.update(changes)
    return {k: v for k, v in base.items() if v is not None}


def post(province, body: bytes, headers: dict | None = None) -> tuple[int, dict]:
    headers = headers if headers is not None else upstream.auth_headers(APP_KEY, APP_SECRET, body, time.time())
    request = urllib.request.Request(province.url + upstream.BATCH_PATH, data=body, method="POST",
                                     headers={"Content-Type": "application/json", **headers})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def envelope(*records) -> bytes:
    return json.dumps({"dataSource": "361102", "records": list(records)}).encode()


def test_signature_follows_the_interface_text():
    body = b'{"records":[]}'
    message = f"{APP_KEY}\n1764383400000\nnonce-0123456789ab\n{hashlib.sha256(body).hexdigest()}"
    expected = hmac.new(APP_SECRET.encode(), message.encode(), hashlib.sha256).hexdigest()
    assert upstream.signature(APP_SECRET, APP_KEY, "1764383400000", "nonce-0123456789ab", body) == expected


def test_accepts_then_answers_duplicate_and_reads_back(province):
    body = envelope(record())
    assert post(province, body) == (200, {"code": 0, "results": [{"evalId": "361102-W01-00000001",
                                                                  "status": "accepted"}]})
    assert post(province, body)[1]["results"][0]["status"] == "duplicate"
    assert province.count() == 1
    assert province.record("361102-W01-00000001")["taskName"] == "不动产登记"


@pytest.mark.parametrize("tamper,reason", [
    (lambda h: {**h, "X-Signature": "0" * 64}, "bad signature"),
    (lambda h: {**h, "X-App-Key": "other"}, "unknown app key"),
    (lambda h: {k: v for k, v in h.items() if k != "X-Nonce"}, "missing authentication headers"),
])
def test_bad_authentication_is_401_and_stores_nothing(province, tamper, reason):
    body = envelope(record())
    status, answer = post(province, body, tamper(upstream.auth_headers(APP_KEY, APP_SECRET, body, time.time())))
    assert (status, answer["message"]) == (401, reason)
    assert province.count() == 0


def test_stale_timestamp_and_reused_nonce_are_refused(province):
    body = envelope(record())
    stale = upstream.auth_headers(APP_KEY, APP_SECRET, body, time.time() - 301)
    assert post(province, body, stale)[1]["message"] == "timestamp more than 300 s off"
    fresh = upstream.auth_headers(APP_KEY, APP_SECRET, body, time.time())
    assert post(province, body, fresh)[0] == 200
    assert post(province, body, fresh)[1]["message"] == "nonce reused"


def test_bad_envelopes_are_400(province):
    assert post(province, b"not json")[0] == 400
    assert post(province, envelope())[0] == 400
    many = [record(evalId=f"E{i}", projectNo=f"P{i}") for i in range(501)]
    assert post(province, envelope(*many))[0] == 400
    assert province.count() == 0


@pytest.mark.parametrize("changes,code", [
    ({"windowNo": None}, "E101"),
    ({"taskName": None}, "E101"),
    ({"evalId": "has space"}, "E102"),
    ({"deptCode": "123"}, "E102"),
    ({"assessTime": "2026/11/29 10:00:00"}, "E102"),
    ({"pf": "9"}, "E103"),
    ({"satisfaction": 6}, "E104"),
    ({"assessTime": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(NOW + 8 * 3600 + 600))}, "E105"),
    ({"assessTime": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(NOW + 8 * 3600 - 31 * 86400))}, "E105"),
    ({"satisfaction": 1}, "E107"),
    ({"satisfaction": 2, "evalDetail": "501,777"}, "E107"),
    ({"isDefault": 1}, "E108"),
    ({"pf": "7"}, "E108"),
])
def test_record_checks_give_the_interface_error_codes(changes, code):
    assert validate(record(**changes), NOW)[0] == code


def test_window_rating_needs_no_case_and_default_bad_rating_needs_no_reason():
    assert validate(record(projectNo=None, taskCode=None, taskName=None), NOW) is None
    assert validate(record(pf="7", isDefault=1, satisfaction=1), NOW) is None


def test_second_first_evaluation_of_a_case_is_e106(province):
    post(province, envelope(record()))
    status, answer = post(province, envelope(record(evalId="361102-W02-00000009")))
    assert answer["results"][0]["error"] == "E106"


def test_an_outage_cuts_kept_alive_connections_too(province):
    """A client holding a keep-alive connection must see the outage, not go on as if the province were up."""
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", province.port, timeout=5)
    conn.request("POST", "/sim/faults", body=b"{}", headers={"Content-Type": "application/json"})
    assert conn.getresponse().read() and province.requests == 0  # answered, on a connection kept open
    province.down()
    with pytest.raises((OSError, http.client.HTTPException)):
        conn.request("POST", "/sim/faults", body=b"{}", headers={"Content-Type": "application/json"})
        conn.getresponse()
    conn.close()


def test_a_follow_up_evaluation_needs_the_first_one_e109(province):
    status, answer = post(province, envelope(record(evalId="361102-W01-00000002", assessNumber=2)))
    assert answer["results"][0]["error"] == "E109"
    status, answer = post(province, envelope(record(), record(evalId="361102-W01-00000002", assessNumber=2)))
    assert [r["status"] for r in answer["results"]] == ["accepted", "accepted"]
