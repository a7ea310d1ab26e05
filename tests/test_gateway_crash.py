"""No loss and no duplicate at the province when the gateway is SIGKILLed mid-batch or the broker restarts."""
from __future__ import annotations

import random
import sqlite3
import threading
import time

from protocol import codec, upstream
from tests.helpers import APP_KEY, APP_SECRET, HALL, GatewayProcess, prepare_database, wait_until

DEVICES = ["W01", "W02", "W03"]


def expected_eval_ids(devices) -> set[str]:
    return {upstream.eval_id("361102", d.dev, rating_id) for d in devices for rating_id in d.acked}


def run_presses(devices, count: int, stop: threading.Event) -> None:
    """Each device presses `count` times at about 300 ratings/s in all, resending what is unacked."""
    for i in range(count):
        if stop.is_set():
            return
        for device in devices:
            device.press(codec.LEVELS[i % 3])
        time.sleep(0.01)


def check_delivered_exactly_once(devices, province, db_path, total: int) -> None:
    def settled():
        for device in devices:
            device.resend()  # the firmware resends what is unacked
        return all(d.all_acked() for d in devices) and province.count() >= total

    wait_until(settled, timeout=90, what="every rating acked and at the province", interval=1.0)
    records = province.records()
    assert len(records) == total
    assert {r["evalId"] for r in records} == expected_eval_ids(devices)
    with sqlite3.connect(db_path) as conn:
        assert conn.execute("SELECT count(*) FROM ratings").fetchone()[0] == total
        wait_until(lambda: conn.execute("SELECT count(*) FROM outbox WHERE state != 'forwarded'").fetchone()[0] == 0,
                   what="the outbox to record everything as forwarded")


def gateway_values(tmp_path, broker, province) -> dict:
    return {"gateway.hall": HALL, "mqtt.port": broker.port, "store.path": str(tmp_path / "gateway.db"),
            "http.port": 0, "api.port": 0, "upstream.url": province.url, "upstream.app_key": APP_KEY,
            "upstream.app_secret": APP_SECRET, "upstream.area_code": "361102", "upstream.backoff_base_s": 0.05,
            "upstream.backoff_max_s": 0.5, "upstream.batch_size": 50}


def survive(tmp_path, broker, province, wire_device, presses: int, fault) -> None:
    """Ratings flow from three devices through a gateway process while `fault(gateway)` strikes; then every
    one of them must be at the province exactly once."""
    prepare_database(tmp_path / "gateway.db", DEVICES)
    gateway = GatewayProcess(tmp_path, gateway_values(tmp_path, broker, province)).start()
    devices = [wire_device(dev) for dev in DEVICES]
    stop = threading.Event()
    presser = threading.Thread(target=run_presses, args=(devices, presses, stop))
    presser.start()
    try:
        fault(gateway)
        presser.join()
        check_delivered_exactly_once(devices, province, tmp_path / "gateway.db", presses * len(DEVICES))
    finally:
        stop.set()
        gateway.stop()


def test_sigkill_mid_batch_loses_and_duplicates_nothing(tmp_path, broker, province, wire_device):
    rnd = random.Random(7)

    def kill_repeatedly(gateway):
        for _ in range(6):  # at random instants while ratings flow in and out
            time.sleep(rnd.uniform(0.3, 1.0))
            gateway.kill()
            gateway.start()

    survive(tmp_path, broker, province, wire_device, 400, kill_repeatedly)


def test_broker_restart_loses_and_duplicates_nothing(tmp_path, broker, province, wire_device):
    def restart_broker(gateway):
        for _ in range(2):
            time.sleep(0.7)
            broker.restart()

    survive(tmp_path, broker, province, wire_device, 300, restart_broker)
