"""``heurist stake|unstake|withdraw|move-stake|vest|claim|bribe|fund-key|balances|nodes|supply`` and
``heurist economy genesis|typed-data``: the token economy from the command line.

Why every action signs here, rather than the CLI writing the book directly: the CLI is one more wallet. It
builds the same EIP-712 message a web page would, signs it with ``--key-file`` and hands it to
``Economy.apply`` — the one path that verifies signatures and nonces — so what works here works from the
gateway's ``POST /v1/economy/actions`` too, and a replayed ``--nonce`` is refused the same way.

Amounts are typed as decimal HUE ("12.5") and become exact base units (``parse_hue``); a bribe is a percent
("12.5" -> 1,250 bps). ``heurist epoch`` (``epoch_app``) holds the epoch commands.
"""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import typer
from pydantic import ValidationError
from rich.table import Table

from heurist.cli.common import console, print_json, settings_with
from heurist.economy.actions import Action, Claim, FundKey, MoveStake, SetBribe, Stake, Unstake, Vest, Withdraw
from heurist.economy.amounts import format_hue, parse_hue
from heurist.economy.book import EconomyError
from heurist.economy.config import BPS
from heurist.economy.service import Economy
from heurist.economy.tables import Token

app = typer.Typer(help="Token economy administration: genesis allocations and EIP-712 typed data.",
                  no_args_is_help=True, rich_markup_mode="markdown")
epoch_app = typer.Typer(help="Epochs: close them (rewards, fees, Merkle root) and read their reports.",
                        no_args_is_help=True, rich_markup_mode="markdown")

KEY_FILE = typer.Option(..., "--key-file", help="The signer's key file (`heurist wallet new`).")
NONCE = typer.Option(None, "--nonce", min=0, help="The action's nonce (default: the address's next unused one).")
JSON = typer.Option(False, "--json", help="Print one line of JSON instead of a table.")
TOKEN = typer.Option(Token.HUE, "--token", case_sensitive=False, help="HUE or esHUE.")


def open_economy() -> tuple[Economy, Any]:
    """The economy on HEURIST_DATABASE_URL, migrated on open as `heurist keys` does, and the settings."""
    from heurist.db import open_engine

    settings = settings_with()
    return Economy.from_settings(settings, open_engine(settings)), settings


def _build(cls: type[Action], **fields: Any) -> Action:
    """The action, or an ``EconomyError`` naming the first bad field (e.g. ``amount: ... greater than 0``)."""
    try:
        return cls(**fields)
    except ValidationError as err:
        first = err.errors()[0]
        name = ".".join(str(p) for p in first["loc"]) or "message"
        raise EconomyError(f"{name}: {first['msg']}") from None


def _show(data: dict[str, Any], json_out: bool, title: str | None = None) -> None:
    if json_out:
        print_json(data)
        return
    table = Table("field", "value", title=title)
    for key, value in data.items():
        table.add_row(key, str(value))
    console.print(table)


def _act(key_file: Path, nonce: int | None, json_out: bool, cls: type[Action], **fields: Any) -> None:
    """Sign ``cls(**fields)`` with the key file's address and apply it; print the receipt."""
    from heurist.identity import Wallet

    wallet = Wallet.from_file(key_file)
    economy, _ = open_economy()
    signer = {cls.signer_field: wallet.address}
    action = _build(cls, **signer, **fields, nonce=economy.next_nonce(wallet.address) if nonce is None else nonce)
    receipt = economy.apply(economy.domain.sign(wallet, action)).as_dict()
    _show(receipt, json_out, title=f"{cls.primary} applied")


def stake(node: str = typer.Argument(..., help="The miner node's address (`heurist nodes`)."),
          amount: str = typer.Argument(..., help="HUE or esHUE to stake, in decimal HUE (e.g. 10000)."),
          token: Token = TOKEN, key_file: Path = KEY_FILE, nonce: int | None = NONCE, json_out: bool = JSON) -> None:
    """Stake liquid HUE or esHUE on a miner node; it activates at 10,000 staked (own plus delegated)."""
    _act(key_file, nonce, json_out, Stake, node=node, token=token.value, amount=parse_hue(amount, "amount"))


def unstake(node: str = typer.Argument(..., help="The node the stake is on."),
            amount: str = typer.Argument(..., help="How much to unstake, in decimal HUE."),
            token: Token = TOKEN, key_file: Path = KEY_FILE, nonce: int | None = NONCE,
            json_out: bool = JSON) -> None:
    """Unstake: esHUE is liquid at once; HUE is locked for 30 days (`heurist withdraw` after the lock)."""
    _act(key_file, nonce, json_out, Unstake, node=node, token=token.value, amount=parse_hue(amount, "amount"))


def move_stake(from_node: str = typer.Argument(..., help="The node the stake is on now."),
               to_node: str = typer.Argument(..., help="The node to move it to."),
               amount: str = typer.Argument(..., help="How much to move, in decimal HUE."),
               token: Token = TOKEN, key_file: Path = KEY_FILE, nonce: int | None = NONCE,
               json_out: bool = JSON) -> None:
    """Move stake from one node to another, instantly and without a lock, for either token."""
    _act(key_file, nonce, json_out, MoveStake, from_node=from_node, to_node=to_node, token=token.value,
         amount=parse_hue(amount, "amount"))


def withdraw(amount: str = typer.Argument(..., help="Unlocked HUE to withdraw, in decimal HUE."),
             key_file: Path = KEY_FILE, nonce: int | None = NONCE, json_out: bool = JSON) -> None:
    """Take unstaked HUE whose 30-day lock has ended back into the liquid balance (oldest locks first)."""
    _act(key_file, nonce, json_out, Withdraw, amount=parse_hue(amount, "amount"))


def vest(amount: str = typer.Argument(..., help="Liquid esHUE to start vesting, in decimal HUE."),
         key_file: Path = KEY_FILE, nonce: int | None = NONCE, json_out: bool = JSON) -> None:
    """Start vesting esHUE into HUE, released linearly over a year (`heurist claim` takes what has vested)."""
    _act(key_file, nonce, json_out, Vest, amount=parse_hue(amount, "amount"))


def claim(key_file: Path = KEY_FILE, nonce: int | None = NONCE, json_out: bool = JSON) -> None:
    """Claim every vested HUE of the key's vesting positions into its liquid balance."""
    _act(key_file, nonce, json_out, Claim)


def parse_percent(text: str, field: str = "percent") -> int:
    """Basis points of a percent 0-100 ("25" -> 2500, "12.5" -> 1250), refusing anything finer than 0.01 %."""
    try:
        value = Decimal(text.strip().rstrip("%"))
    except InvalidOperation:
        raise EconomyError(f"{field}: {text!r} is not a number; give a percent like 25 or 12.5") from None
    if not value.is_finite() or not 0 <= value <= 100:
        raise EconomyError(f"{field}: {text} is outside 0-100; it is the percent of rewards paid to stakers")
    bps = value * BPS / 100
    if bps != bps.to_integral_value():
        raise EconomyError(f"{field}: {text} is finer than 0.01 % (one basis point)")
    return int(bps)


def bribe(percent: str = typer.Argument(..., help="Percent of the node's rewards for its stakers, 0-100."),
          key_file: Path = KEY_FILE, nonce: int | None = NONCE, json_out: bool = JSON) -> None:
    """Set your node's bribe (signed by the node's own key); it takes effect from the next epoch."""
    _act(key_file, nonce, json_out, SetBribe, bps=parse_percent(percent))


def fund_key(key_id: int = typer.Argument(..., help="The API key's id (`heurist keys list`)."),
             amount: str = typer.Argument(..., help="HUE to spend on credits, in decimal HUE."),
             key_file: Path = KEY_FILE, nonce: int | None = NONCE, json_out: bool = JSON) -> None:
    """Buy credit units for a gateway API key with HUE: the base fee is burned, the rest goes to miners."""
    _act(key_file, nonce, json_out, FundKey, key_id=key_id, amount=parse_hue(amount, "amount"))


def balances(address: str | None = typer.Argument(None, help="The address (default: --key-file's)."),
             key_file: Path | None = typer.Option(None, "--key-file", help="Read the address from this key file."),
             json_out: bool = JSON) -> None:
    """Liquid HUE and esHUE, stake per node, locks with their unlock times, vesting, and the next nonce."""
    from heurist.economy.views import balances as read

    if address is None:
        if key_file is None:
            raise EconomyError("address: give an ADDRESS or --key-file")
        from heurist.identity import Wallet

        address = Wallet.from_file(key_file).address
    economy, _ = open_economy()
    data = read(economy, address)
    if json_out:
        print_json(data)
        return
    console.print(f"{data['address']}: {data['hue_hue']} HUE, {data['eshue_hue']} esHUE liquid; "
                  f"next nonce {data['nonce']}")
    table = Table("position", "node", "token", "amount", "when")
    for s in data["staked"]:
        table.add_row("staked", s["node"], s["token"], s["amount_hue"], "")
    for lk in data["locks"]:
        table.add_row("locked", lk["node"], "HUE", lk["amount_hue"],
                      "withdrawable" if lk["withdrawable"] else f"unlocks {lk['unlock_at']}")
    for v in data["vesting"]:
        table.add_row("vesting", "", "esHUE", f"{v['total_hue']} ({v['claimable_hue']} claimable)",
                      f"vested by {v['vested_by']}")
    console.print(table)


def nodes(json_out: bool = JSON) -> None:
    """Every miner node: stake (own + delegated), active, bribe now and next epoch, uptime, points, audits."""
    from heurist.economy.views import nodes as read

    economy, settings = open_economy()
    rows = read(economy, settings.heartbeat_interval_s)
    if json_out:
        print_json(rows)
        return
    table = Table("node", "stake", "stakers", "active", "bribe now → next", "uptime now/last", "points now/last",
                  "audits ok/failed", title=f"nodes (active from {format_hue(economy.rules.activation)} staked)")
    for r in rows:
        table.add_row(r["node"], r["stake_hue"], str(r["stakers"]), "yes" if r["active"] else "no",
                      f"{r['bribe_bps'] / 100:g}% → {r['next_bribe_bps'] / 100:g}%",
                      f"{r['uptime']:.0%} / {r['uptime_last']:.0%}", f"{r['points']:.2f} / {r['points_last']:.2f}",
                      f"{r['audits_passed']} / {r['audits_failed']}")
    console.print(table)


def supply(json_out: bool = JSON) -> None:
    """Minted, burned and supply against the 1,000,000,000 HUE cap, and where every HUE is now."""
    from heurist.economy.views import supply as read

    economy, _ = open_economy()
    data = read(economy)
    _show(data if json_out else {k[:-4]: v for k, v in data.items() if k.endswith("_hue")} | {
        "conserved": data["conserved"]}, json_out, title="supply (HUE)")


@app.command("genesis")
def genesis(address: str = typer.Argument(..., help="The address to mint to."),
            amount: str = typer.Argument(..., help="HUE to mint, in decimal HUE."), json_out: bool = JSON) -> None:
    """Mint an address's genesis allocation, once: a second genesis for the same address mints nothing."""
    from heurist.economy.views import checksummed

    owner, units = checksummed(address), parse_hue(amount, "amount")
    if units == 0:
        raise EconomyError("amount: must be more than 0 HUE")
    economy, _ = open_economy()
    minted = owner in economy.genesis({owner: units})
    _show({"address": owner, **({"amount": str(units), "amount_hue": format_hue(units)}),
           "minted": minted, "note": "minted" if minted else "already had its genesis; nothing minted"}, json_out)


@app.command("typed-data")
def typed_data(action: str = typer.Argument(..., help="Stake, Unstake, MoveStake, Withdraw, Vest, Claim, "
                                            "SetBribe or FundKey.")) -> None:
    """The EIP-712 domain and types of an action (JSON): what a wallet signs, with a `message` added."""
    from heurist.economy.views import typed_data as read

    economy, _ = open_economy()
    print_json(read(economy, action))


def register(root: typer.Typer) -> None:
    """The top-level economy commands, ``heurist economy`` and ``heurist epoch``."""
    for name, command in (("stake", stake), ("unstake", unstake), ("move-stake", move_stake),
                          ("withdraw", withdraw), ("vest", vest), ("claim", claim), ("bribe", bribe),
                          ("fund-key", fund_key), ("balances", balances), ("nodes", nodes), ("supply", supply)):
        root.command(name)(command)
    root.add_typer(app, name="economy")
    root.add_typer(epoch_app, name="epoch")
