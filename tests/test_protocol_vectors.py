"""Every protocol vector, run by the same codec under CPython and under the real MicroPython unix port.

Both must give the vector's expected answer: the decoded message (which must also survive an encode/decode
round trip), or the specific error code and field.
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


def expected_result(file: str, case: dict) -> dict:
    if file == "matrix.json":
        return {"packed": case["expect"], "unpacked_equal": True}
    if "ok" in case["expect"]:
        return {"ok": case["expect"]["ok"], "roundtrip": True}
    return {"error": case["expect"]["error"], "field": case["expect"]["field"]}


@pytest.mark.parametrize("file,case", CASES, ids=[f"{f}:{c['name']}" for f, c in CASES])
def test_vector(file, case, cpython_results, micropython_results):
    expected = expected_result(file, case)
    assert cpython_results[(file, case["name"])] == expected, "CPython"
    assert micropython_results[(file, case["name"])] == expected, "MicroPython"
