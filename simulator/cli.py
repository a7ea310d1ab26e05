"""hcp-sim: command-line entry points (thin wrappers over simulator.*)."""
from __future__ import annotations

import click

from simulator import demo as demo_module
from simulator.broker import BrokerError


@click.group()
@click.version_option(package_name="hcp-evaluator")
def main() -> None:
    """Simulated evaluators, halls and the provincial system."""


@main.command()
def demo() -> None:
    """Bring up what exists of the system on loopback and send one rating through it.

    Example: hcp-sim demo
    """
    try:
        demo_module.run(say=click.echo)
    except BrokerError as e:
        raise click.ClickException(str(e)) from None
