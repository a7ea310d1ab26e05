"""hcp-flash: command-line entry points (thin wrappers over flasher.*)."""
from __future__ import annotations

from pathlib import Path

import click

from flasher import build as firmware_build


@click.group()
@click.version_option(package_name="hcp-evaluator")
def main() -> None:
    """Build evaluator firmware and put it on boards."""


@main.command()
@click.option("--out", type=click.Path(path_type=Path), default=Path("build/firmware"), show_default=True,
              help="Where to write the deployable tree (replaced).")
def build(out: Path) -> None:
    """Compile every firmware file with mpy-cross into a deployable tree.

    Example: hcp-flash build --out build/firmware
    """
    try:
        built = firmware_build.build(out)
    except firmware_build.BuildError as e:
        raise click.ClickException(str(e)) from None
    click.echo(f"built {len(built)} files into {out}")


@main.command("deploy")
@click.option("--port", "url", required=True,
              help="The board's serial port (/dev/ttyACM0) or a pyserial URL (socket://host:port).")
@click.option("--tree", type=click.Path(path_type=Path, exists=True, file_okay=False), default=Path("build/firmware"),
              show_default=True, help="The firmware tree to put on the board (make firmware).")
@click.option("--no-reboot", is_flag=True, help="Leave the board in its REPL afterwards.")
def deploy_command(url: str, tree: Path, no_reboot: bool) -> None:
    """Copy the firmware tree to a board: only changed files, each verified by a SHA-256 the board computes;
    files that no longer belong are removed; the device's own data stays. Safe to rerun after an interruption.

    Example: hcp-flash deploy --port /dev/ttyACM0
    """
    from flasher import deploy
    from flasher.repl import RawRepl, ReplError

    total = sum(p.stat().st_size for p in deploy.local_files(tree).values())
    try:
        repl = RawRepl(url)
        with click.progressbar(length=total, label="deploying", show_pos=True) as bar:
            last: dict[str, int] = {}

            def progress(name: str, done: int, size: int) -> None:
                bar.label = name
                bar.update(done - last.get(name, 0))
                last[name] = done

            result = deploy.deploy(repl, tree, progress)
        if not no_reboot:
            repl.soft_reboot()
        repl.close()
    except (ReplError, FileNotFoundError) as e:
        raise click.ClickException(str(e)) from None
    click.echo(f"sent {len(result.sent)}, unchanged {len(result.unchanged)}, removed {len(result.removed)}"
               + ("" if no_reboot else "; rebooted"))


GATEWAY_OPTIONS = [
    click.option("--gateway", "gateway_url", envvar="HCP_GATEWAY_URL", help="The gateway's API base URL."),
    click.option("--api-key", envvar="HCP_API_KEY", help="An API key the gateway accepts (or HCP_API_KEY)."),
    click.option("--wait", "wait_s", type=float, default=60, show_default=True,
                 help="Seconds to wait for the board online at the gateway (0: do not wait)."),
    click.option("--tree", type=click.Path(path_type=Path, file_okay=False), default=Path("build/firmware"),
                 show_default=True, help="Firmware tree to deploy first; --no-deploy to skip."),
    click.option("--no-deploy", is_flag=True, help="Only write the site file (the firmware is already there)."),
    click.option("--ca", type=click.Path(path_type=Path, exists=True, dir_okay=False), default=None,
                 help="The hall CA's ca.der (hcp-gateway ca-init): the board then talks TLS to the broker."),
]


def gateway_options(command):
    for option in reversed(GATEWAY_OPTIONS):
        command = option(command)
    return command


def _gateway(url, key):
    from flasher.provision import Gateway

    if url and not key:
        raise click.ClickException("--api-key (or HCP_API_KEY) is needed with --gateway")
    return Gateway(url, key) if url else None


@main.command("provision")
@click.option("--port", "url", required=True, help="The board's serial port or pyserial URL.")
@click.option("--roster", type=click.Path(path_type=Path, exists=True, dir_okay=False), required=True,
              help="The roster CSV (columns: see `hcp-flash batch --help`).")
@click.option("--row", "row_number", type=int, required=True, help="Which data row of the roster (1 = first).")
@gateway_options
def provision_command(url, roster, row_number, gateway_url, api_key, wait_s, tree, no_deploy, ca) -> None:
    """Give one board its firmware and its site settings, register it with the gateway, reboot it and wait
    until it is online. Secrets from the roster go only to the board.

    Example: hcp-flash provision --port /dev/ttyACM0 --roster roster.csv --row 3 --gateway http://gw:8781
    """
    from flasher import provision
    from flasher.repl import ReplError

    try:
        rows = provision.read_roster(roster)
        if not 1 <= row_number <= len(rows):
            raise click.ClickException(f"the roster has {len(rows)} rows")
        row = rows[row_number - 1]
        summary = provision.provision(url, row, None if no_deploy else tree, _gateway(gateway_url, api_key), wait_s,
                                      ca=ca)
    except (provision.ProvisionError, ReplError) as e:
        raise click.ClickException(str(e)) from None
    click.echo(f"{row['device']} ({row['window']}): {summary}")


@main.command("batch")
@click.option("--roster", type=click.Path(path_type=Path, exists=True, dir_okay=False), required=True,
              help="CSV with columns device, hall, window, dept_code, staff_no, broker, broker_port, wifi_ssid, "
                   "wifi_password, mqtt_user, mqtt_password, board, serial_port.")
@click.option("--port", "url", help="The port every board is plugged into (a row's serial_port wins).")
@click.option("--yes", is_flag=True, help="Do not ask before each board.")
@gateway_options
def batch_command(roster, url, yes, gateway_url, api_key, wait_s, tree, no_deploy, ca) -> None:
    """Provision every board of a roster, one after another, then print what succeeded and what failed.

    Example: hcp-flash batch --roster roster.csv --port /dev/ttyACM0 --gateway http://gw:8781
    """
    from flasher import provision

    try:
        rows = provision.read_roster(roster)
    except provision.ProvisionError as e:
        raise click.ClickException(str(e)) from None

    def ask(row):
        if not yes:
            click.prompt(f"Plug in the board for {row['device']} ({row['window']}) and press Enter",
                         default="", show_default=False)

    def port_of(row):
        if not (row["serial_port"] or url):
            raise provision.ProvisionError("no --port and no serial_port in the roster")
        return row["serial_port"] or url

    outcomes = provision.batch(rows, port_of, None if no_deploy else tree, _gateway(gateway_url, api_key), wait_s,
                               ask, ca)
    width = max(len(row["device"]) for row, _, _ in outcomes)
    click.echo(f"{'device':<{width}}  {'window':<8}  result")
    for row, ok, why in outcomes:
        click.echo(f"{row['device']:<{width}}  {row['window']:<8}  {'OK' if ok else 'FAILED'}: {why}")
    failed = sum(not ok for _, ok, _ in outcomes)
    click.echo(f"{len(outcomes) - failed} provisioned, {failed} failed")
    if failed:
        raise SystemExit(1)


@main.command("ports")
@click.option("--probe", is_flag=True, help="Also ask each port whether a MicroPython REPL answers.")
def ports_command(probe: bool) -> None:
    """List serial ports with the board kind recognised from their USB ids.

    Example: hcp-flash ports --probe
    """
    from flasher import ports

    found = ports.scan(probe)
    if not found:
        click.echo("no serial ports: is the board plugged in, and may this user open serial ports (dialout)?")
    for port in found:
        answer = "" if port.micropython is None else ("  MicroPython" if port.micropython else "  no REPL")
        click.echo(f"{port.device}  {port.kind}  {port.description}{answer}")


@main.command("base-image")
@click.option("--port", required=True, help="The board's serial port (in its ROM bootloader).")
@click.option("--image", type=click.Path(path_type=Path, exists=True, dir_okay=False), required=True,
              help="The MicroPython firmware image for the board (ESP32_GENERIC_S3-*.bin).")
@click.option("--chip", default="esp32s3", show_default=True)
def base_image(port: str, image: Path, chip: str) -> None:
    """Write a MicroPython image to a board that has none yet, through esptool (erases the flash first).

    Example: hcp-flash base-image --port /dev/ttyACM0 --image ESP32_GENERIC_S3-20250415-v1.25.0.bin
    """
    import esptool

    try:
        esptool.main(["--chip", chip, "--port", port, "erase_flash"])
        esptool.main(["--chip", chip, "--port", port, "write_flash", "-z", "0x0", str(image)])
    except (esptool.FatalError, OSError) as e:
        raise click.ClickException(f"esptool: {e}") from None
    except SystemExit as e:
        if e.code:
            raise click.ClickException(f"esptool failed on {port} (exit {e.code})") from None
    click.echo(f"MicroPython written to {port}; run hcp-flash deploy next")
