"""Forwarding to the province through its failures: 5xx, timeouts, 429, outages; dead letters on 4xx."""
from __future__ import annotations

import sqlite3
import time

from gateway import report
from protocol import upstream
from tests.helpers import register_device, wait_until


def outbox_states(gateway) -> dict:
    with sqlite3.connect(gateway.config["store.path"]) as conn:
        return dict(conn.execute("SELECT state, count(*) FROM outbox GROUP BY state").fetchall())


def eval_ids(device) -> set[str]:
    return {upstream.eval_id("361102", device.dev, rating_id) for rating_id in device.acked}


def test_errors_timeouts_and_busy_answers_deliver_every_rating_once(province, gateway_factory, wire_device):
    province.faults.update({"error_rate": 0.3, "timeout_rate": 0.15, "timeout_s": 1.5, "busy_rate": 0.2,
                            "retry_after_s": 0, "duplicate_rate": 0.1})
    gateway = gateway_factory(province.url, **{"upstream.batch_size": 20, "upstream.timeout_s": 0.5})
    register_device(gateway.writer, "W01")
    device = wire_device("W01")
    for _ in range(300):
        device.press()
    wait_until(device.all_acked, what="acks")
    wait_until(lambda: outbox_states(gateway) == {"forwarded": 300}, timeout=60, what="all forwarded")
    assert province.count() == 300
    assert {r["evalId"] for r in province.records()} == eval_ids(device)
    assert gateway.counter("forward_failures") > 0  # the faults really happened


def test_outage_buffers_then_drains_oldest_first(province, gateway_factory, wire_device):
    province.down()
    gateway = gateway_factory(province.url, **{"upstream.batch_size": 25})
    register_device(gateway.writer, "W01")
    device = wire_device("W01")
    ids = [device.press() for _ in range(200)]
    wait_until(device.all_acked, what="acks while the province is down")
    wait_until(lambda: gateway.counter("forward_failures") >= 3, what="failed attempts during the outage")
    assert outbox_states(gateway) == {"pending": 200}
    province.up()
    later = [device.press() for _ in range(20)]  # new ratings keep flowing while the backlog drains
    wait_until(lambda: province.count() == 220, timeout=60, what="the backlog at the province")
    stored_order = [r["evalId"] for r in province.records()]
    assert stored_order == [upstream.eval_id("361102", "W01", i) for i in ids + later]


def test_rejected_record_becomes_a_dead_letter_and_can_be_retried(province, gateway_factory, wire_device):
    gateway = gateway_factory(province.url)
    register_device(gateway.writer, "W01", dept_code="TOO-SHORT")  # E102 at the province
    device = wire_device("W01")
    device.press()
    wait_until(lambda: outbox_states(gateway) == {"dead": 1}, what="a dead letter")
    [dead] = report.dead_letters(gateway.reader)
    assert dead["last_error"].startswith("E102: deptCode")
    time.sleep(0.6)  # several forwarder rounds: a dead letter is not retried on its own
    assert province.requests == 1
    register_device(gateway.writer, "W01")  # the operator corrects the registry ...
    gateway.writer.call(lambda conn: None)
    assert report.retry_dead_letters(gateway.config["store.path"], [], "tester", time.time()) == 1  # ... and retries
    wait_until(lambda: outbox_states(gateway) == {"forwarded": 1}, what="forwarded after the retry")
    assert province.count() == 1


def test_rating_that_cannot_be_mapped_is_a_dead_letter_with_the_reason(province, gateway_factory, wire_device):
    gateway = gateway_factory(province.url)
    device = wire_device("W09")  # never registered: no window, department or staff
    device.press()
    wait_until(lambda: outbox_states(gateway) == {"dead": 1}, what="a dead letter")
    [dead] = report.dead_letters(gateway.reader)
    assert dead["last_error"].startswith("mapping: windowNo is required")
    assert province.requests == 0


def test_bad_credentials_keep_ratings_queued(province, gateway_factory, wire_device):
    gateway = gateway_factory(province.url, **{"upstream.app_secret": "wrong"})
    register_device(gateway.writer, "W01")
    device = wire_device("W01")
    device.press()
    wait_until(lambda: gateway.counter("forward_failures") >= 2, what="refused attempts")
    assert "HTTP 401" in gateway.forwarder.last_error
    assert outbox_states(gateway) == {"pending": 1}
    assert province.count() == 0
