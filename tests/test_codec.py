"""The codec's limits and helpers, on CPython (the vectors cover both interpreters)."""
from __future__ import annotations

import pytest
import qrcode

from protocol import codec


def qr_matrix(url: str, version: int | None = None):
    q = qrcode.QRCode(version=version, border=0, error_correction=qrcode.constants.ERROR_CORRECT_M)
    q.add_data(url)
    q.make(fit=version is None)
    return q.get_matrix()


def test_largest_prompt_fits_in_one_kib():
    # Version 10 QR, 64 Chinese characters, longest case reference: the worst case the contract allows.
    prompt = {"v": 1, "k": "prompt", "case": "C" * 50, "text": "办" * 64,
              "qr": codec.pack_matrix(qr_matrix("https://x.example/r/token", version=10)), "ttl": 600}
    assert len(codec.encode(prompt)) <= codec.MAX_MESSAGE


def test_largest_config_fits_in_one_kib():
    config = {"v": 1, "k": "config", "ver": 2**31, "hall": "政" * 32, "window": "窗" * 16, "staff": "李" * 16,
              "staff_no": "N" * 16, "policy": "record", "prompt_s": 600, "reason_s": 120, "thanks_s": 60,
              "bright": 100, "volume": 100, "reasons": ["501", "502", "503", "504", "505"],
              "idle_qr": codec.pack_matrix(qr_matrix("https://x.example/w/hall/window", version=10))}
    assert len(codec.encode(config)) <= codec.MAX_MESSAGE


def test_encode_refuses_an_oversized_message(monkeypatch):
    # The field limits keep every v1 message under 1 KiB; the size check guards a future change to them.
    monkeypatch.setattr(codec, "MAX_MESSAGE", 64)
    with pytest.raises(codec.ProtocolError) as err:
        codec.encode({"v": 1, "k": "prompt", "case": "C1", "text": "办" * 10,
                      "qr": codec.pack_matrix(qr_matrix("https://x.example/r")), "ttl": 30})
    assert err.value.code == codec.TOO_LARGE


def test_encode_refuses_an_invalid_message():
    with pytest.raises(codec.ProtocolError) as err:
        codec.encode({"v": 1, "k": "time", "t": 1764383400})
    assert (err.value.code, err.value.field) == (codec.MISSING_FIELD, "tz")


def test_qr_matrix_survives_packing():
    rows = qr_matrix("https://hcp.example.gov.cn/r/Tk3xQ9vB2mLp7Wc")
    n, bits = codec.unpack_matrix(codec.pack_matrix(rows))
    assert n == len(rows)
    assert [[codec.module(bits, n, x, y) for x in range(n)] for y in range(n)] == rows


def test_topics_name_hall_device_direction_and_kind():
    assert codec.topic("H1", "W01", "rating") == "hcp/v1/H1/W01/up/rating"
    assert codec.topic("H1", "W01", "prompt") == "hcp/v1/H1/W01/down/prompt"
    assert codec.subscription("H1", "+", codec.UP) == "hcp/v1/H1/+/up/+"
    assert codec.parse_topic("hcp/v1/H1/W01/down/config") == ("H1", "W01", "config")


def test_error_message_names_code_field_and_reason():
    with pytest.raises(codec.ProtocolError) as err:
        codec.decode(b'{"v":1,"k":"time","t":1,"tz":9999}')
    assert str(err.value) == "bad_field (tz): want an integer -720..840"


def test_levels_have_chinese_labels_and_bad_levels_are_the_last_two():
    assert dict(zip(codec.LEVELS, codec.LEVEL_LABELS))["basic"] == "基本满意"
    assert codec.BAD_LEVELS == codec.LEVELS[3:]
