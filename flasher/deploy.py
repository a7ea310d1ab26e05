"""Put the built firmware tree on a board through its raw REPL, sending only what changed.

Every file is written to a temporary name, checked by a SHA-256 the board computes, then renamed into
place, so an interrupted deploy leaves each file either old or new, never half; rerunning it finishes the
job. Files that no longer belong are removed; the device's own data (site file, configuration, outbox,
error log) is never touched.
"""
from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from flasher.repl import RawRepl, ReplError

CHUNK = 2048  # bytes of a file per REPL round trip
PART = ".part"
DEVICE_DATA = {"site.json", "config.json", "outbox.log", "outbox.log.new", "errors.log", "config.json.new"}

# Runs on the board: every file below the current directory with its SHA-256, as JSON.
LIST_FILES = """
import os, hashlib, binascii, json
def walk(d, out):
    for entry in os.ilistdir(d):
        name, kind = entry[0], entry[1]
        path = name if d == '.' else d + '/' + name
        if kind == 0x4000:
            walk(path, out)
        else:
            h = hashlib.sha256()
            with open(path, 'rb') as f:
                while True:
                    b = f.read(1024)
                    if not b:
                        break
                    h.update(b)
            out[path] = binascii.hexlify(h.digest()).decode()
    return out
print(json.dumps(walk('.', {})))
"""


class VerificationError(ReplError):
    """A file on the board does not match the tree after deploying it."""


@dataclass
class DeployResult:
    sent: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)


def local_files(tree: Path) -> dict[str, Path]:
    return {p.relative_to(tree).as_posix(): p for p in sorted(tree.rglob("*")) if p.is_file()}


def remote_files(repl: RawRepl) -> dict[str, str]:
    return json.loads(repl.exec(LIST_FILES, timeout=60))


def deploy(repl: RawRepl, tree: Path, progress=lambda name, done, total: None) -> DeployResult:
    """Make the board's files equal the tree's (device data aside). `progress(name, bytes done, total)`."""
    tree = Path(tree)
    if not (tree / "main.py").exists():
        raise FileNotFoundError(f"{tree} is not a firmware tree (no main.py); run make firmware")
    repl.enter()
    wanted = local_files(tree)
    digests = {name: hashlib.sha256(path.read_bytes()).hexdigest() for name, path in wanted.items()}
    present = remote_files(repl)
    needed = sum(wanted[n].stat().st_size for n in wanted if present.get(n) != digests[n])
    free = int(repl.exec("import os\ns = os.statvfs('.')\nprint(s[0] * s[4])").decode())
    if needed > free:
        raise ReplError(f"filesystem full: the changed files need {needed} bytes, the board has {free} free")
    result = DeployResult()
    for name in sorted(present):  # first, so leftovers of an interrupted run (*.part) go too
        if name not in wanted and name.split("/")[-1] not in DEVICE_DATA:
            repl.exec(f"import os\nos.remove({name!r})")
            result.removed.append(name)
    for name, path in wanted.items():
        if present.get(name) == digests[name]:
            result.unchanged.append(name)
            continue
        _send(repl, name, path.read_bytes(), progress)
        result.sent.append(name)
    after = remote_files(repl)
    for name in wanted:
        if after.get(name) != digests[name]:
            raise VerificationError(f"{name} on the board does not match the tree after deploying")
    return result


def _send(repl: RawRepl, name: str, data: bytes, progress) -> None:
    parts = name.split("/")
    for depth in range(1, len(parts)):  # the folders it lives in
        folder = "/".join(parts[:depth])
        repl.exec(f"import os\ntry:\n    os.mkdir({folder!r})\nexcept OSError:\n    pass")
    temporary = name + PART
    repl.exec(f"f = open({temporary!r}, 'wb')")
    for at in range(0, len(data), CHUNK):
        chunk = base64.b64encode(data[at:at + CHUNK]).decode()
        repl.exec(f"import binascii\nf.write(binascii.a2b_base64({chunk!r}))")
        progress(name, min(at + CHUNK, len(data)), len(data))
    repl.exec("f.close()")
    digest = repl.exec(f"import hashlib, binascii\nh = hashlib.sha256()\nf = open({temporary!r}, 'rb')\n"
                       "while True:\n    b = f.read(1024)\n    if not b:\n        break\n    h.update(b)\n"
                       "f.close()\nprint(binascii.hexlify(h.digest()).decode())").decode().strip()
    if digest != hashlib.sha256(data).hexdigest():
        raise VerificationError(f"{name}: the board computed {digest}, the tree has {hashlib.sha256(data).hexdigest()}")
    repl.exec(f"import os\nos.rename({temporary!r}, {name!r})")
    if not data:
        progress(name, 0, 0)
