# What every ESP32-S3 evaluator has besides its panel: five buttons (active-low, pulled up), a status LED,
# a buzzer, Wi-Fi, a watchdog. The panel boards (esp32s3_tft.py, esp32s3_oled.py) add their display.
import asyncio

import machine
import network

BUTTON_PINS = (4, 5, 6, 7, 15)  # 非常满意 ... 非常不满意, left to right
LED_PIN = 2
BUZZER_PIN = 16
WATCHDOG_MS = 30000


class Led:
    def __init__(self):
        self.pin = machine.Pin(LED_PIN, machine.Pin.OUT)

    def on(self, lit):
        self.pin.value(1 if lit else 0)


class Buzzer:
    def __init__(self):
        self.pwm = machine.PWM(machine.Pin(BUZZER_PIN), freq=2700, duty_u16=0)
        self.volume = 60

    def beep(self, ms):
        self.pwm.duty_u16(self.volume * 327)
        asyncio.create_task(self._stop(ms))

    async def _stop(self, ms):
        await asyncio.sleep_ms(ms)
        self.pwm.duty_u16(0)


class Net:
    """Wi-Fi from the site file; sockets through asyncio streams, as on the unix port."""

    def __init__(self):
        self.wlan = network.WLAN(network.STA_IF)

    async def up(self, ssid, password):
        self.wlan.active(True)
        while not self.wlan.isconnected():  # a router that boots slower than us: keep trying
            try:
                self.wlan.connect(ssid, password)
            except OSError:
                pass
            for _ in range(20):
                if self.wlan.isconnected():
                    return
                await asyncio.sleep_ms(500)

    def isconnected(self):
        return self.wlan.isconnected()

    async def open_connection(self, host, port, tls=None):
        if not self.wlan.isconnected():
            raise OSError("no Wi-Fi")
        if tls is None:
            return await asyncio.open_connection(host, port)
        return await asyncio.open_connection(host, port, ssl=tls, server_hostname=host)

    def rssi(self):
        try:
            return self.wlan.status("rssi")
        except (OSError, ValueError):
            return None


class Watchdog:
    def __init__(self):
        self.wdt = machine.WDT(timeout=WATCHDOG_MS)

    def feed(self):
        self.wdt.feed()


class BaseBoard:
    flash = ""  # files live at the root of littlefs

    def __init__(self, display):
        self.buttons = [machine.Pin(p, machine.Pin.IN, machine.Pin.PULL_UP) for p in BUTTON_PINS]
        self.display = display
        self.led = Led()
        self.buzzer = Buzzer()
        self.net = Net()
        self.watchdog = Watchdog()

    async def start(self):
        import json

        try:
            with open("/site.json") as f:
                wifi = json.load(f).get("wifi") or {}
        except (OSError, ValueError):
            wifi = {}
        if wifi.get("ssid"):
            asyncio.create_task(self.net.up(wifi["ssid"], wifi.get("password", "")))

    def reset(self):
        machine.reset()
