"""`hcp-sim soak` end to end, short: every press reaches the gateway once, through an offline stretch,
in a 192K heap, without the device resetting or its heap growing."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def test_soak_command_passes_a_short_run(firmware_tree):
    done = subprocess.run([str(Path(sys.executable).parent / "hcp-sim"), "soak", "--heapsize", "192K",
                           "--cycles", "60", "--offline", "20", "--firmware", str(firmware_tree)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "cycles=60 stored=60 lost=0 duplicates=0" in done.stdout
