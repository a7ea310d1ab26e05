"""The firmware's flash outbox under the real MicroPython unix port: killed at random instants (SIGKILL)
and torn at every byte, it loses no confirmed press, resurrects no acknowledged one, and never corrupts."""
from __future__ import annotations

import json
import random
import signal
import subprocess
import time

import pytest

from simulator import micropython
from tests.conftest import REPO

FIRMWARE = REPO / "firmware"
SCRIPTS = REPO / "tests" / "micropython"


def report(path) -> dict:
    # The report lists every id as text: more than a device holds, so it gets a larger heap.
    done = micropython.run([str(SCRIPTS / "outbox_report.py"), str(path)], path=[FIRMWARE], heapsize="2M")
    assert done.returncode == 0, done.stdout + done.stderr
    return json.loads(done.stdout)


def test_sigkill_at_random_instants_loses_nothing_confirmed(tmp_path):
    log = tmp_path / "outbox.log"
    rnd = random.Random(20261129)
    confirmed: dict[str, int] = {}
    acked: set[str] = set()
    removing: set[str] = set()
    next_id = 0
    for _ in range(40):
        proc = subprocess.Popen(micropython.command([str(SCRIPTS / "outbox_writer.py"), str(log), str(next_id),
                                                     "1500"], heapsize="128K"),
                                env=micropython.environment([FIRMWARE]), stdout=subprocess.PIPE)
        time.sleep(rnd.uniform(0.02, 0.25))
        proc.send_signal(signal.SIGKILL)
        out, _ = proc.communicate()
        for line in out.decode().splitlines():
            parts = line.split()
            if len(parts) == 3 and parts[0] == "C":
                confirmed[parts[1]] = int(parts[2])
            elif len(parts) == 2 and parts[0] == "R":
                removing.add(parts[1])
            elif len(parts) == 2 and parts[0] == "A":
                acked.add(parts[1])
        state = report(log)  # recovery after the "power cut"
        waiting = set(state["waiting"])
        assert state["payloads_ok"]
        assert set(confirmed) - removing <= waiting, "a confirmed press was lost"
        assert not (waiting & acked), "an acknowledged press came back"
        assert state["next_seq"] > max(confirmed.values(), default=0), "a sequence number would repeat"
        next_id = int(max(confirmed, default="0"), 16) + 1000  # the next boot's ids never collide
    assert len(confirmed) > 200 and len(acked) > 50  # the kills really landed among many writes


def test_a_cut_at_any_byte_keeps_exactly_the_complete_records(tmp_path):
    log = tmp_path / "outbox.log"
    # A log of 30 ratings, every third acknowledged right after it was written, made on the device.
    script = tmp_path / "make.py"
    script.write_text("from outbox import Outbox\nimport sys\nbox = Outbox(sys.argv[1])\n"
                      "for i in range(30):\n"
                      "    box.add(b'%08x' % i, b'{\"v\":1,\"seq\":%d}' % (i + 1), i + 1)\n"
                      "    added = box._size\n"
                      "    if i % 3 == 0:\n"
                      "        box.remove([b'%08x' % i])\n"
                      "    print(i, added, box._size)\n")
    done = micropython.run([str(script), str(log)], path=[FIRMWARE])
    assert done.returncode == 0, done.stdout
    ends = {int(i): (int(a), int(r)) for i, a, r in (line.split() for line in done.stdout.decode().splitlines())}
    result = micropython.run([str(SCRIPTS / "outbox_cuts.py"), str(log), str(tmp_path / "cut.log")],
                             path=[FIRMWARE], heapsize="128K", timeout=120)
    assert result.returncode == 0, result.stdout
    rows = result.stdout.decode().splitlines()
    assert len(rows) == log.stat().st_size + 1
    for line in rows:
        row = json.loads(line)
        cut = row["cut"]
        written = [i for i in range(30) if ends[i][0] <= cut]
        acked = {i for i in written if i % 3 == 0 and ends[i][1] <= cut}
        assert row["waiting"] == [f"{i:08x}" for i in written if i not in acked], row
        assert row["next_seq"] == (written[-1] + 2 if written else 1), row


def test_full_outbox_refuses_new_ratings(tmp_path):
    script = tmp_path / "full.py"
    script.write_text("from outbox import Outbox, OutboxFull\nimport sys\nOutbox.capacity = 5\n"
                      "box = Outbox(sys.argv[1])\n"
                      "for i in range(5):\n    box.add(b'%08x' % i, b'{}', i + 1)\n"
                      "try:\n    box.add(b'%08x' % 9, b'{}', 9)\nexcept OutboxFull:\n    print('full', len(box))\n")
    done = micropython.run([str(script), str(tmp_path / "o.log")], path=[FIRMWARE])
    assert done.stdout.strip() == b"full 5"


@pytest.mark.parametrize("waiting", [0, 1000])
def test_outbox_runs_in_a_device_sized_heap(tmp_path, waiting):
    script = tmp_path / "heap.py"
    script.write_text("import gc, sys\nfrom outbox import Outbox\nbox = Outbox(sys.argv[1])\n"
                      f"for i in range({waiting}):\n"
                      "    pad = b'x' * 180\n"
                      "    box.add(b'%08x' % i, b'{\"v\":1,\"seq\":%d,\"pad\":\"%s\"}' % (i + 1, pad), i + 1)\n"
                      "del box\ngc.collect()\nbox = Outbox(sys.argv[1])\ngc.collect()\n"
                      "print(len(box), gc.mem_alloc())\n")
    done = micropython.run([str(script), str(tmp_path / "o.log")], path=[FIRMWARE], heapsize="96K", timeout=120)
    assert done.returncode == 0, done.stdout
    count, allocated = map(int, done.stdout.split())
    assert count == waiting
    assert allocated < 48 * 1024


def test_a_log_longer_than_the_index_recovers(tmp_path):
    # 3,000 ratings written and 2,990 acknowledged without a compaction: more records than index slots.
    script = tmp_path / "long.py"
    script.write_text("import sys\nfrom outbox import Outbox\nOutbox.compact_bytes = 1 << 30\n"
                      "box = Outbox(sys.argv[1])\n"
                      "for i in range(3000):\n"
                      "    box.add(b'%08x' % i, b'{\"v\":1,\"seq\":%d}' % (i + 1), i + 1)\n"
                      "    if i < 2990:\n        box.remove([b'%08x' % i])\n"
                      "again = Outbox(sys.argv[1])\n"
                      "print(len(again), again.next_seq, [i.decode() for i, _ in again.waiting(3)])\n")
    done = micropython.run([str(script), str(tmp_path / "o.log")], path=[FIRMWARE], heapsize="96K", timeout=120)
    assert done.stdout.decode().split(None, 2) == ["10", "3001", "['00000bae', '00000baf', '00000bb0']\n"]
