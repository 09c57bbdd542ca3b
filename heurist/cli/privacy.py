"""``heurist keyrelease init|serve`` and ``heurist privacy approve|revoke|list|status``: private jobs' trusted side.

A network runs n key-release nodes (3 for 2 of 3), each its own process with its own key:
``heurist keyrelease init --index I`` makes node I's key and prints the entry to put in
``HEURIST_KEYRELEASE_NODES`` (clients seal shares to those keys, miners ask those URLs), and
``heurist keyrelease serve --index I`` answers on it. An operator approves the privacy miners that registered
(``heurist miner --private``) with ``heurist privacy approve ADDR``; every approval and revocation is kept.
"""

from __future__ import annotations

import getpass
import json
import logging
import time
from pathlib import Path
from typing import Any

import typer
from rich.markup import escape
from rich.table import Table

from heurist.cli.common import console, print_json, settings_with
from heurist.errors import ConfigError

keyrelease_app = typer.Typer(
    help="Key-release nodes: each holds one share of every private job's key and gives it only to requesters "
    "the job's access-control condition (ACC) admits.", no_args_is_help=True, rich_markup_mode="markdown")
privacy_app = typer.Typer(
    help="Privacy miners: approve or revoke those that registered with `heurist miner --private`, list them, "
    "and say why one is not privacy-enabled.", no_args_is_help=True, rich_markup_mode="markdown")

BASE_PORT = 8700  # node I listens on 8700 + I by default
INDEX = typer.Option(..., "--index", min=1, max=16, help="The node's index (1-based, its place in "
                     "HEURIST_KEYRELEASE_NODES).")
JSON = typer.Option(False, "--json", help="Print one line of JSON instead of text.")
NOTE = typer.Option("", "--note", help="Why (kept with the decision; at most 500 characters).")
OPERATOR = typer.Option(None, "--operator", help="Who decides (default: your OS user name).")
APPROVER_KEY = typer.Option(None, "--key-file", help="The approver key (hex, 0600) that signs the decision; "
                            "required where HEURIST_PRIVACY_APPROVER is set, since nodes count only its signatures.")


def _engine() -> Any:
    """The ledger database of HEURIST_DATABASE_URL, migrated on open like every ledger process does."""
    from heurist.db import open_engine

    return open_engine(settings_with())


@keyrelease_app.command("init")
def init(index: int = INDEX,
         url: str | None = typer.Option(None, "--url", help="Where the node will answer (default "
                                        "http://127.0.0.1:870I)."),
         json_out: bool = JSON) -> None:
    """Make node I's X25519 key (once; 0600 file, data_dir/keyrelease-I.key) and print its
    HEURIST_KEYRELEASE_NODES entry. Run again, it prints the same key."""
    from heurist.privacy.keyrelease.keys import init_key, key_path

    settings = settings_with()
    path = key_path(settings, index)
    public = bytes(init_key(path, index).public_key).hex()
    entry = {"url": url or f"http://127.0.0.1:{BASE_PORT + index}", "public_key": public}
    if json_out:
        print_json({"index": index, "public_key": public, "entry": entry, "key_file": str(path)})
        return
    console.print(f"node {index}: key in {escape(str(path))}, public key {public}", soft_wrap=True)
    console.print("its entry in HEURIST_KEYRELEASE_NODES (a JSON list, node 1 first):")
    print(json.dumps(entry), flush=True)


@keyrelease_app.command("serve")
def serve(index: int = INDEX,
          host: str = typer.Option("127.0.0.1", "--host", help="Interface to bind (0.0.0.0 for every one)."),
          port: int | None = typer.Option(None, "--port", min=1, max=65535, help="TCP port (default 870I).")
          ) -> None:
    """Serve node I: POST /v1/share answers a miner's signed request for a job's share when the job's ACC holds
    for it on the ledger (HEURIST_DATABASE_URL); GET /v1/health names the node and its public key."""
    import uvicorn

    from heurist.privacy.keyrelease.keys import key_path, load_key
    from heurist.privacy.keyrelease.node import KeyReleaseNode, Policy
    from heurist.privacy.keyrelease.server import create_app

    settings = settings_with()
    key = load_key(key_path(settings, index), index)
    public = bytes(key.public_key).hex()
    nodes = settings.keyrelease_nodes
    if len(nodes) >= index and nodes[index - 1].public_key != public:
        raise ConfigError(f"HEURIST_KEYRELEASE_NODES lists public key {nodes[index - 1].public_key} for node "
                          f"{index}, but this node's key is {public}: fix the entry (`heurist keyrelease init "
                          f"--index {index}` prints it) or the key file")
    node = KeyReleaseNode(index, key, _engine(), Policy.of(settings))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if settings.privacy_approver is None:
        logging.getLogger(__name__).warning(
            "HEURIST_PRIVACY_APPROVER is unset: approvals count as the database holds them, so whoever can write "
            "it can approve a key of their own; set it to the approver key's address (README, 'Private jobs')")
    console.print(f"key-release node {index} (public key {public}) on http://{host}:{port or BASE_PORT + index}",
                  soft_wrap=True)
    uvicorn.run(create_app(node), host=host, port=port or BASE_PORT + index)


def _decide(address: str, approved: bool, note: str, operator: str | None, json_out: bool,
            key_file: Path | None) -> None:
    from heurist.identity import Wallet
    from heurist.privacy.keyrelease.registry import approve
    from heurist.signing import Domain

    settings = settings_with()
    signer = Wallet.from_file(key_file) if key_file is not None else None
    if settings.privacy_approver is not None:
        if signer is None:
            raise ConfigError(f"--key-file: this network's nodes count only approvals signed by "
                              f"{settings.privacy_approver} (HEURIST_PRIVACY_APPROVER); give its key file")
        if signer.address.lower() != settings.privacy_approver.lower():
            raise ConfigError(f"--key-file: the key is {signer.address}, but the nodes count approvals signed by "
                              f"{settings.privacy_approver} (HEURIST_PRIVACY_APPROVER)")
    row = approve(_engine(), address, approved, operator or _os_user(), note, time.time(), signer=signer,
                  domain=Domain.of(settings))
    row["broker"] = _broker_right(row["address"], approved)
    if json_out:
        print_json(row)
    else:
        console.print(f"{escape(row['address'])} {'approved' if approved else 'revoked'} by "
                      f"{escape(row['operator'])}; broker: {escape(row['broker'])}")


def _broker_right(address: str, allowed: bool) -> str:
    """Give or take the right to consume private.* queues on RabbitMQ (its operator's broker user): a revoked
    miner's connections are closed, so it stops taking private jobs at once. What was done, in words."""
    from heurist.access import broker_access
    from heurist.access.backend import BrokerAccessError
    from heurist.ledger.factory import open_reader
    from heurist.settings import is_amqp

    settings = settings_with()
    if not is_amqp(settings.resolved_broker_url()):
        return "the embedded broker has no per-miner rights"
    owner = open_reader(settings).operator_of(address)
    try:
        broker_access(settings).set_private(owner, allowed)
    except BrokerAccessError as err:
        return f"private queues unchanged: {err}"
    return f"{'may' if allowed else 'may no longer'} consume private queues (broker user of {owner})"


def _os_user() -> str:
    try:
        return getpass.getuser()
    except (OSError, KeyError):  # no USER variable and no passwd entry (some containers)
        return "operator"


@privacy_app.command("approve")
def approve_cmd(address: str = typer.Argument(..., help="The privacy miner's address (0x...)."),
                note: str = NOTE, operator: str | None = OPERATOR, json_out: bool = JSON,
                key_file: Path | None = APPROVER_KEY) -> None:
    """Approve a registered privacy miner: with a registration for the current policy version it is
    privacy-enabled (nodes release only to privacy-enabled requesters whose job ACC holds), and on RabbitMQ it may
    read the private queues. Signed with --key-file where the nodes require it (HEURIST_PRIVACY_APPROVER)."""
    _decide(address, True, note, operator, json_out, key_file)


@privacy_app.command("revoke")
def revoke_cmd(address: str = typer.Argument(..., help="The privacy miner's address (0x...)."),
               note: str = NOTE, operator: str | None = OPERATOR, json_out: bool = JSON,
               key_file: Path | None = APPROVER_KEY) -> None:
    """Revoke an approval: from now on no node gives the address a share, whatever the ACC, and on RabbitMQ its
    connections are closed and it may no longer read private queues."""
    _decide(address, False, note, operator, json_out, key_file)


@privacy_app.command("list")
def list_cmd(json_out: bool = JSON) -> None:
    """Every address that registered as a privacy miner: its policy version, TEE status, the latest decision
    on it, and whether it is privacy-enabled now (and why not)."""
    from heurist.privacy.keyrelease.registry import list_all
    from heurist.signing import Domain

    settings = settings_with()
    rows = list_all(_engine(), approver=settings.privacy_approver, domain=Domain.of(settings),
                    policy_version=settings.privacy_policy_version,
                    tee_required=settings.privacy_tee_verifier is not None)
    if json_out:
        print_json(rows)
        return
    table = Table("address", "policy", "TEE", "decision", "privacy-enabled")
    for r in rows:  # every cell's text is the miner's or the database's: escaped, so "[/bold]" prints as it is
        reg, approval = r["registration"], r["approval"]
        decision = "none" if approval is None else ("approved" if approval["approved"] else "revoked")
        table.add_row(escape(str(r["address"])), escape(str(reg["policy_version"])), escape(str(reg["tee_status"])),
                      decision + ("" if approval is None else f" by {escape(str(approval['operator']))}"),
                      "yes" if r["privacy_enabled"] else f"[red]no[/]: {escape(str(r['why_not']))}")
    console.print(table)


@privacy_app.command("status")
def status_cmd(address: str = typer.Argument(..., help="The address (0x...)."), json_out: bool = JSON) -> None:
    """One address: its latest registration and decision, and whether it is privacy-enabled now or why not."""
    from heurist.privacy.keyrelease.registry import status
    from heurist.signing import Domain

    settings = settings_with()
    found = status(_engine(), address, settings.privacy_policy_version, settings.privacy_tee_verifier is not None,
                   settings.privacy_approver, Domain.of(settings))
    if json_out:
        print_json(found)
        return
    console.print(f"{escape(str(found['address']))}: " + (
        "privacy-enabled" if found["privacy_enabled"] else f"not privacy-enabled: {escape(str(found['why_not']))}"))
    for part in ("registration", "approval"):
        console.print(f"{part}: {escape(str(found[part] or 'none'))}")


def register(root: typer.Typer) -> None:
    root.add_typer(keyrelease_app, name="keyrelease")
    root.add_typer(privacy_app, name="privacy")


__all__ = ["keyrelease_app", "privacy_app", "register"]
