"""hcp-gateway as an operator uses it: clear errors instead of tracebacks, status, dead letters, export."""
from __future__ import annotations

import csv
import datetime as dt
import io
import json
import tomllib
import urllib.error
import urllib.request

from click.testing import CliRunner

from gateway import settings
from gateway.cli import main as hcp_gateway
from simulator.broker import Broker, free_port
from tests.conftest import REPO
from tests.helpers import GatewayProcess, register_device, wait_until


def run_cli(*args, input=None):
    return CliRunner().invoke(hcp_gateway, list(args), input=input)


def test_sample_config_is_generated_from_the_settings_and_documents_each():
    shipped = (REPO / "gateway" / "gateway.sample.toml").read_text()
    assert shipped == settings.sample(), "regenerate with: hcp-gateway sample-config > gateway/gateway.sample.toml"
    document = tomllib.loads(shipped)
    flat = {f"{section}.{key}" for section, table in document.items() for key in table}
    assert flat == {s.name for s in settings.SETTINGS}
    assert all(s.help for s in settings.SETTINGS)
    assert settings.load(REPO / "gateway" / "gateway.sample.toml")["mqtt.port"] == 1883


def test_bad_configs_are_refused_with_the_setting_named(tmp_path):
    cases = {
        "missing.toml": None,
        "type.toml": "[mqtt]\nport = \"1883\"\n",
        "unknown.toml": "[mqtt]\nhots = \"x\"\n",
        "syntax.toml": "[mqtt\n",
        "level.toml": "[cases]\ndefault_level = \"great\"\n",
        "upstream.toml": "[upstream]\nurl = \"http://127.0.0.1:1\"\n",
    }
    messages = {}
    for name, text in cases.items():
        if text is not None:
            (tmp_path / name).write_text(text)
        result = run_cli("run", "--config", str(tmp_path / name))
        assert result.exit_code == 1
        assert "Traceback" not in result.output
        messages[name] = result.output
    assert "does not exist" in messages["missing.toml"]
    assert "mqtt.port must be int" in messages["type.toml"]
    assert "unknown setting mqtt.hots" in messages["unknown.toml"]
    assert "not valid TOML" in messages["syntax.toml"]
    assert "cases.default_level must be one of" in messages["level.toml"]
    assert "app_key and upstream.app_secret are needed" in messages["upstream.toml"]


def test_unwritable_database_is_a_clear_error(tmp_path):
    config = tmp_path / "g.toml"
    config.write_text(settings.dump({"store.path": str(tmp_path / "no" / "such" / "dir" / "g.db"), "http.port": 0}))
    result = run_cli("run", "--config", str(config))
    assert result.exit_code == 1
    assert "cannot open database" in result.output and "Traceback" not in result.output


def health(port: int) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_unreachable_broker_is_reported_and_the_gateway_connects_when_it_appears(tmp_path):
    broker_port, http_port = free_port(), free_port()
    gateway = GatewayProcess(tmp_path, {"mqtt.port": broker_port, "store.path": str(tmp_path / "g.db"),
                                        "http.port": http_port, "api.port": 0}).start()
    try:
        wait_until(lambda: "cannot reach the broker" in gateway.log_path.read_text(errors="replace"),
                   what="the broker error in the log")
        status, body = wait_until(lambda: _try(health, http_port), what="the monitor port")
        assert status == 503 and body["broker"] is False
        with Broker(tmp_path / "broker", port=broker_port):
            wait_until(lambda: health(http_port)[0] == 200, what="healthy once the broker is up")
        log_lines = [json.loads(line) for line in gateway.log_path.read_text().splitlines()]
        assert all({"t", "level", "logger", "msg"} <= set(line) for line in log_lines)
    finally:
        gateway.stop()


def _try(fn, *args):
    try:
        return fn(*args)
    except OSError:
        return None


def test_status_dead_letters_and_export(gateway_factory, tmp_path, wire_device):
    gateway = gateway_factory()
    register_device(gateway.writer, "W01")
    device = wire_device("W01")
    device.press("very_satisfied")
    device.press("dissatisfied", reasons=["502"])
    wait_until(device.all_acked, what="acks")
    gateway.writer.call(lambda conn: conn.execute("UPDATE outbox SET state = 'dead', last_error = 'E102: test' "
                                                  "WHERE rating_id = 2"))
    config = tmp_path / "g.toml"
    config.write_text(settings.dump({"store.path": gateway.config["store.path"]}))

    status = json.loads(run_cli("status", "--config", str(config)).output)
    assert (status["ratings_stored"], status["pending"], status["dead_letters"]) == (2, 1, 1)
    assert status["oldest_pending_age_s"] >= 0

    listed = run_cli("dead-letters", "--config", str(config)).output.splitlines()
    assert [json.loads(line)["last_error"] for line in listed] == ["E102: test"]
    assert "1 dead letters queued again" in run_cli("dead-letters", "--config", str(config), "--retry").output
    assert json.loads(run_cli("status", "--config", str(config)).output)["dead_letters"] == 0

    today = dt.datetime.now(dt.timezone(dt.timedelta(hours=8))).date().isoformat()  # export days are China days
    exported = run_cli("export", "--config", str(config), "--from", "2000-01-01", "--to", today).output
    rows = list(csv.DictReader(io.StringIO(exported)))
    assert [(r["level"], r["满意度"], r["reasons"]) for r in rows] == [
        ("very_satisfied", "非常满意", ""), ("dissatisfied", "不满意", "502")]


def test_status_without_a_database_says_so(tmp_path):
    config = tmp_path / "g.toml"
    config.write_text(settings.dump({"store.path": str(tmp_path / "none.db")}))
    result = run_cli("status", "--config", str(config))
    assert result.exit_code == 1 and "no database at" in result.output


def test_metrics_endpoint_speaks_prometheus(gateway_factory, wire_device):
    gateway = gateway_factory()
    device = wire_device("W01")
    device.press()
    wait_until(device.all_acked, what="ack")
    with urllib.request.urlopen(f"http://127.0.0.1:{gateway.monitor.port}/metrics", timeout=5) as response:
        text = response.read().decode()
    assert "# TYPE hcp_ingest_stored_total counter\nhcp_ingest_stored_total 1.0" in text
    assert "hcp_outbox_pending 1.0" in text
