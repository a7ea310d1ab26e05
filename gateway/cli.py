"""hcp-gateway: command-line entry points (thin wrappers over gateway.* and protocol.*)."""
from __future__ import annotations

import datetime as dt
import getpass
import json
import sys
import time
from pathlib import Path

import click

from gateway import audit, db, logs, report, settings
from gateway.access import ROLES
from protocol import codec

CONFIG_OPTION = click.option("--config", "config_path", type=click.Path(path_type=Path), default=None,
                             help="The gateway's TOML config (see `hcp-gateway sample-config`).")


def load_config(path: Path | None) -> dict:
    try:
        return settings.load(path)
    except settings.ConfigError as e:
        raise click.ClickException(f"bad configuration: {e}") from None


def open_readonly(config: dict):
    path = Path(config["store.path"])
    if not path.exists():
        raise click.ClickException(f"no database at {path}; has the gateway run with this config?")
    try:
        return db.connect(path, readonly=True)
    except db.StorageError as e:
        raise click.ClickException(str(e)) from None


@click.group()
@click.version_option(package_name="hcp-evaluator")
def main() -> None:
    """The hall gateway of the 好差评 evaluators."""


@main.command()
@CONFIG_OPTION
def run(config_path: Path | None) -> None:
    """Run the gateway until SIGTERM or Ctrl-C.

    Example: hcp-gateway run --config gateway.toml
    """
    from gateway.service import Gateway

    config = load_config(config_path)
    logs.setup(config["log.level"])
    gateway = Gateway(config)
    try:
        gateway.start()
    except db.StorageError as e:
        raise click.ClickException(f"database {config['store.path']}: {e}") from None
    except OSError as e:
        gateway.stop()
        raise click.ClickException(f"cannot listen on port {config['http.port']} or {config['api.port']}: {e}") \
            from None
    gateway.run_until_signal()


@main.command("sample-config")
def sample_config() -> None:
    """Print a commented config with every setting and its default.

    Example: hcp-gateway sample-config > gateway.toml
    """
    click.echo(settings.sample(), nl=False)


@main.command("hash-key")
@click.argument("key")
@click.option("--name", required=True, help="Who holds the key: the name the audit log shows (e.g. erp, tech1).")
@click.option("--role", "roles", multiple=True, required=True, type=click.Choice(sorted(ROLES)),
              help="What the key may do; repeat for several. " + "; ".join(f"{r}: {h}" for r, h in ROLES.items()))
def hash_key(key: str, name: str, roles: tuple[str, ...]) -> None:
    """Print the api.keys entry for an API key: NAME:ROLES:SHA256 (the gateway never stores the key itself).

    Example: hcp-gateway hash-key "$(openssl rand -hex 24)" --name erp --role window
    """
    from gateway.access import key_entry

    click.echo(key_entry(key, roles, name))


@main.command()
@CONFIG_OPTION
def status(config_path: Path | None) -> None:
    """Queue depths, oldest unforwarded rating, dead letters, devices online and offline.

    Example: hcp-gateway status --config gateway.toml
    """
    database = open_readonly(load_config(config_path))
    click.echo(json.dumps(report.status(database, time.time()), indent=1))


@main.command("dead-letters")
@CONFIG_OPTION
@click.option("--retry", is_flag=True, help="Put them back in the forwarding queue.")
@click.option("--id", "rating_ids", type=int, multiple=True, help="Only these ratings (repeatable).")
def dead_letters(config_path: Path | None, retry: bool, rating_ids: tuple[int, ...]) -> None:
    """List ratings the province rejected (or that could not be mapped), with the reason; or retry them.

    Example: hcp-gateway dead-letters --config gateway.toml --retry --id 17
    """
    config = load_config(config_path)
    if retry:
        count = report.retry_dead_letters(Path(config["store.path"]), list(rating_ids), _actor(), time.time())
        click.echo(f"{count} dead letters queued again")
        return
    _audit(config, "read_dead_letters", ", ".join(map(str, rating_ids)) or "all")
    for row in report.dead_letters(open_readonly(config)):
        if not rating_ids or row["rating_id"] in rating_ids:
            click.echo(json.dumps(row, ensure_ascii=False))


@main.command()
@CONFIG_OPTION
@click.option("--from", "start", type=click.DateTime(["%Y-%m-%d"]), required=True, help="First day (China time).")
@click.option("--to", "end", type=click.DateTime(["%Y-%m-%d"]), required=True, help="Last day, included.")
@click.option("--public-only", is_flag=True, help="Only ratings the citizen allowed to publish.")
def export(config_path: Path | None, start: dt.datetime, end: dt.datetime, public_only: bool) -> None:
    """Write the ratings of a date range as CSV to standard output.

    Example: hcp-gateway export --config gateway.toml --from 2026-11-01 --to 2026-11-30 > november.csv
    """
    config = load_config(config_path)
    database = open_readonly(config)
    _audit(config, "export_ratings", f"{start.date()}..{end.date()}" + (" public only" if public_only else ""))
    click.echo(report.export_csv(database, start.date(), end.date(), public_only), nl=False)


@main.command()
@click.argument("device")
@CONFIG_OPTION
def revoke(device: str, config_path: Path | None) -> None:
    """Retire a device that is stolen or broken: its broker account goes at once (the broker reloads its
    accounts) and the gateway refuses its messages from now on. To bring it back, provision it under a new id.

    Example: hcp-gateway revoke W01-A --config gateway.toml
    """
    from gateway import registry
    from gateway.errors import NotFound

    config = load_config(config_path)
    try:
        registry.revoke_offline(Path(config["store.path"]), config, device, _actor(), time.time())
    except NotFound as e:
        raise click.ClickException(str(e)) from None
    click.echo(f"{device} revoked")


@main.command("ca-init")
@click.option("--dir", "folder", type=click.Path(path_type=Path), required=True, help="Where the CA's files go.")
@click.option("--hall", required=True, help="The hall's id, named in the certificates.")
@click.option("--host", "hosts", multiple=True, required=True,
              help="A name or IP address devices and the gateway reach the broker at (repeatable).")
def ca_init(folder: Path, hall: str, hosts: tuple[str, ...]) -> None:
    """Create the hall's certificate authority and the broker's TLS certificate (never replaces a CA).

    Mosquitto: cafile ca.crt, certfile broker.crt, keyfile broker.key on a TLS-only listener; the gateway:
    mqtt.tls_ca = ca.crt; each device: ca.der (hcp-flash provision --ca DIR/ca.der).

    Example: hcp-gateway ca-init --dir /etc/hcp/ca --hall 361102-xz --host gw.hall.local --host 10.0.0.2
    """
    from gateway import hallca

    try:
        made = hallca.init(folder, hall, list(hosts))
    except hallca.CaError as e:
        raise click.ClickException(str(e)) from None
    for role, path in made.items():
        click.echo(f"{role}: {path}")


def _actor() -> str:
    """Who the audit log says acted: the operating-system user who ran the command."""
    return f"cli:{getpass.getuser()}"


def _audit(config: dict, action: str, detail: str) -> None:
    database = db.connect(Path(config["store.path"]))
    try:
        audit.append(database.conn, time.time(), _actor(), action, detail)
    finally:
        database.conn.close()


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


@main.group("workorders")
def workorders_group() -> None:
    """差评 work orders: list them, show one, take the next step (as the console and the API do)."""


@workorders_group.command("list")
@CONFIG_OPTION
@click.option("--state", type=click.Choice(["open", "closed"]), help="Only open or closed ones.")
@click.option("--dept", help="Only this department (its unified social credit code).")
@click.option("--overdue", is_flag=True, help="Only open ones past their 整改 deadline.")
def workorders_list(config_path: Path | None, state: str | None, dept: str | None, overdue: bool) -> None:
    """One JSON line per work order, newest first.

    Example: hcp-gateway workorders list --config gateway.toml --state open --overdue
    """
    from gateway import workorders

    config = load_config(config_path)
    _audit(config, "read_workorders", f"state={state} dept={dept} overdue={overdue}")
    for order in workorders.orders(open_readonly(config), state, dept, time.time() if overdue else None):
        click.echo(json.dumps(order, ensure_ascii=False))


@workorders_group.command("show")
@click.argument("rating_id", type=int)
@CONFIG_OPTION
def workorders_show(rating_id: int, config_path: Path | None) -> None:
    """A work order with its steps and what may come next.

    Example: hcp-gateway workorders show 1234 --config gateway.toml
    """
    from gateway import workorders
    from gateway.errors import GatewayError

    config = load_config(config_path)
    _audit(config, "read_workorder", str(rating_id))
    try:
        click.echo(json.dumps(workorders.order(open_readonly(config), rating_id), ensure_ascii=False, indent=1))
    except GatewayError as e:
        raise click.ClickException(e.message) from None


@workorders_group.command("step")
@click.argument("rating_id", type=int)
@click.argument("step", type=click.Choice(["visited", "appealed", "appeal_upheld", "appeal_rejected", "rectifying",
                                           "extended", "rectified"]))
@CONFIG_OPTION
@click.option("--handler", required=True, help="工号 or account of who took the step (the province is told).")
@click.option("--visit-result", type=click.IntRange(1, 2), help="With visited: 1 reached the citizen, 2 could not.")
@click.option("--content", help="The appeal's grounds, the reviewer's reasons, the measures taken, or why more time.")
@click.option("--deadline", help="With rectifying (default: 10 working days from the 差评) or extended: YYYY-MM-DD.")
def workorders_step(rating_id: int, step: str, config_path: Path | None, handler: str, visit_result: int | None,
                    content: str | None, deadline: str | None) -> None:
    """Take the next step of a work order; it goes to the province with the others, in order.

    Example: hcp-gateway workorders step 1234 visited --handler N0321 --visit-result 1 --content "已回访"
    """
    from gateway import workorders
    from gateway.errors import GatewayError

    config = load_config(config_path)
    fields = {"visit_result": visit_result, "content": content, "deadline": deadline}
    database = db.connect(Path(config["store.path"]))
    conn = database.conn
    try:
        conn.execute("BEGIN IMMEDIATE")
        taken = workorders.take_step(conn, rating_id, step, handler, fields, time.time(), _actor())
        conn.execute("COMMIT")
    except GatewayError as e:
        raise click.ClickException(e.message) from None
    finally:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        conn.close()
    click.echo(json.dumps(taken, ensure_ascii=False))
