"""100,000 random and mutated messages through the gateway's decoder (CPython) and the firmware's (the same
codec on the MicroPython unix port), as each receives them: topic and payload, with the command mac check.
No crash on either side; every message accepted or refused with a protocol error code; both sides agree."""
from __future__ import annotations

import collections
import json
import random
import struct
import subprocess
import sys

from protocol import codec
from simulator import micropython
from tests.conftest import REPO
from tests.test_protocol_agreement import mutations
from tests.test_protocol_vectors import CASES

SCRIPT = REPO / "tests" / "micropython" / "fuzz_decode.py"
KEY = "00112233445566778899aabbccddeeff"
COUNT = 100_000


def topic_for(rnd: random.Random, payload: bytes) -> str:
    """Mostly the topic the payload claims to belong on (so the decoder gets past it), else a damaged one."""
    try:
        claimed = json.loads(payload)
        kind, dev = str(claimed.get("k")), str(claimed.get("dev", "W01"))
    except (ValueError, AttributeError):
        kind, dev = rnd.choice(list(codec.SCHEMAS)), "W01"
    direction = codec.SCHEMAS[kind][0] if kind in codec.SCHEMAS else "up"
    if rnd.random() < 0.85:
        return f"hcp/v1/361102-xz/{dev}/{direction}/{kind}"
    topic = f"hcp/v1/361102-xz/{rnd.choice(['W02', '', 'a/b', '设备', 'x' * 40])}/{rnd.choice(['up', 'down', 'x'])}/" \
            f"{rnd.choice(list(codec.SCHEMAS) + ['nope', ''])}"
    return topic if rnd.random() < 0.8 else topic[:rnd.randrange(len(topic) + 1)]


VALID = [c["message"] for _, c in CASES if "message" in c and "error" not in c.get("expect", {})]
ODD_VALUES = [None, True, 0, -1, 2**53, 1.5, "", "W01", "0a1b2c3d", "张三", "x" * 300, [], ["501"],
              {"n": 21, "b": "A" * 76}, {"n": 22}, "satisfied", "online"]


def random_message(rnd: random.Random) -> dict:
    """A valid message with none, one or two of its fields replaced by odd values, dropped, or added."""
    msg = dict(rnd.choice(VALID))
    for _ in range(rnd.choice([0, 0, 1, 2])):
        name = rnd.choice(sorted(msg) + ["extra"])
        if rnd.random() < 0.3:
            msg.pop(name, None)
        else:
            msg[name] = rnd.choice(ODD_VALUES)
    return msg


def corpus(count: int, seed: int = 8) -> list[tuple[bytes, bytes]]:
    rnd = random.Random(seed)
    mutated = mutations(count // 2, seed)
    records = []
    for i in range(count):
        share = i % 4
        if share < 2:
            payload = mutated[i // 2 % len(mutated)]
        elif share == 2:
            payload = bytes(rnd.randrange(256) for _ in range(rnd.randrange(0, 1100 if rnd.random() < 0.1 else 80)))
        else:
            payload = json.dumps(random_message(rnd), ensure_ascii=rnd.random() < 0.5).encode()
        topic = topic_for(rnd, payload).encode()
        if rnd.random() < 0.03:  # a message that names another device than its topic
            topic = topic.replace(b"/W01/", b"/W09/")
        if rnd.random() < 0.1 and payload.endswith(b"}"):  # some carry a mac: right, wrong, or mangled
            signed = codec.sign(topic.decode(errors="replace"), payload, KEY) if len(payload) < 900 else payload
            payload = signed if rnd.random() < 0.5 else signed[:-5] + b'abc"}'
        records.append((topic[:1000], payload[:4000]))
    return records


def test_a_hundred_thousand_random_and_mutated_messages_neither_crash_nor_disagree(tmp_path):
    records = corpus(COUNT)
    path = tmp_path / "fuzz.bin"
    with open(path, "wb") as out:
        for topic, payload in records:
            out.write(struct.pack("<HH", len(topic), len(payload)) + topic + payload)
    gateway = subprocess.run([sys.executable, str(SCRIPT), str(path)], cwd=REPO, capture_output=True, timeout=600,
                             env={"PYTHONPATH": str(REPO)})
    firmware = micropython.run([str(SCRIPT), str(path)], path=[REPO], heapsize="4M", timeout=600)
    assert gateway.returncode == 0 and firmware.returncode == 0, (gateway.stderr + firmware.stderr)[-2000:]
    on_gateway, on_firmware = gateway.stdout.decode().split(), firmware.stdout.decode().split()
    assert len(on_gateway) == len(on_firmware) == COUNT
    assert "!" not in on_gateway + on_firmware, (gateway.stderr + firmware.stderr)[-2000:]
    assert set(on_gateway) <= {".", "s", "not_utf8_topic"} | {v for k, v in vars(codec).items() if k.isupper()
                                                               and isinstance(v, str)}
    differ = [i for i in range(COUNT) if on_gateway[i] != on_firmware[i]]
    assert not differ, [(records[i], on_gateway[i], on_firmware[i]) for i in differ[:3]]
    # Every kind of outcome turns up, or the corpus proves little.
    seen = collections.Counter(on_gateway)
    codes = {codec.BAD_JSON, codec.BAD_FIELD, codec.MISSING_FIELD, codec.BAD_TOPIC, codec.BAD_KIND, codec.TOO_LARGE,
             codec.BAD_VERSION, codec.TOPIC_MISMATCH}
    assert codes | {".", "s"} <= set(seen), seen
    assert seen["."] + seen["s"] > 5000 and seen["s"] > 500, seen
