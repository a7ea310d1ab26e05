"""Shared fixtures: real Mosquitto processes, the real MicroPython unix port, the repository's paths."""
from __future__ import annotations

from pathlib import Path

import pytest

from simulator.broker import Broker

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def broker(tmp_path):
    """A private Mosquitto on a free loopback port, with persistence in tmp_path."""
    with Broker(tmp_path / "broker") as running:
        yield running
