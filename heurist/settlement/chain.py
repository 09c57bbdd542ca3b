"""The settlement chain: connecting to a node and sending one transaction, with errors that name the fix.

Why everything comes from the node. The same commands run against zkSync Era (chain id 324), its testnet (300),
ganache (1337) and web3's in-process EthereumTesterProvider; gas, fees and the chain id differ on each, so none is
hard-coded. ``transact`` takes the nonce ("pending", so a key's queued transactions are counted), the chain id,
the fees (EIP-1559 when the latest block has a base fee: max fee = 2 x base fee + the node's priority fee, which
survives six full blocks of +12.5 %; else the node's legacy gas price) and the gas (the node's estimate + 20 %:
state may move between the estimate and inclusion, and zkSync's estimate of pubdata is not exact; unused gas is
refunded) from the node it sends to.

Why estimate first. A call that would revert fails in ``eth_estimateGas`` with the contract's reason, before it
is signed or sent: no gas is spent and the nonce does not move. A transaction that still reverts once mined (the
state changed in between) is replayed as an ``eth_call`` at its block to read the reason. Either way the caller
gets a ``SettlementError`` holding the contract's reason ("RewardsDistributor: bad proof").

Why no error prints the URL. A hosted endpoint's API key is in its URL (path or userinfo), and requests' errors
quote the URL whole ("502 Server Error ... for url: https://host/v2/KEY"); so errors show ``safe_url`` and the
reason alone. An HTTP error or a lost connection while sending does not mean the node refused the transaction:
a hosted front may lose the answer of a node that got it, so that error names the transaction's hash.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar
from urllib.parse import urlsplit

from eth_account import Account
from web3 import Web3
from web3.types import TxReceipt

from heurist.errors import HeuristError
from heurist.identity import Wallet

P = ParamSpec("P")
R = TypeVar("R")
GAS_MARGIN_PCT = 20
RECEIPT_TIMEOUT_S = 180.0
RPC_TIMEOUT_S = 30.0


class SettlementError(HeuristError):
    """Settling on chain failed: the node, the chain, a contract's revert, or the book and the chain disagree."""


def safe_url(url: str) -> str:
    """An RPC URL safe to print: hosted endpoints carry their API key in the path or the userinfo, so both go."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{'/***' if parts.path.strip('/') or parts.query else ''}"


def node_errors(what: str) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Decorate a function that talks to the node: an error the node or the connection raises mid-way (a node
    that went away, an RPC error, an opcode the node's EVM lacks) becomes a one-line ``SettlementError``."""

    def wrap(func: Callable[P, R]) -> Callable[P, R]:
        @functools.wraps(func)
        def wrapped(*args: P.args, **kwargs: P.kwargs) -> R:
            try:
                return func(*args, **kwargs)
            except HeuristError:
                raise
            except Exception as err:
                if not _from_node(err):
                    raise
                why = _unreachable(err) if isinstance(err, OSError) else _revert_reason(err)  # requests': OSErrors
                raise SettlementError(f"{what}: the node failed a request ({why}); check it is "
                                      "up and serves the chain the contracts are on, then run again") from None
        return wrapped
    return wrap


def _from_node(err: BaseException) -> bool:
    """Whether ``err`` came from web3, the HTTP connection or eth-tester, not from a bug of ours."""
    module = type(err).__module__
    return module.startswith(("web3", "requests", "urllib3", "eth_tester")) or isinstance(err, ConnectionError)


def connect(rpc: str | Web3, expected_chain_id: int | None = None, timeout_s: float = RPC_TIMEOUT_S) -> Web3:
    """A Web3 on ``rpc`` (an http(s) URL, or an already built Web3, e.g. ``Web3(EthereumTesterProvider())``),
    checked to answer and, if ``expected_chain_id`` is given, to serve that chain."""
    if isinstance(rpc, Web3):
        w3, shown = rpc, "the in-process chain"
    else:
        example = "give the node's JSON-RPC endpoint, e.g. http://127.0.0.1:8545 or https://mainnet.era.zksync.io"
        try:  # never echo the URL itself: a hosted endpoint's key is in its path or userinfo
            parts = urlsplit(rpc)
            scheme, _ = parts.scheme, parts.port
        except ValueError as err:  # "Invalid IPv6 URL", "Port out of range 0-65535", a port that is not a number
            raise SettlementError(f"--rpc is not a URL: its host or port is malformed ({err}); {example}") from None
        if scheme not in ("http", "https"):
            raise SettlementError(f"--rpc {safe_url(rpc)} is not an http(s) URL: {example}")
        w3, shown = Web3(Web3.HTTPProvider(rpc, request_kwargs={"timeout": timeout_s})), safe_url(rpc)
    try:
        chain_id = int(w3.eth.chain_id)
    except Exception as err:  # requests' ConnectionError/Timeout, a non-JSON answer, an HTTP error page
        raise SettlementError(
            f"rpc: cannot reach an EVM node at {shown} ({_unreachable(err)}): check the URL and that the node runs "
            "(locally: `npx ganache@7.9.2 --port 8545`; zkSync Era: https://mainnet.era.zksync.io)") from None
    if expected_chain_id is not None and chain_id != expected_chain_id:
        raise SettlementError(
            f"rpc: {shown} serves chain id {chain_id}, but HEURIST_SETTLEMENT_CHAIN_ID is {expected_chain_id}: "
            "point --rpc at the chain the contracts were deployed on, or fix HEURIST_SETTLEMENT_CHAIN_ID "
            "(`heurist contracts deploy` records it)")
    return w3


@node_errors("rpc")
def contract(w3: Web3, name: str, address: str | None, setting: str) -> Any:
    """The deployed contract ``name`` (an artifact of heurist.settlement.artifacts) at ``address``; refuses an
    address with no code on this chain, naming the ``setting`` that holds it."""
    from heurist.settlement.artifacts import load

    if not address:
        raise SettlementError(f"{setting} is not set: deploy the contracts with `heurist contracts deploy` "
                              "(it records the addresses in .env), or pass the address")
    if not Web3.is_address(address):
        raise SettlementError(f"{setting}: {address!r} is not an address (0x and 40 hex digits)")
    checksummed = Web3.to_checksum_address(address)
    if not w3.eth.get_code(checksummed):
        raise SettlementError(f"{setting}: no contract at {checksummed} on chain {w3.eth.chain_id}: deploy with "
                              "`heurist contracts deploy`, or point --rpc at the chain it was deployed on")
    return w3.eth.contract(address=checksummed, abi=load(name).abi)


def fees(w3: Web3) -> dict[str, int]:
    """The fee fields of a new transaction, from the node (see the module docstring)."""
    base = w3.eth.get_block("latest").get("baseFeePerGas")
    if base is None:
        return {"gasPrice": int(w3.eth.gas_price)}
    try:
        tip = int(w3.eth.max_priority_fee)
    except Exception:  # a node without eth_maxPriorityFeePerGas: what it asks above the base fee
        tip = max(int(w3.eth.gas_price) - int(base), 0)
    return {"maxFeePerGas": 2 * int(base) + tip, "maxPriorityFeePerGas": tip}


def transact(w3: Web3, wallet: Wallet, call: Any, what: str = "transaction",
             timeout_s: float = RECEIPT_TIMEOUT_S) -> TxReceipt:
    """Sign ``call`` (a contract function call or constructor) with ``wallet``, send it and wait for its receipt;
    ``SettlementError`` naming ``what`` if it would revert (nothing sent), cannot be paid, or reverted."""
    sender = Web3.to_checksum_address(wallet.address)
    tx: dict[str, Any] = {"from": sender, "chainId": int(w3.eth.chain_id),
                          "nonce": int(w3.eth.get_transaction_count(sender, "pending")), **fees(w3)}
    tx = dict(call.build_transaction({**tx, "gas": 1}))  # encodes; gas 1 keeps web3 from estimating here
    tx.pop("gas")
    try:
        estimate = int(w3.eth.estimate_gas(tx))  # type: ignore[arg-type]
    except Exception as err:
        if isinstance(err, OSError):  # requests' errors: the node (or its HTTP front) did not answer
            raise SettlementError(f"{what}: the node did not answer the gas estimate ({_unreachable(err)}): nothing "
                                  "was sent; check the node is up and run again") from None
        if "insufficient funds" in str(err) or "cannot afford" in str(err):
            raise SettlementError(f"{what}: {sender} cannot pay for gas on chain {tx['chainId']} (the node says: "
                                  f"{_short(err)}): fund that address and run again") from None
        raise SettlementError(f"{what}: {_revert_reason(err)} (refused by the node's gas estimate: nothing was "
                              "sent, no gas spent)") from None
    tx["gas"] = estimate + estimate * GAS_MARGIN_PCT // 100
    price = tx.get("maxFeePerGas", tx.get("gasPrice", 0))
    balance = int(w3.eth.get_balance(sender))
    if balance < tx["gas"] * price + int(tx.get("value", 0)):
        raise SettlementError(f"{what}: {sender} holds {balance} wei, less than the up to {tx['gas'] * price} wei "
                              f"of gas it may cost on chain {tx['chainId']}: fund that address and run again")
    signed = Account.sign_transaction(tx, wallet.key_hex)
    try:
        tx_hash = w3.eth.send_raw_transaction(signed.raw_transaction)
    except Exception as err:
        if isinstance(err, OSError):  # no answer, or an HTTP error from a hosted front: the node may have it
            raise SettlementError(f"{what}: the node's answer to transaction 0x{bytes(signed.hash).hex()} was lost "
                                  f"({_unreachable(err)}): it may have been sent; look it up on the chain's explorer "
                                  "before running again") from None
        raise SettlementError(f"{what}: the node refused the transaction: {_short(err)}") from None
    try:
        receipt = w3.eth.wait_for_transaction_receipt(tx_hash, timeout=timeout_s)
    except Exception:
        raise SettlementError(f"{what}: transaction 0x{bytes(tx_hash).hex()} was sent but not mined within "
                              f"{timeout_s:g} s; look it up on the chain's explorer before running again") from None
    if receipt["status"] != 1:
        reason = "reverted"
        try:
            w3.eth.call({k: v for k, v in tx.items() if k != "nonce"},  # type: ignore[arg-type]
                        block_identifier=receipt["blockNumber"])
        except Exception as err:
            reason = _revert_reason(err)
        raise SettlementError(f"{what}: transaction 0x{bytes(tx_hash).hex()} reverted in block "
                              f"{receipt['blockNumber']}: {reason}")
    return receipt


def event_at(event: Any, filters: dict[str, Any], accept: Callable[[Any], bool] = lambda log: True) -> str:
    """Where the first ``event`` log matching ``filters`` (and ``accept``) was emitted, "tx 0x.. / block N", for
    an error that says what is already on chain; a node may refuse a log query over the whole chain (hosted RPCs
    cap the range), and then the text says so."""
    try:
        logs = event.get_logs(from_block=0, to_block="latest", argument_filters=filters)
    except Exception:
        return "its transaction could not be looked up: the node refused the log query"
    for log in logs:
        if accept(log):
            return f"tx 0x{bytes(log['transactionHash']).hex()} / block {log['blockNumber']}"
    return f"no {event.event_name} event found"


def tx_hex(receipt: TxReceipt) -> str:
    return "0x" + bytes(receipt["transactionHash"]).hex()


def _revert_reason(err: BaseException) -> str:
    """The contract's revert string from a web3 ContractLogicError (HTTP nodes) or eth-tester's TransactionFailed
    (in process), else the error itself."""
    answer = getattr(err, "rpc_response", None)
    error = answer.get("error") if isinstance(answer, dict) else None
    text = str((error.get("message") if isinstance(error, dict) else None) or getattr(err, "message", None) or err)
    if "invalid opcode" in text:
        return f"{text}: the node's EVM may predate the contracts' (shanghai)"
    if "execution reverted" in text:
        reason = text.split("execution reverted", 1)[1].lstrip(":").strip().strip("'\"")
        return reason or "reverted without a reason"
    return _short(err)


def _unreachable(err: BaseException) -> str:
    """Why a node did not answer, without requests' nested pool text (which repeats the URL's path: a key)."""
    text = str(err)
    errno = re.search(r"\[Errno -?\d+\] ([^'\")\]]+)", text)
    if errno:
        return errno.group(1).strip()
    if "timed out" in text.lower() or "timeout" in type(err).__name__.lower():
        return "timed out"
    status = getattr(getattr(err, "response", None), "status_code", None)
    return f"HTTP {status}" if status else type(err).__name__


def _short(err: BaseException) -> str:
    """One line about ``err``: its type and first 200 characters; for requests' errors (OSErrors) not their text,
    which holds the URL and so a hosted endpoint's key, but ``_unreachable``'s reason."""
    if isinstance(err, OSError):
        return f"{type(err).__name__}: {_unreachable(err)}"
    text = " ".join(str(err).split())
    return f"{type(err).__name__}: {text[:200]}{'...' if len(text) > 200 else ''}"
