"""CPython and MicroPython must accept exactly the same payloads, beyond the fixed vectors.

The strict JSON scanner and UTF-8 check that MicroPython needs (protocol/strictjson.py) are compared with
CPython's own parser and decoder on generated input, and thousands of mutated payloads are decoded by both
interpreters.
"""
from __future__ import annotations

import json
import random
import subprocess
import sys

from hypothesis import given, settings
from hypothesis import strategies as st

from protocol import codec, strictjson
from simulator import micropython
from tests.conftest import REPO
from tests.test_protocol_vectors import CASES, parse_run

JSONISH = st.text(alphabet=st.sampled_from(list('{}[]:,"\\ -+.eE0123456789tfnrulsa\t\n\x01é')), max_size=40)


def cpython_strict(text: str) -> bool:
    try:
        obj = json.loads(text, parse_constant=codec._no_constant)
    except (ValueError, RecursionError):
        return False
    return codec._depth(obj) <= codec.MAX_DEPTH


def scanner_accepts(text: str) -> bool:
    try:
        strictjson.scan_json(text)
    except codec.ProtocolError:
        return False
    return True


@settings(max_examples=3000, deadline=None)
@given(JSONISH)
def test_scanner_accepts_what_cpython_accepts(text):
    assert scanner_accepts(text) == cpython_strict(text)


@settings(max_examples=500, deadline=None)
@given(st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
                    | st.text(max_size=8),
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
                    max_leaves=12))
def test_scanner_accepts_all_valid_json(value):
    text = json.dumps(value)
    assert scanner_accepts(text) == (codec._depth(value) <= codec.MAX_DEPTH)


@settings(max_examples=3000, deadline=None)
@given(st.binary(max_size=12))
def test_utf8_check_matches_cpython_decoder(data):
    try:
        data.decode("utf-8")
        valid = True
    except UnicodeDecodeError:
        valid = False
    try:
        strictjson.check_utf8(data)
        checked = True
    except codec.ProtocolError:
        checked = False
    assert checked == valid


def mutations(count: int, seed: int = 20261129) -> list[bytes]:
    """Valid vector payloads, damaged the way a bad link or a fuzzer would: flips, cuts, insertions."""
    rnd = random.Random(seed)
    seeds = [json.dumps(c["message"], ensure_ascii=False).encode() for f, c in CASES if "message" in c]
    specials = b'{}[]:,"\\0-1e.\x00\xff\xc0\xed \t'
    out = []
    for _ in range(count):
        data = bytearray(rnd.choice(seeds))
        for _ in range(rnd.randint(1, 3)):
            pos = rnd.randrange(len(data) + 1)
            op = rnd.random()
            if op < 0.4 and pos < len(data):
                data[pos] = rnd.choice(specials)
            elif op < 0.7:
                data[pos:pos] = bytes([rnd.choice(specials)])
            elif op < 0.85:
                del data[pos:pos + rnd.randint(1, 4)]
            else:
                data = data[:pos]
        out.append(bytes(data))
    return out


def test_both_interpreters_agree_on_mutated_payloads(tmp_path):
    payloads = mutations(4000)
    folder = tmp_path / "vectors"
    folder.mkdir()
    cases = [{"name": str(i), "payload_hex": p.hex()} for i, p in enumerate(payloads)]
    (folder / "mutated.json").write_text(json.dumps({"cases": cases}))

    cp = subprocess.run([sys.executable, "-m", "protocol.vectorrun", str(folder)], cwd=REPO,
                        capture_output=True, check=True, timeout=300)
    mp = micropython.run([str(REPO / "protocol" / "vectorrun.py"), str(folder)], path=[REPO], heapsize="16M",
                         timeout=300)
    assert mp.returncode == 0, mp.stderr.decode()
    cpython, micro = parse_run(cp.stdout), parse_run(mp.stdout)
    assert len(cpython) == len(micro) == len(payloads)
    disagreements = {k: (cpython[k], micro[k]) for k in cpython if cpython[k] != micro[k]}
    assert not disagreements, list(disagreements.items())[:5]
    # The mutations must exercise both outcomes and many error codes, or this test proves little.
    outcomes = {r.get("error", "ok") for r in cpython.values()}
    assert {"ok", codec.BAD_JSON, codec.BAD_FIELD, codec.MISSING_FIELD} <= outcomes
