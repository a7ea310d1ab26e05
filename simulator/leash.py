"""Every process an hcp-sim command starts (broker, gateway, real-firmware devices) ends with it, however the
command ends: a clean stop, SIGTERM, Ctrl-C, or a SIGKILL that gives it no chance to stop anything.

`hold()` starts a guard: a small process that leads a process group of its own and reads a pipe whose only
writer is the command. Every process the simulator starts afterwards joins that group (`options()`, passed
to subprocess.Popen). When the command ends, in whatever way, the kernel closes its end of the pipe; the guard
reads end-of-file and SIGKILLs the whole group, itself last. A clean stop has stopped each process already, so
then there is nothing left to kill.

Why not PR_SET_PDEATHSIG: it fires when the *thread* that started the child ends, and the simulator starts
processes from worker threads that come and go; and preexec_fn, where it would be set, is not safe in a
process with threads. The group leaves the shell's or the test runner's own group alone (Ctrl-C at a
terminal reaches only the command, which stops its processes in order).
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

GUARD = ("import os, signal, sys\n"
         "sys.stdin.buffer.read()  # until the command that started us is gone\n"
         "os.killpg(os.getpgrp(), signal.SIGKILL)\n")

_guard: subprocess.Popen | None = None
_pipe: int | None = None  # the write end, held by this process alone (os.pipe's ends are not inherited)


def hold() -> int:
    """Start the guard (once per process); return its process group."""
    global _guard, _pipe
    if _guard is None:
        read, _pipe = os.pipe()
        try:
            _guard = subprocess.Popen([sys.executable, "-c", GUARD, f"hcp-sim leash of {os.getpid()}"], stdin=read,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, process_group=0)
        finally:
            os.close(read)
    return _guard.pid


def options() -> dict:
    """subprocess.Popen's arguments that put a new process in the guard's group (none when nobody holds one:
    the tests and the benchmarks start and stop their own processes)."""
    return {"process_group": _guard.pid} if _guard is not None else {}


def processes_under(folder: Path | str) -> list[int]:
    """Live processes started for a run in `folder`: naming it, or a path under it, in their command line or
    environment (`folder` may be any text that ends an argument: a file, the guard's name); not this process,
    nor those that started it, which may name it too."""
    name, found, mine = str(folder).encode(), [], _lineage()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) in mine:
            continue
        try:
            text = (proc / "cmdline").read_bytes() + (proc / "environ").read_bytes()
            state = _stat(proc)[0]
        except OSError:
            continue
        if (name + b"/" in text or name + b"\0" in text) and state != "Z":
            found.append(int(proc.name))
    return found


def _stat(proc: Path) -> list[str]:
    """/proc/PID/stat after the command name: state, parent, group, ..."""
    return (proc / "stat").read_text().rsplit(") ", 1)[1].split()


def _lineage() -> set[int]:
    """This process and its ancestors."""
    pids, pid = set(), os.getpid()
    while pid > 1 and pid not in pids:
        pids.add(pid)
        try:
            pid = int(_stat(Path(f"/proc/{pid}"))[1])
        except OSError:
            break
    return pids
