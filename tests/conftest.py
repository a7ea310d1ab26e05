"""Shared fixtures: real Mosquitto processes, the real MicroPython unix port, the repository's paths."""
from __future__ import annotations

import logging
from pathlib import Path

import pytest

from simulator.broker import Broker

REPO = Path(__file__).resolve().parent.parent
# What the tests send as an applicant's name and certificate number: when the run ends, `every_log` makes sure
# no log of the run holds either.
APPLICANT_NAME, APPLICANT_CERT = "张三丰", "36110219800101123X"


@pytest.fixture(scope="session", autouse=True)
def every_log(tmp_path_factory):
    """Every log record of the run made in this process (in-process gateways, simulators) also goes to one
    file under the run's base temporary folder, beside the gateway, broker and device logs of its processes.

    When the run ends, after every test and its processes are done, no log under that folder may hold an
    applicant's name or certificate number: not the in-process records, not the gateway processes' log files,
    not the devices' consoles and error rings, not the brokers' logs. A leak fails the run."""
    path = tmp_path_factory.getbasetemp() / "in-process.log"
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    level, root.level = root.level, logging.DEBUG
    yield path
    root.removeHandler(handler)
    root.level = level
    handler.close()
    from tests.helpers import leaks

    found = leaks(tmp_path_factory.getbasetemp(), [APPLICANT_NAME, APPLICANT_CERT])
    if found:
        pytest.fail("personal data in the run's logs: " + "; ".join(found))


@pytest.fixture
def broker(tmp_path):
    """A private Mosquitto on a free loopback port, with persistence in tmp_path."""
    with Broker(tmp_path / "broker") as running:
        yield running


@pytest.fixture
def province(tmp_path):
    """The simulated provincial system on a loopback port, with the test hall's key."""
    from simulator.province import Province
    from tests.helpers import APP_KEY, APP_SECRET

    running = Province(tmp_path / "province.db", APP_KEY, APP_SECRET).start()
    yield running
    running.stop()


@pytest.fixture
def gateway_factory(tmp_path, broker):
    """Start in-process gateways against the test broker; all are stopped at the end."""
    from gateway.service import Gateway
    from tests.helpers import gateway_config

    started = []

    def start(province_url: str = "", clock=None, **overrides):
        config = gateway_config(broker.port, tmp_path / "gateway.db", province_url, **overrides)
        gateway = Gateway(config, clock).start()
        started.append(gateway)
        # Until the gateway's subscription exists, the broker has no session to keep ratings in.
        assert gateway.ingest.subscribed.wait(10), "the gateway did not subscribe"
        return gateway

    yield start
    for gateway in started:
        gateway.stop()


@pytest.fixture
def wire_device(broker):
    """Make devices on the test broker (tests.helpers.WireDevice); all are disconnected at the end."""
    from tests.helpers import WireDevice

    made = []

    def make(dev: str, **kwargs):
        device = WireDevice(broker.port, dev, **kwargs)
        made.append(device)
        return device

    yield make
    for device in made:
        device.close()


@pytest.fixture(scope="session")
def firmware_tree(tmp_path_factory):
    """The deployable firmware tree, built once per test run as `make firmware` builds it."""
    from flasher import build

    out = tmp_path_factory.mktemp("firmware")
    build.build(out)
    return out


@pytest.fixture
def sim_device(tmp_path, broker, firmware_tree):
    """Start evaluators running the real firmware on the unix port; all are powered off at the end."""
    from simulator.device import SimDevice
    from tests.helpers import HALL

    made = []

    def make(dev: str = "W01", **kwargs):
        device = SimDevice(tmp_path / f"flash-{dev}", firmware_tree, dev, HALL, broker.port, **kwargs)
        made.append(device)
        return device.start()

    yield make
    for device in made:
        device.stop()
