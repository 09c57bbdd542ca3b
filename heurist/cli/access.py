"""``heurist broker``: give each miner its own broker user, and take it away (bans do it automatically)."""

from __future__ import annotations

import typer
from rich.table import Table

from heurist.catalog import load_catalog
from heurist.cli.common import console, err_console, print_json, redacted, settings_with
from heurist.errors import ConfigError
from heurist.settings import is_amqp

app = typer.Typer(
    rich_markup_mode="markdown",
    help="The broker's shape and per-miner broker users (trusted side: needs broker admin rights). Run "
    "`heurist broker setup` once per vhost (and after catalog changes), then `heurist broker add-miner ADDRESS` "
    "per operator. On RabbitMQ each operator gets user `miner-<address>`: it may consume its tier queues "
    "(`vram8.*` ... `vram80.*`, `private.*`), publish to its own bounded inbox `inbox.miner-<address>` and to "
    "`heurist.stream`, and declare nothing (docs/trust-boundary.md). The auditor revokes an operator it bans: "
    "permissions removed, connections closed, its unfinished jobs go to other miners. The management API comes "
    "from HEURIST_BROKER_ADMIN_URL (default: the broker's host, port 15672, the broker URL's credentials). The "
    "embedded SQLite broker has no users: there, only the ledger's ban applies. `heurist broker dead-letters` lists "
    "the poison messages the ledger and the auditor refused and kept.",
    no_args_is_help=True,
)


def _address(value: str) -> str:
    """Refuse anything but 0x and 40 hex digits before touching the broker (a HeuristError: one clean line)."""
    from heurist.access import checked_address

    checked_address(value)
    return value.strip()


ADDRESS = typer.Argument(..., callback=_address, help="The miner's EVM address (0x + 40 hex digits).")
JSON = typer.Option(False, "--json", help="Print JSON instead of text.")


@app.command("setup")
def setup(json_out: bool = JSON) -> None:
    """Declare the network's queues, exchanges and policies on the broker's vhost (idempotent).

    Tier queues (one per catalog model), the ledger queue, the dead letters, the stream exchange, and the
    policies that bound every miner's inbox and dead-letter rejected messages. Miners may declare nothing,
    so run this before the first miner starts, and again after a catalog change.
    """
    from heurist.access.topology import setup_broker

    settings = settings_with()
    if not is_amqp(settings.resolved_broker_url()):
        raise ConfigError("`heurist broker setup` is for RabbitMQ (HEURIST_BROKER_URL=amqp://...): the embedded "
                          "broker has no users, and every process declares what it uses")
    report = setup_broker(settings, load_catalog(settings.catalog_path))
    if json_out:
        print_json(report.__dict__)
        return
    console.print(f"vhost {report.vhost!r}: {len(report.queues)} queues declared, policies "
                  f"{', '.join(report.policies)} set")


@app.command("add-miner")
def add_miner(address: str = ADDRESS, json_out: bool = JSON,
              vram: int | None = typer.Option(None, "--vram", min=1, help="The largest VRAM class (GB) this "
                                              "operator may consume: with --vram 24 it reads vram8 ... vram24 "
                                              "queues only. Default: every tier."),
              private: bool = typer.Option(False, "--private", help="Also let it consume the private.* queues: "
                                           "for a privacy operator you trust, before it starts `heurist miner "
                                           "--private`; `heurist privacy approve` then records the ledger's "
                                           "approval, and `heurist privacy revoke` takes both away.")) -> None:
    """Create the miner's broker user (a new password if it exists) and its inbox; print what the miner sets.

    HEURIST_BROKER_URL (secret: hand it over privately), HEURIST_DISPATCH_ADDRESS (the network key that signs
    every job, so the miner runs no forged one) and HEURIST_S3_ENDPOINT (the only store it uploads to). With
    --json: address, user, broker_url, dispatch_address, s3_endpoint. A revoked (banned) miner is refused:
    `heurist broker restore` first.
    """
    from heurist.access import broker_access
    from heurist.dispatch import dispatch_signer

    settings = settings_with()
    access = broker_access(settings)
    creds = access.add_miner(address, max_vram_gb=vram)
    if private:
        access.set_private(address, True)
    joining = {"HEURIST_BROKER_URL": creds.broker_url, "HEURIST_DISPATCH_ADDRESS": dispatch_signer(settings).address,
               "HEURIST_S3_ENDPOINT": settings.s3_endpoint}
    if json_out:
        print_json({"address": creds.address, "user": creds.user, "broker_url": creds.broker_url,
                    "dispatch_address": joining["HEURIST_DISPATCH_ADDRESS"], "s3_endpoint": settings.s3_endpoint})
        return
    err_console.print(f"broker user [bold]{creds.user}[/] for miner {creds.address}; give the miner these settings "
                      "(the broker URL is secret: send it privately):")
    for name, value in joining.items():
        print(f"{name}={value or '<the store URL miners PUT to>'}", flush=True)


@app.command("revoke")
def revoke(address: str = ADDRESS) -> None:
    """Cut a miner off the broker: permissions removed, its connections closed, its unacked jobs redelivered.

    The auditor does this by itself when it bans a miner. The miner's user and password stay, so
    `heurist broker restore` undoes it.
    """
    from heurist.access import BrokerAccessError, broker_access

    access = broker_access(settings_with())
    access.revoke(address)
    if not any(row.address.lower() == address.lower() for row in access.list_miners()):
        raise BrokerAccessError(f"no broker user for miner {address}: nothing was revoked (it may share "
                                "credentials; create its own with `heurist broker add-miner`)")
    console.print(f"revoked broker access of miner {address}")


@app.command("restore")
def restore(address: str = ADDRESS) -> None:
    """Give a revoked miner its broker permissions back (same URL). A ledger ban is not lifted by this."""
    from heurist.access import broker_access

    broker_access(settings_with()).restore(address)
    console.print(f"restored broker access of miner {address}")


@app.command("miners")
def miners(json_out: bool = JSON) -> None:
    """List the miners' broker users: active or revoked, and open connections."""
    from heurist.access import broker_access

    settings = settings_with()
    rows = broker_access(settings).list_miners()
    if json_out:
        print_json([row.__dict__ for row in rows])
        return
    table = Table(title=redacted(settings.resolved_broker_url()))
    table.add_column("miner", overflow="fold")
    table.add_column("broker user", overflow="fold")
    table.add_column("access")
    table.add_column("connections")
    for row in rows:
        table.add_row(row.address, row.user, "active" if row.active else "[red]revoked[/]",
                      "?" if row.connections is None else str(row.connections))
    console.print(table)



@app.command("dead-letters")
def dead_letters(json_out: bool = JSON,
                 limit: int = typer.Option(50, "--limit", "-n", min=1, max=10_000,
                                           help="List at most this many, oldest first."),
                 purge: bool = typer.Option(False, "--purge", help="Delete every kept message (asks first)."),
                 yes: bool = typer.Option(False, "--yes", "-y", help="With --purge: do not ask.")) -> None:
    """List the poison messages the ledger and the auditor refused and kept, without consuming them.

    A trusted worker refuses a message that is **malformed** (not a task message, or a field its model
    refuses), **oversized** (above HEURIST_MAX_MESSAGE_BYTES, refused before parsing), names an
    **unknown-task** (Celery's built-ins included) or is **undecodable** (not JSON). It keeps the first
    4 KB in the `dead-letters` queue with the reason, the detail, the source queue, the sender (the
    broker-validated user: `miner-0x…` on RabbitMQ, empty on the embedded broker), the time and the size.
    Messages RabbitMQ dead-lettered by itself (a consumer rejected them without requeue) show as
    `broker-rejected`, with the queue from its `x-death` header. On RabbitMQ the queue is bounded by the
    policy `heurist broker setup` sets (oldest dropped first); the embedded broker's is not. Listing
    consumes nothing; `--purge` empties the queue.
    """
    from heurist.deadletters import DEAD_QUEUE
    from heurist.deadletters.listing import peek
    from heurist.deadletters.listing import purge as purge_queue

    settings = settings_with()
    if purge:
        if not yes and not typer.confirm(f"Delete every message in {DEAD_QUEUE} on "
                                         f"{redacted(settings.resolved_broker_url())}?"):
            raise typer.Exit(1)
        count = purge_queue(settings)
        if json_out:
            print_json({"purged": count})
        else:
            console.print(f"purged {count} message(s) from {DEAD_QUEUE}")
        return
    found = peek(settings, limit)
    if json_out:
        print_json({"total": found.total, "dead_letters": [letter.as_json() for letter in found.letters]})
        return
    table = Table(title=f"{DEAD_QUEUE}: {len(found.letters)} of {found.total} on "
                        f"{redacted(settings.resolved_broker_url())}")
    for column in ("time", "reason", "detail", "source", "sender", "size"):
        table.add_column(column, overflow="fold", justify="right" if column == "size" else "left")
    for letter in found.letters:
        table.add_row(letter.time, letter.reason, letter.detail, letter.source, letter.sender or "-",
                      f"{letter.size:,}")
    console.print(table)
