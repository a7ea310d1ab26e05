"""TLS between the devices, the gateway and the broker, with the hall's own CA: the real firmware on the unix
port (mbedTLS) and the gateway (paho) connect to a TLS-only Mosquitto; plain MQTT and a stranger's CA do not."""
from __future__ import annotations

import logging
import queue
import shutil
import ssl

import paho.mqtt.client as mqtt
import pytest

from gateway import hallca
from gateway.service import Gateway
from simulator.broker import Broker
from tests.helpers import gateway_config, register_device, wait_until


@pytest.fixture
def tls_broker(tmp_path):
    files = hallca.init(tmp_path / "ca", "361102-xz", ["127.0.0.1"])
    with Broker(tmp_path / "broker", tls={k: str(v) for k, v in files.items()}) as broker:
        yield broker, files


def test_firmware_and_gateway_speak_tls_to_the_broker_and_plaintext_is_refused(tmp_path, tls_broker,
                                                                                firmware_tree):
    from simulator.device import SimDevice

    broker, files = tls_broker
    gateway = Gateway(gateway_config(broker.port, tmp_path / "gateway.db", **{"mqtt.tls_ca": str(files["ca"])}))
    gateway.start()
    devices = []
    try:
        assert gateway.ingest.subscribed.wait(15), "the gateway did not connect over TLS"
        register_device(gateway.writer, "W01")
        plain = SimDevice(tmp_path / "plain", firmware_tree, "W02", "361102-xz", broker.port)
        devices.append(plain.start())
        wait_until(lambda: "wrong version number" in broker.log_tail(50) or "protocol error" in broker.log_tail(50),
                   15, "the broker to refuse the plain connection")
        secure = SimDevice(tmp_path / "secure", firmware_tree, "W01", "361102-xz", broker.port,
                           site_extra={"ca": "ca.der"})
        shutil.copy(files["ca_der"], secure.flash / "ca.der")  # as provisioning writes it
        devices.append(secure.start())
        wait_until(lambda: gateway.registry.online("W01"), 20, "the firmware online over TLS")
        assert gateway.reader.execute("SELECT count(*) FROM devices WHERE dev = 'W02'").fetchone()[0] == 0
        # A plain MQTT client is refused too: the broker hangs up before any CONNACK.
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="plain")
        outcome = queue.Queue()
        client.on_connect = lambda c, u, f, rc, p: outcome.put("connected")
        client.on_disconnect = lambda c, u, f, rc, p: outcome.put("dropped")
        client.connect("127.0.0.1", broker.port, keepalive=5)
        client.loop_start()
        assert outcome.get(timeout=10) == "dropped"
        client.loop_stop()
    finally:
        for device in devices:
            device.stop()
        gateway.stop()


def test_a_broker_certificate_from_another_ca_is_not_trusted(tmp_path, tls_broker, caplog):
    broker, _ = tls_broker
    stranger = hallca.init(tmp_path / "other-ca", "elsewhere", ["127.0.0.1"])
    caplog.set_level(logging.ERROR, logger="gateway.ingest")
    gateway = Gateway(gateway_config(broker.port, tmp_path / "gateway.db", **{"mqtt.tls_ca": str(stranger["ca"])}))
    gateway.start()
    try:
        wait_until(lambda: "certificate verify failed" in caplog.text, 15, "the gateway to refuse the certificate")
        assert not gateway.ingest.connected.is_set()
    finally:
        gateway.stop()
    context = ssl.create_default_context(cafile=str(stranger["ca"]))
    assert context.verify_mode == ssl.CERT_REQUIRED


def test_the_ca_is_never_replaced(tmp_path):
    hallca.init(tmp_path / "ca", "h", ["127.0.0.1"])
    with pytest.raises(hallca.CaError, match="already holds a CA"):
        hallca.init(tmp_path / "ca", "h", ["127.0.0.1"])
    assert oct((tmp_path / "ca" / "ca.key").stat().st_mode & 0o777) == "0o600"


def test_provisioning_with_the_hall_ca_brings_a_board_online_over_tls(tmp_path, tls_broker, firmware_tree):
    """hcp-flash provision --ca: the board gets the CA, its broker account and command key, and comes online
    over TLS with them; the gateway signs what it sends it."""
    import json

    from click.testing import CliRunner

    from flasher.cli import main as hcp_flash
    from gateway.access import key_entry
    from simulator.serialboard import SerialBoard

    broker, files = tls_broker
    gateway = Gateway(gateway_config(broker.port, tmp_path / "gateway.db", **{
        "mqtt.tls_ca": str(files["ca"]), "mqtt.registered_only": True,
        "api.keys": [key_entry("tech-key", ["technician"], "tech")]}))
    gateway.start()
    board = SerialBoard(tmp_path / "board").start()
    try:
        roster = tmp_path / "roster.csv"
        roster.write_text("device,hall,window,dept_code,staff_no,broker,broker_port,board\n"
                          f"W05,361102-xz,A05,11361100MB1234567X,N1,127.0.0.1,{broker.port},sim\n")
        result = CliRunner().invoke(hcp_flash, [
            "provision", "--port", board.url, "--roster", str(roster), "--row", "1", "--tree", str(firmware_tree),
            "--gateway", f"http://127.0.0.1:{gateway.api.port}", "--api-key", "tech-key", "--wait", "30",
            "--ca", str(files["ca_der"])])
        assert result.exit_code == 0, result.output
        site = json.loads((tmp_path / "board" / "site.json").read_text())
        assert site["ca"] == "ca.der" and (tmp_path / "board" / "ca.der").read_bytes() == files["ca_der"].read_bytes()
        assert site["command_key"] and site["user"] == "W05"
        assert gateway.registry.online("W05")
    finally:
        board.stop()
        gateway.stop()
