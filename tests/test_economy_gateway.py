"""The gateway's ``/v1/economy`` routes (issue 15): a wallet builds typed data from ``GET /typed-data``, signs it
with eth-account as MetaMask would, and ``POST /actions`` applies it; forged, tampered and replayed messages are
400s naming the field; reads (balances, nodes, supply, price, epochs, proofs) need no API key. Both databases."""

from __future__ import annotations

import time
from typing import Any

import pytest
import schemathesis
from eth_account import Account
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from sqlalchemy import Engine

from heurist.client import Client
from heurist.credits.ledger import CreditLedger
from heurist.db.engine import session_scope
from heurist.economy.actions import SetBribe, Stake
from heurist.economy.amounts import ONE
from heurist.economy.service import Economy
from heurist.gateway.app import create_app
from heurist.identity import Wallet
from heurist.ledger.reader import LedgerReader
from heurist.ledger.tables import EntryKind, Miner, MinerUptime, PointsEntry
from heurist.points import MICRO
from heurist.settings import Settings
from tests.fixtures.ledger import Clock

EPOCH_S = 3600


@pytest.fixture
def economy(engine: Engine, clock: Clock, tmp_path: Any) -> Economy:
    settings = Settings(_env_file=None, data_dir=tmp_path, epoch_s=EPOCH_S)  # type: ignore[call-arg]
    clock.now = (int(time.time()) // EPOCH_S) * EPOCH_S + 5.0  # 5 s into an epoch; the test moves it on
    configured = Economy.from_settings(settings, engine)
    return Economy(engine, configured.rules, configured.domain, clock=clock)


@pytest.fixture
def api(engine: Engine, economy: Economy, tmp_path: Any) -> TestClient:
    settings = Settings(_env_file=None, data_dir=tmp_path, epoch_s=EPOCH_S)  # type: ignore[call-arg]
    app = create_app(settings, Client(settings, ledger=LedgerReader(engine)), CreditLedger(engine))
    app.state.economy = economy  # the same rules and domain, on the test's clock
    return TestClient(app)  # no lifespan: nothing here needs the credit sweep


def node_of(engine: Engine) -> Wallet:
    wallet = Wallet.create()
    with session_scope(engine) as session:
        session.add(Miner(address=wallet.address, first_seen=0, last_seen=0, models=[], device={}))
    return wallet


def wallet_sign(api: TestClient, wallet: Wallet, action: str, fields: dict[str, Any]) -> dict[str, Any]:
    """What a web page does: typed data from the gateway, the nonce from the gateway, eth_signTypedData_v4."""
    typed = api.get(f"/v1/economy/typed-data/{action}").json()
    nonce = api.get(f"/v1/economy/nonce/{wallet.address}").json()["nonce"]
    message = {**fields, "nonce": nonce}
    assert set(message) == set(typed["fields"]), "the gateway names every field the wallet must fill"
    full = {k: typed[k] for k in ("types", "primaryType", "domain")} | {"message": message}
    signed = Account.sign_typed_data(wallet.key_hex, full_message=full)
    as_json = {k: str(v) if isinstance(v, int) else v for k, v in message.items()}  # uint256 as strings
    return {"type": action, "message": as_json, "signature": "0x" + signed.signature.hex().removeprefix("0x")}


def test_a_wallet_signed_stake_is_applied_and_shows_in_every_read(api: TestClient, economy: Economy,
                                                                    engine: Engine) -> None:
    staker, node = Wallet.create(), node_of(engine)
    economy.genesis({staker.address: 25_000 * ONE})
    body = wallet_sign(api, staker, "Stake", {"account": staker.address, "node": node.address, "token": "HUE",
                                              "amount": 12_000 * ONE})
    resp = api.post("/v1/economy/actions", json=body)
    assert resp.status_code == 200, resp.text
    assert resp.json()["key"] == f"action:{staker.address}:0" and resp.json()["type"] == "Stake"

    held = api.get(f"/v1/economy/balances/{staker.address.lower()}").json()
    assert held["hue"] == str(13_000 * ONE) and held["nonce"] == 1
    assert held["staked"] == [{"node": node.address, "token": "HUE", "amount": str(12_000 * ONE),
                               "amount_hue": "12000"}]
    [row] = api.get("/v1/economy/nodes").json()
    assert row["node"] == node.address and row["stake_hue"] == "12000" and row["active"] is True
    assert {"bribe_bps", "next_bribe_bps", "uptime", "uptime_last", "points", "points_last"} <= set(row)
    supply = api.get("/v1/economy/supply").json()
    assert supply["minted"] == str(25_000 * ONE) and supply["staked"] == str(12_000 * ONE)
    assert supply["conserved"] is True and supply["cap_hue"] == "1000000000"
    price = api.get("/v1/economy/price").json()
    assert price["base_fee_hue"] == "0.01" and price["unit_price_hue"] == "0.012"


def test_forged_tampered_replayed_and_overdrawn_actions_are_400s_naming_the_field(
        api: TestClient, economy: Economy, engine: Engine) -> None:
    staker, thief, node = Wallet.create(), Wallet.create(), node_of(engine)
    economy.genesis({staker.address: 20_000 * ONE})
    fields = {"account": staker.address, "node": node.address, "token": "HUE", "amount": 5 * ONE}

    forged = wallet_sign(api, thief, "Stake", fields)  # the thief signs a stake of the staker's HUE
    _refused(api.post("/v1/economy/actions", json=forged), "signature", "invalid_signature")
    good = wallet_sign(api, staker, "Stake", fields)
    tampered = {**good, "message": {**good["message"], "amount": str(6 * ONE)}}
    _refused(api.post("/v1/economy/actions", json=tampered), "signature", "invalid_signature")
    assert api.post("/v1/economy/actions", json=good).status_code == 200
    replay = api.post("/v1/economy/actions", json=good)
    _refused(replay, "nonce", "nonce_used")
    assert "sign again with nonce 1" in replay.json()["error"]["message"]
    greedy = wallet_sign(api, staker, "Stake", {**fields, "amount": 30_000 * ONE})
    _refused(api.post("/v1/economy/actions", json=greedy), "amount", "insufficient_balance")
    assert api.get(f"/v1/economy/balances/{staker.address}").json()["hue"] == str(19_995 * ONE), \
        "only the one good stake moved anything"

    bad = api.get("/v1/economy/balances/0x1234")
    assert bad.status_code == 422 and bad.json()["error"]["param"] == "address"
    unknown = api.get("/v1/economy/typed-data/Steal")
    assert unknown.status_code == 404 and "Stake" in unknown.json()["error"]["message"]
    junk = api.post("/v1/economy/actions", json={**good, "type": "Steal"})
    _refused(junk, "type", "action_refused")


def _refused(resp: Any, field: str, code: str) -> None:
    assert resp.status_code == 400, resp.text
    error = resp.json()["error"]
    assert (error["param"], error["code"]) == (field, code), error
    assert error["message"].startswith(f"{field}: ") or f".{field}" in error["message"], error


def test_bribe_epoch_report_and_proof(api: TestClient, economy: Economy, engine: Engine, clock: Clock) -> None:
    """A bribe shows as pending, then in effect next epoch; a closed epoch's report and proofs are served."""
    from heurist.economy.epochs import close_epoch

    node, staker = node_of(engine), Wallet.create()
    economy.genesis({node.address: 10_000 * ONE, staker.address: 5_000 * ONE})
    epoch = economy.rules.epoch_of(economy.now_ms())
    for wallet, action in ((node, SetBribe(node=node.address, bps=2500, nonce=0)),
                           (node, Stake(account=node.address, node=node.address, token="HUE", amount=10_000 * ONE,
                                        nonce=1)),
                           (staker, Stake(account=staker.address, node=node.address, token="HUE",
                                          amount=5_000 * ONE, nonce=0))):
        assert api.post("/v1/economy/actions", json=economy.domain.sign(wallet, action).model_dump()).status_code \
            == 200
    start = epoch * EPOCH_S
    with session_scope(engine) as session:
        session.add(MinerUptime(address=node.address, epoch=epoch, slots=60, last_slot=0))
        session.add(PointsEntry(idempotency_key="t:1", miner_address=node.address, kind=EntryKind.ESCROW_RELEASE,
                                amount_micro=4 * MICRO, created_at=start + 10))
    [row] = api.get("/v1/economy/nodes").json()
    assert (row["bribe_bps"], row["next_bribe_bps"]) == (0, 2500)
    assert row["stakers"] == 2 and row["own_HUE"] == str(10_000 * ONE) and row["points"] == 4.0

    missing = api.get(f"/v1/economy/epochs/{epoch}")
    assert missing.status_code == 404 and "not closed" in missing.json()["error"]["message"]
    assert api.get(f"/v1/economy/proof/{staker.address}", params={"epoch": epoch}).status_code == 404

    clock.now = (epoch + 1) * EPOCH_S + economy.rules.close_grace_s + 1
    [row] = api.get("/v1/economy/nodes").json()
    assert (row["bribe_bps"], row["points_last"], row["points"]) == (2500, 4.0, 0.0)
    report = close_epoch(economy, epoch)
    served = api.get(f"/v1/economy/epochs/{epoch}")
    assert served.status_code == 200 and served.json() == report
    paid = {p["address"]: p["amount"] for p in report["payouts"]}
    assert node.address in paid, report
    proof = api.get(f"/v1/economy/proof/{node.address}", params={"epoch": epoch}).json()
    assert proof["amount"] == paid[node.address] and proof["root"] == report["merkle_root"]
    nobody = api.get(f"/v1/economy/proof/{Wallet.create().address}", params={"epoch": epoch})
    assert nobody.status_code == 404 and nobody.json()["error"]["param"] == "address"


def test_schemathesis_finds_no_server_error_in_the_economy_routes(api: TestClient, engine: Engine) -> None:
    """Every ``/v1/economy`` operation fuzzed (random addresses, epochs, signed-action bodies): 4xx, never 5xx."""
    node_of(engine)
    schema = schemathesis.openapi.from_asgi("/openapi.json", api.app).include(path_regex="^/v1/economy")
    operations = [result.ok() for result in schema.get_all_operations()]  # type: ignore[union-attr]
    assert len(operations) == 9
    for operation in operations:
        @given(case=operation.as_strategy())
        @settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck), database=None,
                  derandomize=True)
        def check(case: Any) -> None:
            resp = case.call()
            assert resp.status_code < 500, (case.path, case.body, resp.status_code, resp.text)

        check()


def test_an_out_of_range_uint_is_a_400_naming_the_field(api: TestClient, engine: Engine) -> None:
    node = node_of(engine)
    for bps in (-1, 2**256):
        body = {"type": "SetBribe", "message": {"node": node.address, "bps": str(bps), "nonce": "0"},
                "signature": "0x" + "11" * 65}
        _refused(api.post("/v1/economy/actions", json=body), "bps", "action_refused")
