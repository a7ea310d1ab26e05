"""The real firmware on the MicroPython unix port, against real Mosquitto and the real gateway: what a
citizen sees and presses, and what reaches the gateway."""
from __future__ import annotations

import json
import queue
import sqlite3
import struct
import time

import paho.mqtt.client as mqtt
import zxingcpp

from gateway import prompts
from protocol import codec
from tests.helpers import HALL, register_device, wait_until

URL = "https://hcp.example.gov.cn/r/Tk3xQ9vB2mLp7WcZ"


def publisher(port: int) -> mqtt.Client:
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="test-gateway-side")
    client.connect("127.0.0.1", port)
    client.loop_start()
    return client


def send(client: mqtt.Client, dev: str, message: dict, retain: bool = False) -> None:
    info = client.publish(codec.topic(HALL, dev, message["k"]), codec.encode(message), qos=1, retain=retain)
    info.wait_for_publish(5)


def tell(gateway, dev: str, message: dict, retain: bool = False) -> None:
    """Send a message to a device as the gateway does (its network thread owns the MQTT client)."""
    gateway.downlink.send(dev, message["k"], codec.encode(message), retain=retain)


def show_prompt(gateway, device, case: str) -> None:
    """Once the device is online at the gateway, prompt it with `case` and wait until it shows it."""
    device.wait_frame("idle")
    wait_until(lambda: gateway.counter("ingest_status") >= 1, what="the device online at the gateway")
    tell(gateway, device.device, prompt(case))
    device.wait_frame("prompt")


def prompt(case: str = "C2026-0001", url: str = URL, ttl: int = 30) -> dict:
    return prompts.prompt(case, "张*的 不动产登记", url, ttl)


def ratings(gateway) -> list[tuple]:
    with sqlite3.connect(gateway.config["store.path"]) as conn:
        return conn.execute("SELECT origin, case_ref, level, reasons FROM ratings ORDER BY id").fetchall()


def font_glyph(font_path, char: str) -> list[list[bool]]:
    data = font_path.read_bytes()
    width, height, count = struct.unpack_from("<BBH", data, 4)
    codes = struct.unpack_from(f"<{count}H", data, 8)
    at = 8 + 2 * count + codes.index(ord(char)) * (width * height // 8)
    rows = []
    for y in range(height):
        row_bytes = data[at + y * width // 8: at + (y + 1) * width // 8]
        rows.append([bool(row_bytes[x // 8] & (0x80 >> (x % 8))) for x in range(width)])
    return rows


def test_prompt_shows_a_qr_that_decodes_to_the_case_url_and_chinese_text(broker, sim_device, firmware_tree):
    device = sim_device("W01")
    device.wait_frame("idle")
    gateway_side = publisher(broker.port)
    send(gateway_side, "W01", prompt())
    device.wait_frame("prompt")
    image = device.screenshot()
    decoded = zxingcpp.read_barcodes(image)
    assert [r.text for r in decoded] == [URL]
    # The title's first character is drawn exactly as the font file has it: white on the blue bar.
    glyph = font_glyph(firmware_tree / "font.bin", "请")
    drawn = [[image.getpixel((4 + x, 2 + y)) == (255, 255, 255) for x in range(16)] for y in range(16)]
    assert drawn == glyph and any(any(row) for row in glyph)
    gateway_side.loop_stop()


def test_one_press_counts_and_is_linked_to_the_case(broker, sim_device, gateway_factory):
    gateway = gateway_factory()
    register_device(gateway.writer, "W01")
    device = sim_device("W01")
    show_prompt(gateway, device, "C2026-0002")
    before = device.last_frame
    device.press(1)
    device.press(3)  # a second and third press on the same prompt: not ratings
    device.press(0)
    device.wait_frame("thanks", after=before)
    wait_until(lambda: ratings(gateway), what="the rating at the gateway")
    time.sleep(1.0)  # had the extra presses counted, they would have arrived by now
    assert ratings(gateway) == [("W01", "C2026-0002", "satisfied", None)]


def test_a_bouncing_switch_makes_one_rating(broker, sim_device, gateway_factory):
    gateway = gateway_factory()
    device = sim_device("W01")
    record_policy(gateway)
    before = device.last_frame
    device.press(2, bounce=6)
    device.wait_frame("thanks", after=before)
    wait_until(lambda: ratings(gateway), what="the rating")
    time.sleep(1.0)
    assert ratings(gateway) == [("W01", None, "basic", None)]


def record_policy(gateway, **settings) -> None:
    """Make W01 record presses outside a prompt (and wait until it reports the config applied)."""
    tell(gateway, "W01", {"v": 1, "k": "config", "ver": 1, "policy": "record", **settings}, retain=True)
    wait_until(lambda: gateway_devices(gateway).get("W01") == 1, what="the config applied")


def gateway_devices(gateway) -> dict:
    with sqlite3.connect(gateway.config["store.path"]) as conn:
        return dict(conn.execute("SELECT dev, config_ver FROM devices").fetchall())


def test_a_press_outside_a_prompt_shows_a_hint_and_is_not_a_rating(broker, sim_device, gateway_factory):
    gateway = gateway_factory()
    device = sim_device("W01")
    device.wait_frame("idle")
    before = device.last_frame
    device.press(0)
    device.wait_frame("hint", after=before)
    device.wait_frame("idle", after=before, timeout=10)  # and back to idle by itself
    assert ratings(gateway) == []


def test_a_bad_rating_asks_for_a_reason(broker, sim_device, gateway_factory):
    gateway = gateway_factory()
    device = sim_device("W01")
    show_prompt(gateway, device, "C2026-0003")
    before = device.last_frame
    device.press(4)  # 非常不满意
    device.wait_frame("reasons", after=before)
    time.sleep(0.2)
    device.press(1)  # the second reason offered: 502 办事效率低
    device.wait_frame("thanks", after=before)
    wait_until(lambda: ratings(gateway), what="the rating")
    assert ratings(gateway) == [("W01", "C2026-0003", "very_dissatisfied", "502")]


def test_power_cut_while_offline_loses_no_confirmed_press(broker, sim_device, gateway_factory):
    gateway = gateway_factory()
    device = sim_device("W01")
    record_policy(gateway, reason_s=3)
    device.unplug()
    device.wait_frame("idle", after=device.last_frame)  # redrawn with the offline mark
    for button in (0, 4):
        before = device.last_frame
        device.press(button)
        if button == 4:
            device.wait_frame("reasons", after=before)  # no reason chosen: it times out
        thanks = device.wait_frame("thanks", after=before, timeout=30)
        device.wait_frame("idle", after=thanks["frame"])  # the thanks screen and the mashing guard are over
    device.power_cut()  # right after the thanks screens, before any network
    assert ratings(gateway) == []
    restarted = sim_device("W01")  # same flash folder: the outbox is read back
    restarted.wait_frame("idle")
    wait_until(lambda: len(ratings(gateway)) == 2, what="both ratings after the restart")
    assert [r[2] for r in ratings(gateway)] == ["very_satisfied", "very_dissatisfied"]


def test_reconnects_after_the_broker_restarts(broker, sim_device, gateway_factory):
    gateway = gateway_factory()
    device = sim_device("W01")
    record_policy(gateway)
    broker.stop()
    before = device.last_frame
    device.press(1)
    device.wait_frame("thanks", after=before)
    broker.start()
    wait_until(lambda: ratings(gateway), timeout=60, what="the rating after the broker came back")
    assert ratings(gateway) == [("W01", None, "satisfied", None)]


def test_a_rejected_rating_leaves_the_outbox_and_is_reported(broker, sim_device):
    statuses: queue.Queue = queue.Queue()
    fake_gateway = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="fake-gateway")
    fake_gateway.on_message = lambda c, u, m: statuses.put((m.topic, codec.decode(m.payload)))
    fake_gateway.connect("127.0.0.1", broker.port)
    fake_gateway.subscribe(codec.subscription(HALL, "W01", codec.UP), qos=1)
    fake_gateway.loop_start()
    device = sim_device("W01")
    send(fake_gateway, "W01", {"v": 1, "k": "config", "ver": 1, "policy": "record"}, retain=True)
    device.press(0)
    while True:
        topic, message = statuses.get(timeout=20)
        if message["k"] == "rating":
            break
    send(fake_gateway, "W01", {"v": 1, "k": "reject", "ref": message["id"], "code": "bad_field"})
    time.sleep(0.5)
    send(fake_gateway, "W01", {"v": 1, "k": "config", "ver": 2, "policy": "record"}, retain=True)  # asks for status
    while True:
        topic, status = statuses.get(timeout=20)
        if status["k"] == "status" and status.get("cfg") == 2:
            break
    assert (status["outbox"], status["err"]) == (0, "rejected: bad_field")
    fake_gateway.loop_stop()


def test_a_bad_site_file_shows_an_error_instead_of_crashing(broker, sim_device, tmp_path):
    device = sim_device("W01", site_extra={"broker": ""})
    device.wait_frame("error")
    time.sleep(1.0)
    assert device.proc.poll() is None  # still up, showing the error, not restarting in a loop
    assert "site.json 缺少 broker" in (device.flash / "errors.log").read_text()
    assert json.loads((device.flash / "site.json").read_text())["broker"] == ""


def test_the_oled_variant_shows_a_prompt_whose_qr_decodes(broker, sim_device):
    device = sim_device("W01", size=(128, 64))
    device.wait_frame("idle")
    gateway_side = publisher(broker.port)
    send(gateway_side, "W01", prompt(url="https://x.cn/r/T3xQ9"))
    device.wait_frame("prompt")
    image = device.screenshot().resize((512, 256))
    assert [r.text for r in zxingcpp.read_barcodes(image)] == ["https://x.cn/r/T3xQ9"]
    gateway_side.loop_stop()


def test_a_first_connect_that_fails_is_retried(broker, sim_device, gateway_factory):
    broker.stop()  # the hall's router and broker boot slower than the evaluator
    device = sim_device("W01")
    device.wait_frame("idle")
    time.sleep(1.5)  # a few failed connects
    broker.start()
    gateway = gateway_factory()
    wait_until(lambda: gateway_devices(gateway).get("W01", "absent") != "absent", timeout=60,
               what="the device online after the broker came up")


def test_remote_config_sets_brightness_and_volume_and_is_reported(broker, sim_device, gateway_factory):
    gateway = gateway_factory()
    device = sim_device("W01")
    tell(gateway, "W01", {"v": 1, "k": "config", "ver": 7, "bright": 35, "volume": 20,
                                        "window": "A12", "staff": "李*华", "staff_no": "N0321"}, retain=True)
    wait_until(lambda: gateway_devices(gateway).get("W01") == 7, what="config version 7 reported")
    events = []
    while not device.events.empty():
        events.append(device.events.get_nowait())
    assert {"brightness": 35} in events
