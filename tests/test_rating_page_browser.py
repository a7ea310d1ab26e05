"""The citizen's rating page in real headless Chromium (Debian's package, driven by Playwright): open the
URL decoded from the evaluator's QR code on a phone-sized screen, rate, see the confirmation; a second
attempt is refused."""
from __future__ import annotations

import json
import shutil
import urllib.request

import pytest
import zxingcpp
from playwright.sync_api import sync_playwright

from gateway.access import key_entry
from simulator.broker import free_port
from tests.helpers import DEPT, register_device, wait_until

KEY = "window-system-key-0123456789"
KEYS = [key_entry(KEY, ["window", "technician"], "erp")]
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
                  "--disable-component-update", "--no-first-run", "--disable-sync"]


@pytest.fixture
def browser():
    executable = shutil.which("chromium")
    assert executable, "Debian's chromium is installed by make test (scripts/ensure-system-packages.sh)"
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_FLAGS)
        yield chromium
        chromium.close()


def test_rating_by_phone_from_the_evaluators_qr(gateway_factory, sim_device, province, browser):
    port = free_port()
    gateway = gateway_factory(province.url, **{"api.keys": KEYS, "api.port": port,
                                               "api.public_url": f"http://127.0.0.1:{port}"})
    register_device(gateway.writer, "W01", window_no="A01")
    device = sim_device("W01")
    wait_until(lambda: gateway.registry.online("W01"), what="the evaluator online")
    before = device.last_frame
    body = {"project_no": "3611022026112900099", "task_code": "361100-000-XK-001", "task_name": "不动产登记",
            "dept_code": DEPT, "staff_no": "N0321", "window_no": "A01"}
    request = urllib.request.Request(f"http://127.0.0.1:{port}/api/v1/cases", data=json.dumps(body).encode(),
                                     method="POST", headers={"Authorization": f"Bearer {KEY}",
                                                             "Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        case = json.loads(response.read())
    device.wait_frame("prompt", after=before)
    [decoded] = zxingcpp.read_barcodes(device.screenshot())  # the citizen scans the screen
    assert decoded.text == case["url"]

    phone = browser.new_page(viewport={"width": 360, "height": 740}, device_scale_factor=2, is_mobile=True)
    phone.goto(decoded.text)
    assert phone.title() == "请对本次服务进行评价"
    phone.get_by_label("不满意", exact=True).check()
    phone.get_by_label("办事效率低").check()
    phone.get_by_placeholder("您的意见(选填)").fill("材料退回了两次")
    phone.get_by_role("button", name="提交评价").click()
    phone.wait_for_load_state()
    assert "感谢您的评价" in phone.content()

    phone.goto(decoded.text)  # again, from the same QR
    assert "该办件已评价" in phone.content()
    assert phone.get_by_role("button", name="提交评价").count() == 0
    device.wait_frame("idle", after=before)  # rated by phone: the evaluator stopped asking
    wait_until(lambda: province.count() == 1, what="the rating at the province")
    record = province.records()[0]
    assert (record["pf"], record["satisfaction"], record["evalDetail"]) == ("3", 2, "502")


def test_the_windows_standing_qr_in_a_phones_browser(gateway_factory, province, browser, tmp_path):
    """A phone that scans a window's standing QR rates the window once a day: the page's cookie does it, in a real
    browser. The form fits a phone's screen, styled (checked on the picture, not only the markup)."""
    from PIL import Image

    port = free_port()
    gateway = gateway_factory(province.url, **{"api.keys": KEYS, "api.port": port,
                                               "api.public_url": f"http://127.0.0.1:{port}"})
    register_device(gateway.writer, "W01", window_no="A01")
    url = f"http://127.0.0.1:{port}/w/A01"
    first = browser.new_context(viewport={"width": 360, "height": 740}, device_scale_factor=2, is_mobile=True)
    phone = first.new_page()
    phone.goto(url)
    assert "窗口 A01" in phone.content()
    assert phone.evaluate("document.documentElement.scrollWidth") <= 360  # no sideways scrolling
    phone.screenshot(path=tmp_path / "window-form.png", full_page=True)
    picture = Image.open(tmp_path / "window-form.png").convert("RGB")
    button_blue = dict((color, count) for count, color in picture.getcolors(1 << 24)).get((0x1f, 0x5f, 0xbf), 0)
    assert button_blue > 20000, "the submit button is not drawn in the page's blue"
    for label in ("非常满意", "满意", "基本满意", "不满意", "非常不满意"):
        box = phone.get_by_label(label, exact=True).bounding_box()
        assert box and box["x"] >= 0 and box["x"] + box["width"] <= 360, label
    phone.get_by_label("满意", exact=True).check()
    phone.get_by_role("button", name="提交评价").click()
    phone.wait_for_load_state()
    assert "感谢您的评价" in phone.content()
    phone.goto(url)  # the same phone, the same day
    phone.get_by_label("非常满意", exact=True).check()
    phone.get_by_role("button", name="提交评价").click()
    phone.wait_for_load_state()
    assert "今天已评价过该窗口" in phone.content()

    other = browser.new_context(viewport={"width": 360, "height": 740}, is_mobile=True).new_page()
    other.goto(url)
    other.get_by_label("基本满意", exact=True).check()
    other.get_by_role("button", name="提交评价").click()
    other.wait_for_load_state()
    assert "感谢您的评价" in other.content()
    wait_until(lambda: province.count() == 2, what="the two window ratings at the province")
    assert sorted(r["satisfaction"] for r in province.records()) == [3, 4]
    first.close()
