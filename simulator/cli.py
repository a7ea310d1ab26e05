"""hcp-sim: command-line entry points (thin wrappers over simulator.*)."""
from __future__ import annotations

import signal
import sys
import threading
from pathlib import Path

import click

from simulator import leash
from simulator.broker import BrokerError


@click.group()
@click.version_option(package_name="hcp-evaluator")
def main() -> None:
    """Simulated evaluators, halls and the provincial system."""
    # SIGTERM unwinds like Ctrl-C, so the broker, gateway and device processes a command started stop with it;
    # and should the command die without unwinding (SIGKILL), the leash's guard ends them (simulator/leash.py).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    leash.hold()


def _scenario_options(command):
    """The options `hcp-sim run` and `hcp-sim demo` share."""
    for option in reversed([
        click.option("--seconds", type=float, default=None, help="Run the hall day this long instead."),
        click.option("--screens", type=click.Path(path_type=Path), default=None,
                     help="Save each real-firmware device's screen here as a PNG whenever it changes "
                          "(DEVICE-HHMMSS.mmm-KIND.png)."),
        click.option("--workdir", type=click.Path(path_type=Path), default=None,
                     help="Keep the run's files here (databases, broker, gateway and device logs)."),
    ]):
        command = option(command)
    return command


def _hall_day(scenario_name: str, seconds: float | None, screens: Path | None, workdir: Path | None) -> None:
    from simulator import scenario as scenarios
    from simulator.demo import run_day
    from simulator.device import DeviceError
    from simulator.hall import HallError

    try:
        chosen = scenarios.load(Path(scenario_name))
    except scenarios.ScenarioError as e:
        raise click.ClickException(str(e)) from None
    if seconds is not None:
        chosen = chosen.with_seconds(seconds)
    try:
        result = run_day(chosen, workdir, screens, say=click.echo)
    except (BrokerError, HallError, DeviceError) as e:
        raise click.ClickException(f"the hall failed: {e}") from None
    if not result.ok:
        raise click.ClickException("the invariant does not hold (see VIOLATION lines above)")


@main.command()
@click.argument("scenario")
@_scenario_options
def run(scenario: str, seconds: float | None, screens: Path | None, workdir: Path | None) -> None:
    """Run a hall day from a SCENARIO file (or a built-in: ci, demo) headless, then check that every confirmed
    press and QR rating reached the province exactly once and every unrated case got its default rating.
    Exit 1 on any violation.

    Example: hcp-sim run simulator/scenarios/ci.toml --screens screens/
    """
    _hall_day(scenario, seconds, screens, workdir)


@main.command()
@click.option("--devices", type=int, default=3, show_default=True, help="Real-firmware evaluators to show.")
@click.option("--zoom", type=click.IntRange(1, 4), default=1, show_default=True, help="Screen magnification.")
@click.option("--workdir", type=click.Path(path_type=Path), default=None,
              help="Keep the hall's files here (databases, logs, device flash).")
def gui(devices: int, zoom: int, workdir: Path | None) -> None:
    """The desktop simulator: evaluators running the real firmware, their screens, buttons (or keys 1-5),
    LEDs, network and power switches, 办结, and what the gateway and the province hold. Needs a screen
    (DISPLAY); on a headless machine use `xvfb-run hcp-sim gui` or `hcp-sim demo --headless`.

    Example: hcp-sim gui --devices 3 --zoom 2
    """
    from simulator import gui as gui_module
    from simulator.demo import has_screen

    if not has_screen():
        raise click.ClickException("no screen here (DISPLAY unset or no X server); try `hcp-sim demo --headless`")
    gui_module.run(devices, workdir, zoom, say=click.echo)


@main.command()
@click.option("--headless", is_flag=True, help="No window even when a screen is available.")
@click.option("--scenario", "scenario_name", default="demo", show_default=True,
              help="Scenario file (or built-in name) of the headless run.")
@click.option("--devices", type=int, default=3, show_default=True, help="Real-firmware evaluators in the window.")
@_scenario_options
def demo(headless: bool, scenario_name: str, devices: int, seconds: float | None, screens: Path | None,
         workdir: Path | None) -> None:
    """Bring a whole hall up on this machine: broker, gateway, simulated province and evaluators.

    With a screen: the desktop simulator (as `hcp-sim gui`). Without one, or with --headless: a simulated hall
    day with traffic and faults, ending with the summary line `pressed=... duplicates=0 lost=0`.

    Example: hcp-sim demo --headless --seconds 60
    """
    from simulator.demo import has_screen

    if not headless and has_screen():
        from simulator import gui

        gui.run(devices, workdir, say=click.echo)
        return
    _hall_day(scenario_name, seconds, screens, workdir)


@main.command()
@click.option("--db", "db_path", type=click.Path(path_type=Path), default=Path("province.db"), show_default=True,
              help="SQLite file where accepted records are kept.")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=int, default=8790, show_default=True)
@click.option("--app-key", required=True, help="The hall's application key the province accepts.")
@click.option("--app-secret", required=True, envvar="HCP_PROVINCE_SECRET", help="Its secret (or HCP_PROVINCE_SECRET).")
def province(db_path: Path, host: str, port: int, app_key: str, app_secret: str) -> None:
    """Run the simulated provincial 好差评 system until Ctrl-C or SIGTERM.

    Faults are switched at run time: POST /sim/faults {"error_rate": 0.2, "latency_ms": 50, ...}.

    Example: hcp-sim province --port 8790 --app-key hall-key --app-secret s3cret
    """
    from simulator.province import Province

    running = Province(db_path, app_key, app_secret, host, port).start()
    click.echo(f"simulated province at {running.url}, records in {db_path}", err=True)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    running.stop()


@main.command()
@click.option("--heapsize", default="192K", show_default=True, help="The device's MicroPython heap.")
@click.option("--cycles", type=int, default=2000, show_default=True, help="Presses in all.")
@click.option("--offline", type=int, default=500, show_default=True,
              help="Of those, presses made while the network is unplugged (buffered on flash, drained after).")
@click.option("--firmware", type=click.Path(path_type=Path, exists=True), default=Path("build/firmware"),
              show_default=True, help="The built firmware tree (make firmware).")
@click.option("--workdir", type=click.Path(path_type=Path), default=None,
              help="Keep the run's files here (device flash and console, gateway database) for inspection.")
def soak(heapsize: str, cycles: int, offline: int, firmware: Path, workdir: Path | None) -> None:
    """Run one evaluator through prompt, press and ack cycles with an offline stretch; exit 1 on any loss,
    duplicate, reset or leak.

    Example: hcp-sim soak --heapsize 192K --cycles 2000
    """
    from simulator import soak as soak_module
    from simulator.device import DeviceError

    try:
        result = soak_module.run(firmware, heapsize, cycles, offline, say=click.echo, workdir=workdir)
    except (soak_module.SoakFailed, DeviceError) as e:
        raise click.ClickException(f"soak failed: {e}") from None
    click.echo(result.summary())


if __name__ == "__main__":
    main()
