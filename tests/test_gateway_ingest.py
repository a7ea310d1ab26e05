"""Ingest: ratings in over MQTT, stored once, acknowledged after commit; bad input rejected with reasons."""
from __future__ import annotations

import sqlite3

from protocol import codec
from tests.helpers import HALL, wait_until


def rows(gateway, sql, *args):
    with sqlite3.connect(gateway.config["store.path"]) as conn:
        return conn.execute(sql, args).fetchall()


def test_ratings_are_stored_once_and_acked(gateway_factory, wire_device):
    gateway = gateway_factory()
    device = wire_device("W01")
    ids = [device.press(level) for level in codec.LEVELS]
    wait_until(device.all_acked, what="acks for every rating")
    assert device.acked == set(ids)
    stored = rows(gateway, "SELECT r.origin, r.rid, r.level, o.state FROM ratings r "
                           "JOIN outbox o ON o.rating_id = r.id")
    assert sorted(stored) == sorted(("W01", i, lvl, "pending") for i, lvl in zip(ids, codec.LEVELS))


def test_a_resent_rating_is_acked_again_and_not_stored_twice(gateway_factory, wire_device):
    gateway = gateway_factory()
    device = wire_device("W01")
    rating_id = device.press()
    wait_until(device.all_acked, what="first ack")
    device.acked.clear()
    device.unacked[rating_id] = codec.encode({**device.rating(), "seq": 1, "id": rating_id})
    device.resend()
    wait_until(lambda: rating_id in device.acked, what="second ack")
    assert rows(gateway, "SELECT count(*) FROM ratings") == [(1,)]
    assert gateway.counter("ingest_duplicate") == 1


def test_malformed_messages_are_rejected_with_reasons_and_ingest_goes_on(gateway_factory, wire_device):
    gateway = gateway_factory()
    device = wire_device("W01")
    bad_level = device.rating()
    device.send_raw(codec.encode(bad_level).replace(b'"satisfied"', b'"excellent"'))
    device.send_raw(b"\xff not json")
    device.send_raw(codec.encode({**device.rating(), "dev": "W02"}))  # speaks for another device
    good = device.press()
    first = device.rejects.get(timeout=10)
    assert (first["ref"], first["code"]) == (bad_level["id"], codec.BAD_FIELD)
    assert device.rejects.get(timeout=10)["code"] == codec.BAD_JSON
    assert device.rejects.get(timeout=10)["code"] == codec.TOPIC_MISMATCH
    wait_until(lambda: good in device.acked, what="the good rating's ack")
    rejects = rows(gateway, "SELECT dev, code, field FROM rejects ORDER BY id")
    assert rejects == [("W01", "bad_field", "lvl"), ("W01", "bad_json", None), ("W01", "topic_mismatch", "dev")]
    assert rows(gateway, "SELECT count(*) FROM ratings") == [(1,)]


def test_ratings_published_while_the_gateway_is_down_wait_at_the_broker(gateway_factory, wire_device):
    first = gateway_factory()  # creates the persistent session
    first.stop()
    device = wire_device("W01")
    ids = {device.press() for _ in range(50)}
    gateway = gateway_factory()
    wait_until(device.all_acked, what="acks after the gateway came back")
    assert device.acked == ids
    assert rows(gateway, "SELECT count(*) FROM ratings") == [(50,)]


def test_one_rating_per_case_later_attempts_are_recorded_not_stored(gateway_factory, wire_device):
    gateway = gateway_factory()
    counter, other = wire_device("W01"), wire_device("W02")
    first = counter.press("satisfied", case="C2026-0001")
    wait_until(counter.all_acked, what="first rating acked")
    second = other.press("very_dissatisfied", case="C2026-0001", reasons=["501"])
    wait_until(other.all_acked, what="second attempt acked, so the device lets it go")
    assert rows(gateway, "SELECT rid FROM ratings") == [(first,)]
    assert rows(gateway, "SELECT origin, rid, case_ref FROM already_rated") == [("W02", second, "C2026-0001")]


def test_status_and_last_will_update_the_registry_and_online_gets_the_time(gateway_factory, wire_device):
    gateway = gateway_factory()
    device = wire_device("W01")
    status = {"v": 1, "k": "status", "dev": "W01", "state": "online", "fw": "0.1.0", "heap": 61440, "outbox": 3}
    device.client.publish(codec.topic(HALL, "W01", "status"), codec.encode(status), qos=1, retain=True)
    assert device.times.get(timeout=10)["tz"] == 480
    wait_until(lambda: rows(gateway, "SELECT state, fw, heap, outbox FROM devices") == [("online", "0.1.0", 61440, 3)],
               what="online status in the registry")
    offline = {"v": 1, "k": "status", "dev": "W01", "state": "offline"}
    device.client.publish(codec.topic(HALL, "W01", "status"), codec.encode(offline), qos=1, retain=True)
    wait_until(lambda: rows(gateway, "SELECT state, fw FROM devices") == [("offline", "0.1.0")],
               what="offline status keeps the last figures")


def test_storage_quota_stops_acks_and_nothing_is_lost(gateway_factory, tmp_path, wire_device):
    full = gateway_factory(**{"store.quota_mb": 0})
    device = wire_device("W01")
    ids = {device.press() for _ in range(20)}
    wait_until(lambda: full.ingest.paused, what="ingest pausing at the quota")
    assert device.acked == set()
    assert rows(full, "SELECT count(*) FROM ratings") == [(0,)]
    full.stop()
    gateway = gateway_factory()  # an operator frees space (here: a larger quota)
    wait_until(device.all_acked, what="acks once there is room")
    assert device.acked == ids
    assert rows(gateway, "SELECT count(*) FROM ratings") == [(20,)]


def test_a_job_that_fails_in_a_batch_does_not_silence_the_others(tmp_path):
    """The batch is retried a job at a time: the good jobs still commit and hear their results."""
    import threading

    from gateway.store import Writer

    writer = Writer(tmp_path / "gateway.db").start()
    try:
        started, release, results = threading.Event(), threading.Event(), {}
        writer.submit(lambda conn: started.set() or release.wait(10))  # holds the writer in its own batch
        assert started.wait(10)  # so the next two are queued while it works, and make the next batch together
        writer.submit(lambda conn: conn.execute("INSERT INTO no_such_table VALUES (1)"),
                      lambda result: results.setdefault("bad", result))
        writer.submit(lambda conn: conn.execute("INSERT INTO audit (at, actor, action) VALUES (1, 't', 'a')").rowcount,
                      lambda result: results.setdefault("good", result))
        release.set()
        assert writer.call(lambda conn: conn.execute("SELECT count(*) FROM audit").fetchone()[0]) == 1
        assert results["good"] == 1 and isinstance(results["bad"], Exception)
    finally:
        writer.stop()
