"""Every protocol vector, run by the same codec under CPython and under the real MicroPython unix port.

Both must give the vector's expected answer: the decoded message (which must also survive an encode/decode
round trip), or the specific error code and field; for signed.json, the exact signed bytes, or whether the
payload carries a valid mac.
"""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from simulator import micropython
from tests.conftest import REPO

VECTORS = REPO / "protocol" / "vectors"


def load_cases():
    cases = []
    for path in sorted(VECTORS.glob("*.json")):
        for case in json.loads(path.read_text())["cases"]:
            cases.append((path.name, case))
    return cases


CASES = load_cases()


def parse_run(stdout: bytes) -> dict:
    results = {}
    for line in stdout.decode().splitlines():
        row = json.loads(line)
        results[(row["file"], row["name"])] = row["result"]
    return results


@pytest.fixture(scope="module")
def cpython_results():
    done = subprocess.run([sys.executable, "-m", "protocol.vectorrun", str(VECTORS)], cwd=REPO,
                          capture_output=True, check=True, timeout=120)
    return parse_run(done.stdout)


@pytest.fixture(scope="module")
def micropython_results():
    # A device-sized heap: the codec must run where the firmware runs.
    done = micropython.run([str(REPO / "protocol" / "vectorrun.py"), str(VECTORS)], path=[REPO],
                           heapsize="96K", timeout=120)
    assert done.returncode == 0, done.stderr.decode()
    return parse_run(done.stdout)


def test_vectors_cover_every_kind_and_error_code():
    from protocol import codec
    kinds = {c["message"]["k"] for _, c in CASES if "ok" in c["expect"] and "message" in c}
    assert kinds >= set(codec.SCHEMAS)
    codes = {c["expect"]["error"] for f, c in CASES if f != "matrix.json" and "error" in c["expect"]}
    assert codes == {codec.BAD_JSON, codec.TOO_LARGE, codec.BAD_VERSION, codec.BAD_KIND, codec.MISSING_FIELD,
                     codec.BAD_FIELD, codec.BAD_TOPIC, codec.TOPIC_MISMATCH}


def test_signed_vectors_cover_every_down_kind_and_every_way_to_forge():
    from protocol import codec
    signed = [c for f, c in CASES if f == "signed.json"]
    kinds = {json.loads(c["payload"])["k"] for c in signed if "signed" in c["expect"]}
    assert kinds == {kind for kind, (direction, _) in codec.SCHEMAS.items() if direction == codec.DOWN}
    assert {c["refuses"] for c in signed if c["expect"].get("signed_by") is False} >= {
        "wrong_key", "tampered_payload", "tampered_topic", "unsigned", "truncated_mac"}
    assert any(len(c["key"]) > 128 for c in signed if "signed" in c["expect"])  # past one hash block
    assert any(c["expect"].get("error") == codec.TOO_LARGE for c in signed)


def expected_result(file: str, case: dict) -> dict:
    if file == "matrix.json":
        return {"packed": case["expect"], "unpacked_equal": True}
    if file == "signed.json" and "signed_by" in case["expect"]:
        return {"signed_by": case["expect"]["signed_by"]}
    if file == "signed.json" and "signed" in case["expect"]:
        # The exact bytes, which the device must accept and decode to the message signed.
        return {"signed": case["expect"]["signed"], "signed_by": True, "same_message": True}
    if "ok" in case["expect"]:
        return {"ok": case["expect"]["ok"], "roundtrip": True}
    return {"error": case["expect"]["error"], "field": case["expect"]["field"]}


@pytest.mark.parametrize("file,case", CASES, ids=[f"{f}:{c['name']}" for f, c in CASES])
def test_vector(file, case, cpython_results, micropython_results):
    expected = expected_result(file, case)
    assert cpython_results[(file, case["name"])] == expected, "CPython"
    assert micropython_results[(file, case["name"])] == expected, "MicroPython"
