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
