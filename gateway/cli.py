"""hcp-gateway: command-line entry points (thin wrappers over gateway.* and protocol.*)."""
from __future__ import annotations

import json
import sys

import click

from protocol import codec


@click.group()
@click.version_option(package_name="hcp-evaluator")
def main() -> None:
    """The hall gateway of the 好差评 evaluators."""


@main.command()
@click.argument("topic")
@click.argument("payload", required=False)
def decode(topic: str, payload: str | None) -> None:
    """Check one message against the protocol, as the gateway would on arrival.

    Prints the decoded message, or the error code and exits with 2. PAYLOAD defaults to standard input.

    Example: hcp-gateway decode hcp/v1/H1/W01/up/status '{"v":1,"k":"status","dev":"W01","state":"online"}'
    """
    data = payload.encode() if payload is not None else sys.stdin.buffer.read()
    try:
        hall, dev, msg = codec.decode_from(topic, data)
    except codec.ProtocolError as e:
        click.echo(f"rejected: {e}", err=True)
        sys.exit(2)
    click.echo(json.dumps({"hall": hall, "dev": dev, "message": msg}, ensure_ascii=False))
