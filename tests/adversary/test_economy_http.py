"""Attacks on the token economy over the gateway's HTTP API (issue 15), made by a miner with nothing but its own
key: every one is refused naming the field, the victim's balances and nonces do not move, and the honest flow
(a stake, a bribe, an epoch close) still works afterwards, with every account's balance conserved.

Also the economic attacks a miner can try with valid signatures: a bribe switched off just before a close (it
takes effect next epoch), a stake made in the epoch's last second to pass activation (stake is averaged over the
epoch) and stake moved between nodes mid-epoch to be counted twice (stake-time is split, never copied).
"""

from __future__ import annotations

import time
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine

from heurist.client import Client
from heurist.credits.ledger import CreditLedger
from heurist.db.engine import session_scope
from heurist.economy.actions import Action, EconomyDomain, MoveStake, SetBribe, Stake, Unstake, Withdraw
from heurist.economy.amounts import ONE
from heurist.economy.config import Rules
from heurist.economy.epochs import close_epoch
from heurist.economy.service import Economy
from heurist.gateway.app import create_app
from heurist.identity import Wallet
from heurist.ledger.reader import LedgerReader
from heurist.ledger.tables import EntryKind, Miner, MinerUptime, PointsEntry
from heurist.settings import Settings
from tests.fixtures.ledger import Clock

H = 3600
RULES = Rules(epoch_s=H, close_grace_s=0, slots_per_epoch=120)


@pytest.fixture
def world(engine: Engine, clock: Clock, tmp_path: Any) -> tuple[TestClient, Economy, Clock]:
    clock.now = (int(time.time()) // H) * H + 5.0
    economy = Economy(engine, RULES, clock=clock)
    settings = Settings(_env_file=None, data_dir=tmp_path, epoch_s=H)  # type: ignore[call-arg]
    app = create_app(settings, Client(settings, ledger=LedgerReader(engine)), CreditLedger(engine))
    app.state.economy = economy
    return TestClient(app), economy, clock


def _node(engine: Engine) -> Wallet:
    wallet = Wallet.create()
    with session_scope(engine) as session:
        session.add(Miner(address=wallet.address, first_seen=0, last_seen=0, models=[], device={}))
    return wallet


def _post(api: TestClient, body: dict[str, Any]) -> Any:
    return api.post("/v1/economy/actions", json=body)


def _signed(eco: Economy, wallet: Wallet, action: Action) -> dict[str, Any]:
    return eco.domain.sign(wallet, action).model_dump()


def _book(api: TestClient, *addresses: str) -> list[Any]:
    return [api.get(f"/v1/economy/balances/{a}").json() for a in addresses] + [api.get("/v1/economy/supply").json()]


def test_forged_replayed_and_malformed_actions_are_refused(world: tuple[TestClient, Economy, Clock],
                                                           engine: Engine) -> None:
    api, eco, _ = world
    victim, miner, other = Wallet.create(), _node(engine), _node(engine)
    eco.genesis({victim.address: 50_000 * ONE, miner.address: 20_000 * ONE})
    honest = _signed(eco, victim, Stake(account=victim.address, node=miner.address, token="HUE",
                                        amount=30_000 * ONE, nonce=0))
    assert _post(api, honest).status_code == 200
    before = _book(api, victim.address, miner.address)

    attacks: list[tuple[dict[str, Any], str]] = [
        (honest, "nonce"),  # the victim's captured message, replayed
        (_signed(eco, miner, Unstake(account=victim.address, node=miner.address, token="HUE", amount=ONE, nonce=1)),
         "signature"),  # the miner signs for the victim's stake
        (_signed(eco, miner, Withdraw(account=victim.address, amount=ONE, nonce=1)), "signature"),
        (_signed(eco, miner, SetBribe(node=other.address, bps=0, nonce=0)), "signature"),  # another node's bribe
        ({**honest, "type": "Unstake"}, "signature"),  # the victim's Stake signature passed off as an Unstake
        (EconomyDomain(chain_id=1).sign(victim, Unstake(account=victim.address, node=miner.address, token="HUE",
                                                          amount=ONE, nonce=7)).model_dump(), "signature"),
        ({**honest, "message": {**honest["message"], "amount": "-1", "nonce": "9"}}, "amount"),
        ({**honest, "message": {**honest["message"], "amount": str(2**256), "nonce": "9"}}, "amount"),
        ({**honest, "message": {**honest["message"], "nonce": str(2**64)}}, "nonce"),
        ({**honest, "message": {**honest["message"], "to": miner.address, "nonce": "9"}}, "to"),  # extra field
    ]
    for body, field in attacks:
        resp = _post(api, body)
        assert resp.status_code in (400, 422), resp.text
        assert field in resp.text, (field, resp.text)
    assert _book(api, victim.address, miner.address) == before  # nothing moved, no nonce spent

    # the honest network still works: the victim's next action, the miner's own bribe
    again = _signed(eco, victim, Unstake(account=victim.address, node=miner.address, token="HUE", amount=ONE,
                                         nonce=1))
    assert _post(api, again).status_code == 200
    assert _post(api, _signed(eco, miner, SetBribe(node=miner.address, bps=1_000, nonce=0))).status_code == 200
    assert api.get("/v1/economy/supply").json()["conserved"] is True


def _work(engine: Engine, node: Wallet, epoch: int, at: float) -> None:
    with session_scope(engine) as session:
        session.add(PointsEntry(idempotency_key=f"w:{node.address}:{epoch}", miner_address=node.address, job_id=None,
                                kind=EntryKind.JOB_CREDIT, amount_micro=1_000_000, created_at=at))
        session.add(MinerUptime(address=node.address, epoch=epoch, slots=120, last_slot=0))


def test_valid_signatures_cannot_game_bribes_activation_or_stake_time(world: tuple[TestClient, Economy, Clock],
                                                                      engine: Engine) -> None:
    api, eco, clock = world
    miner, flash, staker = _node(engine), _node(engine), Wallet.create()
    eco.genesis({miner.address: 20_000 * ONE, flash.address: 20_000 * ONE, staker.address: 20_000 * ONE})
    epoch = int(clock.now) // H
    start = epoch * H
    assert _post(api, _signed(eco, miner, Stake(account=miner.address, node=miner.address, token="HUE",
                                                amount=20_000 * ONE, nonce=0))).status_code == 200
    assert _post(api, _signed(eco, miner, SetBribe(node=miner.address, bps=10_000, nonce=1))).status_code == 200
    clock.now = start + H + 5  # epoch + 1: the 100 % bribe is in effect; a staker joins the miner
    assert _post(api, _signed(eco, staker, Stake(account=staker.address, node=miner.address, token="HUE",
                                                 amount=20_000 * ONE, nonce=0))).status_code == 200
    clock.now = start + H + H / 2  # half-way: the staker moves everything to the flash node and back at once
    for nonce, (a, b) in enumerate(((miner, flash), (flash, miner)), start=1):
        move = MoveStake(account=staker.address, from_node=a.address, to_node=b.address, token="HUE",
                         amount=20_000 * ONE, nonce=nonce)
        assert _post(api, _signed(eco, staker, move)).status_code == 200
    clock.now = start + 2 * H - 1  # the last second: the miner turns the bribe off; flash stakes 20,000 HUE
    assert _post(api, _signed(eco, miner, SetBribe(node=miner.address, bps=0, nonce=2))).status_code == 200
    assert _post(api, _signed(eco, flash, Stake(account=flash.address, node=flash.address, token="HUE",
                                                amount=20_000 * ONE, nonce=0))).status_code == 200
    _work(engine, miner, epoch + 1, start + H + 10)
    _work(engine, flash, epoch + 1, start + H + 10)
    clock.now = start + 2 * H
    close_epoch(eco, epoch)
    report = close_epoch(eco, epoch + 1)
    nodes = {n["node"]: n for n in report["nodes"]}
    assert nodes[flash.address]["reward"] == "0" and nodes[flash.address]["active"] is False  # 1 s of stake
    assert nodes[miner.address]["bribe_bps"] == 10_000  # switched off too late: applies from the next epoch
    reward = int(nodes[miner.address]["reward"])
    paid = {p["address"]: int(p["amount"]) for p in report["payouts"]}
    # stake-time: the miner 20,000 x 1 h; the staker 20,000 x (1 h - 5 s), not counted again on the flash node
    miner_st, staker_st = 20_000 * ONE * H * 1000, 20_000 * ONE * (H - 5) * 1000
    assert paid[staker.address] == reward * staker_st // (miner_st + staker_st)
    assert sum(paid.values()) == reward and api.get("/v1/economy/supply").json()["conserved"] is True
