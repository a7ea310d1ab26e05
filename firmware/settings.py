# Settings: defaults here, the site's own values in site.json on flash (device id, hall, broker and its
# credentials: written at provisioning, never in code), and the remote configuration the gateway retains
# for this device (kept in config.json so the device boots with it even offline).
import json
import os

from protocol import codec

DEFAULTS = {
    "ver": None,
    "hall": "",
    "window": "",
    "staff": "",
    "staff_no": "",
    "policy": "ignore",  # presses outside a prompt: "ignore" (show a hint) or "record" (a rating of no case)
    "prompt_s": 30,
    "reason_s": 15,
    "thanks_s": 3,
    "bright": 80,
    "volume": 60,
    "reasons": ["501", "502", "503", "505", "599"],
    "idle_qr": None,
}
SITE_REQUIRED = ("device", "hall", "broker")


class SettingsError(Exception):
    pass


def load_site(path):
    """The site file; SettingsError names what is missing or wrong, for the error screen."""
    try:
        with open(path) as f:
            site = json.load(f)
    except OSError:
        raise SettingsError("缺少 site.json") from None
    except ValueError:
        raise SettingsError("site.json 格式错误") from None
    for key in SITE_REQUIRED:
        if not site.get(key):
            raise SettingsError("site.json 缺少 " + key)
    if codec.DEVICE(site["device"]) or codec.HALL(site["hall"]):
        raise SettingsError("site.json 设备或大厅编号无效")
    site.setdefault("port", 1883)
    return site


def load_config(path):
    """The last remote configuration received, over the defaults; the defaults alone if none is stored."""
    config = dict(DEFAULTS)
    try:
        with open(path) as f:
            config.update(codec.validate(json.load(f)))
    except (OSError, ValueError, codec.ProtocolError):
        pass
    return config


def save_config(path, message):
    with open(path + ".new", "w") as f:
        json.dump(message, f)
    os.rename(path + ".new", path)
