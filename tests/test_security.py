"""Devices prove who they are: per-device broker accounts and ACLs the gateway writes, revocation, the
registry gate, and commands only the gateway can sign. Real Mosquitto, real gateway, real firmware."""
from __future__ import annotations

import json
import queue

import paho.mqtt.client as mqtt
import pytest

from gateway import brokerauth
from gateway.access import key_entry
from gateway.service import Gateway
from protocol import codec
from simulator.broker import Broker
from tests.helpers import HALL, gateway_config, wait_until
from tests.test_cases_api import call

TECH = "technician-key-0001"
GATEWAY_USER, GATEWAY_PASSWORD = "hcp-gateway", "gateway-broker-password"


class Account:
    """A device's (or anyone's) MQTT connection with a user name and password; records what it receives."""

    def __init__(self, port: int, user: str, password: str):
        self.received: queue.Queue = queue.Queue()
        self.refused = None
        self.connected = queue.Queue()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=user)
        self.client.username_pw_set(user, password)
        self.client.on_connect = lambda c, u, f, rc, p: self.connected.put(rc)
        self.client.on_disconnect = lambda c, u, f, rc, p: self.connected.put(("gone", rc))
        self.client.on_message = lambda c, u, m: self.received.put((m.topic, m.payload))
        self.client.connect("127.0.0.1", port, keepalive=10)
        self.client.loop_start()
        first = self.connected.get(timeout=10)
        self.ok = not first.is_failure
        if self.ok:
            done = queue.Queue()
            self.client.on_subscribe = lambda *a: done.put(True)
            self.client.subscribe("hcp/v1/#", qos=1)  # asks for everything; the ACL decides what it gets
            done.get(timeout=10)

    def publish(self, dev: str, kind: str, message: dict) -> None:
        self.client.publish(codec.topic(HALL, dev, kind), codec.encode(message), qos=1).wait_for_publish(10)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def rating(dev: str, n: int, case=None) -> dict:
    return {"v": 1, "k": "rating", "dev": dev, "boot": "0a1b2c3d", "seq": n, "id": f"0a1b2c3d{n:08x}",
            "t": None, "ms": n, "case": case, "lvl": "satisfied", "pub": True}


@pytest.fixture
def secured(tmp_path):
    """A broker that knows only the accounts the gateway writes, and that gateway."""
    password_file, acl_file = tmp_path / "passwords", tmp_path / "acl"
    passwords, acl = brokerauth.render([], HALL, GATEWAY_USER, GATEWAY_PASSWORD)  # first start: the gateway only
    password_file.write_text(passwords)
    acl_file.write_text(acl)
    broker = Broker(tmp_path / "broker", accounts=(password_file, acl_file)).start()
    config = gateway_config(broker.port, tmp_path / "gateway.db", **{
        "mqtt.username": GATEWAY_USER, "mqtt.password": GATEWAY_PASSWORD, "mqtt.registered_only": True,
        "broker.password_file": str(password_file), "broker.acl_file": str(acl_file),
        "broker.pid_file": str(broker.pid_path), "api.keys": [key_entry(TECH, ["technician"], "tech1")]})
    gateway = Gateway(config).start()
    assert gateway.ingest.subscribed.wait(10)
    opened = []

    def account(user, password):
        opened.append(Account(broker.port, user, password))
        return opened[-1]

    def provision(dev):
        assert call(gateway, "PUT", f"/api/v1/devices/{dev}", {"window_no": f"A{dev[-2:]}"}, key=TECH)[0] == 200
        status, answer = call(gateway, "POST", f"/api/v1/devices/{dev}/credentials", key=TECH)
        assert status == 200, answer
        return json.loads(answer)

    yield gateway, broker, account, provision
    for opened_account in opened:
        opened_account.close()
    gateway.stop()
    broker.stop()


def stored(gateway, origin: str) -> int:
    return gateway.reader.execute("SELECT count(*) FROM ratings WHERE origin = ?", (origin,)).fetchone()[0]


def test_each_device_reaches_only_its_own_topics(secured):
    gateway, broker, account, provision = secured
    a, b = provision("W01"), provision("W02")
    device_a = account(a["mqtt_user"], a["mqtt_password"])
    device_b = account(b["mqtt_user"], b["mqtt_password"])
    assert device_a.ok and device_b.ok
    device_a.publish("W02", "rating", rating("W02", 1))  # A pretends to be B: the broker drops it
    device_a.publish("W01", "rating", rating("W01", 1))  # A as itself: stored, and acked to A alone
    wait_until(lambda: stored(gateway, "W01") == 1, 10, "A's own rating stored")
    topic, payload = device_a.received.get(timeout=10)
    assert topic == codec.topic(HALL, "W01", "time") or topic == codec.topic(HALL, "W01", "ack")
    gateway.downlink.send("W02", "cancel", codec.encode({"v": 1, "k": "cancel", "case": "C1"}))
    wait_until(lambda: any(t.endswith("/W02/down/cancel") for t, _ in list(device_b.received.queue)), 10,
               "B's own command delivered to B")
    assert stored(gateway, "W02") == 0
    assert all("/W01/" in t for t, _ in list(device_a.received.queue)), "A read another device's topics"
    # The registry is the gateway's own check too: the device id in a message must be the topic's.
    device_a.publish("W01", "rating", {**rating("W01", 2), "dev": "W02"})
    wait_until(lambda: gateway.counter("ingest_rejected") >= 1, 10, "the mismatch rejected")
    code = gateway.reader.execute("SELECT code FROM rejects").fetchone()[0]
    assert code == codec.TOPIC_MISMATCH and stored(gateway, "W02") == 0


def test_wrong_password_and_unknown_accounts_are_refused(secured):
    gateway, broker, account, provision = secured
    a = provision("W01")
    assert not account("W01", "not-its-password").ok
    assert not account("W77", a["mqtt_password"]).ok
    anonymous = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="anyone")
    refused = queue.Queue()
    anonymous.on_connect = lambda c, u, f, rc, p: refused.put(rc)
    anonymous.connect("127.0.0.1", broker.port)
    anonymous.loop_start()
    assert refused.get(timeout=10).is_failure
    anonymous.loop_stop()


def test_a_revoked_device_is_cut_off_at_once(secured, tmp_path):
    gateway, broker, account, provision = secured
    a = provision("W01")
    device = account(a["mqtt_user"], a["mqtt_password"])
    assert device.ok
    status, answer = call(gateway, "POST", "/api/v1/devices/W01/revoke", key=TECH)
    assert status == 200 and json.loads(answer)["revoked_at"] is not None
    wait_until(lambda: ("gone" in [e[0] for e in list(device.connected.queue) if isinstance(e, tuple)]), 10,
               "the broker to drop the revoked device's connection")
    device.client.loop_stop()
    assert not account(a["mqtt_user"], a["mqtt_password"]).ok
    assert "W01:" not in (tmp_path / "passwords").read_text()
    assert call(gateway, "POST", "/api/v1/devices/W01/credentials", key=TECH)[0] == 409
    audit = [row[0] for row in gateway.reader.execute("SELECT action FROM audit ORDER BY id")]
    assert audit == ["register_device", "issue_credentials", "revoke_device"]


def test_the_gateway_refuses_devices_the_registry_does_not_know_and_they_keep_their_ratings(
        gateway_factory, wire_device):
    from tests.helpers import register_device

    gateway = gateway_factory(**{"mqtt.registered_only": True})
    stranger = wire_device("W09")
    stranger.press("satisfied")
    codes = lambda: [r["code"] for r in gateway.reader.execute("SELECT code FROM rejects")]  # noqa: E731
    wait_until(lambda: codes() == ["unknown_device"], 10, "the stranger's rating refused and recorded")
    assert stored(gateway, "W09") == 0 and not stranger.all_acked() and stranger.rejects.empty()
    register_device(gateway.writer, "W09")  # the technician registers it; its next resend is taken
    gateway.gate.refresh()
    stranger.resend()
    wait_until(stranger.all_acked, 10, "the rating stored once the device is registered")
    assert stored(gateway, "W09") == 1


def test_the_firmware_obeys_only_what_the_gateway_signed(gateway_factory, sim_device, broker, province):
    """A rogue client on the broker publishes a prompt with its own QR code: the evaluator ignores it, while
    the gateway's own signed prompt, config and acks work."""
    from tests.helpers import register_device

    gateway = gateway_factory(province.url, **{"api.keys": [key_entry(TECH, ["technician", "window"], "t")]})
    register_device(gateway.writer, "W01", window_no="A01")
    issued = gateway.writer.call(lambda conn: brokerauth.issue(conn, "W01"))
    gateway.gate.refresh()
    device = sim_device("W01", site_extra={"command_key": issued["command_key"]})
    wait_until(lambda: gateway.counter("ingest_status") >= 1, 20, "the device online")
    errors = device.flash / "errors.log"

    before = device.last_frame
    rogue = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="rogue")
    rogue.connect("127.0.0.1", broker.port)
    rogue.loop_start()
    fake = codec.encode({"v": 1, "k": "prompt", "case": "FAKE1", "text": "请扫码领取补贴",
                         "qr": {"n": 21, "b": "A" * 76}, "ttl": 30})
    rogue.publish(codec.topic(HALL, "W01", "prompt"), fake, qos=1).wait_for_publish(10)
    guessed = codec.sign(codec.topic(HALL, "W01", "prompt"), fake, "00" * 16)  # signed with a guessed key
    rogue.publish(codec.topic(HALL, "W01", "prompt"), guessed, qos=1).wait_for_publish(10)
    rogue.loop_stop()
    wait_until(lambda: errors.exists() and errors.read_text().count("unsigned message ignored") == 2, 10,
               "the device to refuse both forgeries")
    assert all(f["kind"] != "prompt" for f in device.frames if f["frame"] > before)

    status, answer = call(gateway, "POST", "/api/v1/cases", {
        "project_no": "REAL1", "task_code": "T1", "task_name": "不动产登记", "dept_code": "11361100MB1234567X",
        "staff_no": "N0321", "window_no": "A01"}, key=TECH)
    assert status == 200, answer
    device.wait_frame("prompt", after=before, timeout=10)
    device.press(0)
    wait_until(lambda: [r["case_ref"] for r in gateway.reader.execute("SELECT case_ref FROM ratings")] == ["REAL1"], 10,
               "the press on the real prompt stored")
    status, _ = call(gateway, "PUT", "/api/v1/devices/W01/config", {"bright": 35}, key=TECH)
    assert status == 200
    wait_until(lambda: gateway.reader.execute("SELECT config_ver FROM devices WHERE dev = 'W01'").fetchone()[0]
               == 1, 15, "the signed config applied and reported")
    assert errors.read_text().count("unsigned message ignored") == 2  # the gateway's acks, time, config: all taken


def test_revoke_and_ca_init_from_the_command_line(secured, tmp_path):
    """The technician's commands: revoke a stolen device (account gone, broker reloaded, audited as the OS
    user), and make the hall CA once."""
    import getpass

    from gateway import settings
    from tests.test_gateway_cli import run_cli

    gateway, broker, account, provision = secured
    a = provision("W01")
    device = account(a["mqtt_user"], a["mqtt_password"])
    assert device.ok
    config = tmp_path / "gateway.toml"
    config.write_text(settings.dump(gateway.config))
    result = run_cli("revoke", "W01", "--config", str(config))
    assert result.exit_code == 0 and "W01 revoked" in result.output, result.output
    wait_until(lambda: ("gone" in [e[0] for e in list(device.connected.queue) if isinstance(e, tuple)]), 10,
               "the broker to drop the revoked device")
    assert not account(a["mqtt_user"], a["mqtt_password"]).ok
    actors = [tuple(r) for r in gateway.reader.execute("SELECT actor, action FROM audit WHERE action = ?",
                                                        ("revoke_device",))]
    assert actors == [(f"cli:{getpass.getuser()}", "revoke_device")]
    assert run_cli("revoke", "W99", "--config", str(config)).exit_code == 1

    made = run_cli("ca-init", "--dir", str(tmp_path / "ca"), "--hall", "h1", "--host", "127.0.0.1")
    assert made.exit_code == 0 and "ca.crt" in made.output
    again = run_cli("ca-init", "--dir", str(tmp_path / "ca"), "--hall", "h1", "--host", "127.0.0.1")
    assert again.exit_code == 1 and "already holds a CA" in again.output
