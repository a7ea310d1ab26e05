"""The codec's limits and helpers, on CPython (the vectors cover both interpreters)."""
from __future__ import annotations

import hashlib
import hmac
import subprocess
import sys
import textwrap

import pytest
import qrcode
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol import codec
from tests.conftest import REPO


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


def test_cpython_never_imports_the_strict_scanner():
    # protocol/strictjson.py is MicroPython's alone: CPython's own decoder and parser are strict already.
    probe = textwrap.dedent("""
        import sys
        from protocol import codec
        for payload in (b'{"v":1,"k":"time","t":1,"tz":480}', b'{"v":1,}', b'\\xc0\\xaf'):
            try:
                codec.decode(payload)
            except codec.ProtocolError:
                pass
        print("protocol.strictjson" in sys.modules)
    """)
    done = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"


# ---- the codec's own HMAC-SHA256 (MicroPython has no hmac module) against the standard library's ----

def stdlib_hmac(key: bytes, data: bytes) -> bytes:
    return hmac.new(key, data, hashlib.sha256).digest()


# Lengths drawn evenly, so keys past the 64-byte block (which HMAC hashes first) are as common as short ones.
KEYS = st.integers(0, 200).flatmap(lambda n: st.binary(min_size=n, max_size=n))
MESSAGES = st.integers(0, 300).flatmap(lambda n: st.binary(min_size=n, max_size=n))


@settings(max_examples=2000, deadline=None)
@given(KEYS, MESSAGES)
def test_hmac_matches_the_standard_library(key, data):
    assert codec._hmac_sha256(key, data) == stdlib_hmac(key, data)


@pytest.mark.parametrize("key_length", [0, 1, 16, 32, 63, 64, 65, 127, 128, 129, 1000])
@pytest.mark.parametrize("data_length", [0, 1, 55, 56, 63, 64, 65, 1023])
def test_hmac_matches_the_standard_library_at_block_boundaries(key_length, data_length):
    key = bytes((7 * i + key_length) % 256 for i in range(key_length))
    data = bytes((13 * i + data_length) % 256 for i in range(data_length))
    assert codec._hmac_sha256(key, data) == stdlib_hmac(key, data)


TOPICS = st.builds(codec.topic, st.sampled_from(["361102-xz", "H1"]), st.sampled_from(["W01-A", "W02"]),
                   st.sampled_from(["ack", "reject", "prompt", "cancel", "config", "time"]))
# The mac covers the exact bytes, whatever they are: any body (at least the opening brace of a real message)
# closed by the brace that sign() replaces.
PAYLOADS = st.binary(min_size=1, max_size=codec.MAX_MESSAGE - codec.SIGNED_OVERHEAD - 1).map(lambda body: body + b"}")


def another_key(key: bytes) -> bytes:
    # Not key + b"\0": HMAC pads a short key with zeros, so that one signs alike.
    return bytes([key[0] ^ 1]) + key[1:] if key else b"\1"


@settings(max_examples=1000, deadline=None)
@given(TOPICS, PAYLOADS, KEYS)
def test_sign_appends_the_standard_library_mac(topic, payload, key):
    signed = codec.sign(topic, payload, key.hex())
    mac = stdlib_hmac(key, topic.encode() + b"\n" + payload).hex()[:32]
    assert signed == payload[:-1] + b',"mac":"' + mac.encode() + b'"}'
    assert codec.signed_by(topic, signed, key.hex())
    assert not codec.signed_by(topic, signed, another_key(key).hex())
