"""The gateway's HTTP front: one route table behind dispatch, roles and the OpenAPI document; revocations that
reach a running gateway whoever makes them; and connections that cannot be held open forever."""
from __future__ import annotations

import json
import socket
import time
import urllib.request

import pytest

from gateway import api, settings
from gateway.access import ROLES, key_entry
from tests.helpers import register_device, wait_until
from tests.test_cases_api import call, case_body
from tests.test_gateway_cli import run_cli

EVERYONE = "every-role-key-0123456789"
KEYS = [key_entry(EVERYONE, ROLES, "all")]


def test_every_route_is_documented_and_every_documented_route_answers(gateway_factory):
    gateway = gateway_factory(**{"api.keys": KEYS})
    register_device(gateway.writer, "W01", window_no="A01")
    from gateway import ratings

    choice = {"level": "dissatisfied", "public": True, "reasons": ["502"], "comment": ""}
    gateway.writer.call(lambda conn: ratings.store(conn, ratings.from_page("W01", None, choice, 0), gateway.calendar,
                                                   10))  # a 差评, so a work order
    status, answer = call(gateway, "GET", "/api/v1/openapi.json", key=EVERYONE)
    assert status == 200
    documented = {(method.upper(), path): operation for path, operations in json.loads(answer)["paths"].items()
                  for method, operation in operations.items()}
    table = {(r.method, r.path): r for r in api.ROUTES if r.roles is not None}
    assert set(documented) == set(table)
    assert {"GET /api/v1/ratings", "GET /api/v1/audit", "GET /api/v1/devices/{dev}"} <= {" ".join(k) for k in table}
    for key, operation in documented.items():
        assert operation["x-roles"] == sorted(table[key].roles), key

    bodies = {"/api/v1/cases": case_body(project_no="C1"), "/api/v1/devices/{dev}": {"window_no": "A01"},
              "/api/v1/devices/{dev}/config": {"bright": 50},
              "/api/v1/workorders/{rating_id}/steps": {"step": "visited", "visit_result": 1}}
    queries = {"/api/v1/ratings": "?from=2026-11-01&to=2026-11-30", "/api/v1/audit": "?since=0"}
    last = ("POST", "/api/v1/devices/{dev}/revoke")  # after it the device takes no more changes
    for method, path in sorted(documented, key=lambda k: (k == last, k[0] == "POST" and "cancel" in k[1])):
        concrete = path.replace("{case_ref}", "C1").replace("{dev}", "W01").replace("{rating_id}", "1")
        concrete += queries.get(path, "")
        status, answer = call(gateway, method, concrete, bodies.get(path), key=EVERYONE)
        assert status == 200, (method, path, answer)
    # A path the table does not have, and a method it does not take there
    assert call(gateway, "GET", "/api/v1/nothing", key=EVERYONE)[0] == 404
    assert call(gateway, "DELETE", "/api/v1/cases/C1", key=EVERYONE)[0] == 405


def test_the_citizens_pages_escape_what_they_show(gateway_factory):
    gateway = gateway_factory(**{"api.keys": KEYS})
    case = json.loads(call(gateway, "POST", "/api/v1/cases", case_body(task_name="<script>alert(1)</script>"),
                           key=EVERYONE)[1])
    status, page = call(gateway, "GET", "/r/" + case["url"].rsplit("/", 1)[1], key=None)
    assert status == 200 and "<script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page


@pytest.mark.parametrize("by", ["cli", "api"])
def test_a_revocation_reaches_the_running_gateway_within_a_second(by, gateway_factory, wire_device, tmp_path):
    """The gateway does not manage broker accounts here, so only its own gate can stop the device."""
    gateway = gateway_factory(**{"mqtt.registered_only": True, "api.keys": KEYS})
    register_device(gateway.writer, "W01")  # as another process would: the gate learns it from the registry
    wait_until(lambda: gateway.gate.refusal("W01") is None, 5, "the gate to admit the registered device")
    device = wire_device("W01")
    device.press("satisfied")
    wait_until(device.all_acked, 10, "the registered device's rating acked")
    if by == "cli":
        config = tmp_path / "gateway.toml"
        config.write_text(settings.dump(gateway.config))
        result = run_cli("revoke", "W01", "--config", str(config))
        assert result.exit_code == 0, result.output
    else:
        assert call(gateway, "POST", "/api/v1/devices/W01/revoke", key=EVERYONE)[0] == 200
    revoked = time.monotonic()
    wait_until(lambda: gateway.gate.refusal("W01") == "revoked", 5, "the gate to refuse the revoked device")
    assert time.monotonic() - revoked < 1.0
    device.press("very_satisfied")
    wait_until(lambda: [r["code"] for r in gateway.reader.execute("SELECT code FROM rejects")] == ["revoked"], 10,
               "the revoked device's rating refused and recorded")
    assert gateway.reader.execute("SELECT count(*) FROM ratings").fetchone()[0] == 1


def closed_by_peer(conn: socket.socket) -> bool:
    """Read until the other end closes (True) or our own timeout runs out (False)."""
    try:
        while conn.recv(4096):
            pass
        return True
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def test_idle_connections_cannot_starve_the_citizens_pages(gateway_factory):
    """2,000 connections that send half a request line and stop: a citizen's page still answers at once, and
    every idle connection is closed once it has been silent for the timeout."""
    timeout_s = 3
    gateway = gateway_factory(**{"api.keys": KEYS, "http.request_timeout_s": timeout_s})
    case = json.loads(call(gateway, "POST", "/api/v1/cases", case_body(), key=EVERYONE)[1])
    page = f"http://127.0.0.1:{gateway.api.port}/r/" + case["url"].rsplit("/", 1)[1]
    idle = []
    try:
        for _ in range(2000):
            conn = socket.create_connection(("127.0.0.1", gateway.api.port), timeout=10)
            conn.sendall(b"GET /r/x HT")
            idle.append(conn)
        wait_until(lambda: gateway.api.connections() >= 2000, 30, "the gateway to accept every connection")
        opened = started = time.monotonic()
        with urllib.request.urlopen(page, timeout=10) as response:
            assert response.status == 200 and "请对本次服务进行评价" in response.read().decode()
        assert time.monotonic() - started < 1.0
        deadline = opened + timeout_s + 5
        for conn in idle:
            conn.settimeout(max(0.1, deadline - time.monotonic()))
            assert closed_by_peer(conn), "an idle connection was still open after the timeout"
        assert time.monotonic() < deadline
    finally:
        for conn in idle:
            conn.close()


def test_bad_requests_get_clear_answers_and_do_not_hurt_ingest(gateway_factory, wire_device):
    gateway = gateway_factory(**{"api.keys": KEYS})
    register_device(gateway.writer, "W01", window_no="A01")
    for device, status in (("#", 400), (5, 400), ("W99", 404)):  # "#" would be a wildcard topic to paho
        answer = call(gateway, "POST", "/api/v1/cases", case_body(project_no=f"D{status}", device=device),
                      key=EVERYONE)
        assert answer[0] == status, answer
    assert call(gateway, "POST", "/api/v1/cases", case_body(finished_at=True), key=EVERYONE)[0] == 400
    assert call(gateway, "GET", "/api/v1/ratings?from=2020-01-01&to=2026-11-30", key=EVERYONE)[0] == 400
    assert call(gateway, "GET", "/api/v1/ratings?from=2026-11-01&to=9999-12-31", key=EVERYONE)[0] == 400
    assert call(gateway, "GET", "/api/v1/ratings%0A?from=2026-11-01&to=2026-11-02", key=EVERYONE)[0] == 404
    assert call(gateway, "POST", "/api/v1/devices/W01/revoke", key=EVERYONE)[0] == 200
    assert call(gateway, "PUT", "/api/v1/devices/W01/config", {"bright": 50}, key=EVERYONE)[0] == 409
    device = wire_device("W02")  # ingest is still at work
    device.press()
    wait_until(device.all_acked, 10, "a rating acked after the bad requests")
    assert gateway.health()["mqtt_thread"]


def test_a_full_store_answers_503_and_stores_nothing(gateway_factory):
    gateway = gateway_factory(**{"api.keys": KEYS, "store.quota_mb": 0})
    status, answer = call(gateway, "POST", "/api/v1/cases", case_body(), key=EVERYONE)
    assert status == 503 and "storage" in json.loads(answer)["error"]
    assert gateway.reader.execute("SELECT count(*) FROM cases").fetchone()[0] == 0


def test_cancelling_a_case_is_audited(gateway_factory):
    gateway = gateway_factory(**{"api.keys": KEYS})
    call(gateway, "POST", "/api/v1/cases", case_body(project_no="C7"), key=EVERYONE)
    assert call(gateway, "POST", "/api/v1/cases/C7/cancel", key=EVERYONE)[0] == 200
    entries = [tuple(r) for r in gateway.reader.execute("SELECT actor, action, detail FROM audit")]
    assert entries == [("all", "cancel_case", "POST /api/v1/cases/C7/cancel")]


def test_the_case_api_takes_reports_while_the_broker_is_away(tmp_path):
    """办结 reports are taken as soon as the database is open, whatever else is still coming up."""
    from gateway.service import Gateway
    from simulator.broker import free_port
    from tests.helpers import gateway_config

    gateway = Gateway(gateway_config(free_port(), tmp_path / "gateway.db", **{"api.keys": KEYS})).start()
    try:
        register_device(gateway.writer, "W01", window_no="A01")
        status, answer = call(gateway, "POST", "/api/v1/cases", case_body(), key=EVERYONE)
        assert status == 200 and (json.loads(answer)["device"], json.loads(answer)["prompted"]) == ("W01", False)
        assert gateway.health()["broker"] is False
    finally:
        gateway.stop()
