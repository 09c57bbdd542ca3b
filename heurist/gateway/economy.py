"""``/v1/economy``: the token economy for wallets and web pages — reads as GET, signed actions as POST.

Why no API key here (every other route needs one): reads are public, like a block explorer's, and a signed
action authenticates itself — ``Economy.apply`` recovers the EIP-712 signature, and the nonce in the book's
unique key refuses a replay. A page fetches ``GET /typed-data/{action}`` (domain, types), adds the message
(with ``GET /nonce/{address}``), has the wallet sign it (``eth_signTypedData_v4``) and posts
``{type, message, signature}`` to ``POST /actions``: the same ``Economy.apply`` the CLI calls.

A refused action is a 400 in the gateway's error shape, ``param`` naming the field (``amount``, ``nonce``,
``signature``, …) and ``code`` saying why (``nonce_used``, ``invalid_signature``, ``insufficient_balance``,
``action_refused``); a malformed address in a path is a 422 naming ``address``. Handlers are plain ``def``:
FastAPI runs them in its thread pool, so the database calls never block the event loop.
"""

from __future__ import annotations

import re
from typing import Any

from fastapi import APIRouter, Depends, Path, Query, Request

from heurist.economy.actions import ADDRESS, Signed
from heurist.economy.book import EconomyError, OverdrawError
from heurist.economy.service import Economy
from heurist.economy.views import amount, balances, checksummed, nodes, supply, typed_data
from heurist.gateway.deps import ERRORS, gateway
from heurist.gateway.errors import ApiError

router = APIRouter(prefix="/v1/economy", tags=["economy"], responses=ERRORS)

_FIELD = re.compile(r"^(?:[A-Z][A-Za-z]*\.)?([a-z_][a-z_0-9.]*):")
_CODES = {"nonce": "nonce_used", "signature": "invalid_signature"}
MAX_EPOCH = 2**62  # a BIGINT column; anything larger is no epoch (and would overflow the query, a 500)


def economy(request: Request) -> Economy:
    """The app's ``Economy`` (built once by ``create_app`` on the ledger's engine)."""
    found: Economy = request.app.state.economy
    return found


def refused(err: EconomyError, status: int = 400) -> ApiError:
    """An ``EconomyError`` (its message starts with the field: "amount: ...") as the gateway's error."""
    found = _FIELD.match(str(err))
    field = found.group(1) if found else None
    code = "insufficient_balance" if isinstance(err, OverdrawError) else _CODES.get(field or "", "action_refused")
    return ApiError(status, str(err), param=field, code="not_found" if status == 404 else code)


def _address() -> Any:
    return Path(pattern=ADDRESS, description="An EVM address (0x and 40 hex digits).")


@router.get("/balances/{address}", summary="An address's liquid, staked, locked and vesting HUE and esHUE")
def get_balances(address: str = _address(), eco: Economy = Depends(economy)) -> dict[str, Any]:
    return balances(eco, address)


@router.get("/nonce/{address}", summary="The next unused nonce of an address")
def get_nonce(address: str = _address(), eco: Economy = Depends(economy)) -> dict[str, Any]:
    return {"address": checksummed(address), "nonce": eco.next_nonce(address)}


@router.get("/nodes", summary="Every miner node: stake, active, bribe, uptime, points and audits")
def get_nodes(request: Request, eco: Economy = Depends(economy)) -> list[dict[str, Any]]:
    return nodes(eco, gateway(request).settings.heartbeat_interval_s)


@router.get("/supply", summary="Minted, burned, supply, cap and where every HUE is")
def get_supply(eco: Economy = Depends(economy)) -> dict[str, Any]:
    return supply(eco)


@router.get("/price", summary="What one Standard Credit Unit costs in HUE now (base fee burned + miners' fee)")
def get_price(eco: Economy = Depends(economy)) -> dict[str, Any]:
    price = eco.unit_price()
    return {**amount("base_fee", price["base_fee"]), **amount("miner_fee", price["miner_fee"]),
            **amount("unit_price", price["base_fee"] + price["miner_fee"])}


@router.get("/typed-data/{action}", summary="The EIP-712 domain and types of an action, for a wallet to sign")
def get_typed_data(action: str, eco: Economy = Depends(economy)) -> dict[str, Any]:
    try:
        return typed_data(eco, action)
    except EconomyError as err:
        raise refused(err, 404) from None


@router.get("/epochs/{epoch}", summary="A closed epoch's report: issued, burned, rewards, Merkle root")
def get_epoch(epoch: int = Path(ge=0, le=MAX_EPOCH), eco: Economy = Depends(economy)) -> dict[str, Any]:
    from heurist.economy.epochs import epoch_report

    report = epoch_report(eco, epoch)
    if report is None:
        raise ApiError(404, f"epoch: {epoch} is not closed yet (`heurist epoch close`)", param="epoch",
                       code="not_found")
    return report


@router.get("/proof/{address}", summary="The Merkle proof of what an address was paid in an epoch")
def get_proof(address: str = _address(), epoch: int = Query(ge=-1, le=MAX_EPOCH, description="The epoch (-1: TGE)."),
              eco: Economy = Depends(economy)) -> dict[str, Any]:
    from heurist.economy.epochs import proof

    try:
        return proof(eco, address, epoch)
    except EconomyError as err:
        raise refused(err, 404) from None


@router.post("/actions", summary="Apply a signed action (EIP-712): stake, unstake, withdraw, move, vest, ...")
def post_action(signed: Signed, eco: Economy = Depends(economy)) -> dict[str, Any]:
    try:
        return eco.apply(signed).as_dict()
    except EconomyError as err:
        raise refused(err) from None
