"""Deploying the three contracts, wiring who may mint, and recording their addresses where Settings reads them.

Seven transactions, in this order, each waited for (a later one needs the earlier addresses): HUE; esHUE(hue);
RewardsDistributor(hue, eshue, settler); HUE.setMinter(esHUE) (esHUE mints the HUE that backs it); HUE.setMinter
(distributor) (TGE claims pay HUE); esHUE.setMinter(distributor) (epoch claims pay esHUE); esHUE.setProtocol
(distributor). The deploying key owns all three; the settler (the key that posts roots) is that key unless another
is given. 2,532,223 gas in all (measured on the in-process chain and on ganache 7.9.2 alike).

Why an env file. ``Settings`` reads ``.env`` in the working directory, so writing ``HEURIST_SETTLEMENT_HUE``,
``_ESHUE``, ``_DISTRIBUTOR`` and ``_CHAIN_ID`` there is what makes ``heurist settle`` and ``heurist claim-onchain``
find the contracts next time. Every other line of the file is kept as it was (comments, order, other settings);
a variable set in the process environment still wins over the file, which the CLI points out.
"""

from __future__ import annotations

import os
import re
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from web3 import Web3

from heurist.identity import Wallet
from heurist.settlement.artifacts import load
from heurist.settlement.chain import SettlementError, node_errors, transact, tx_hex

ENV_NAMES = ("HEURIST_SETTLEMENT_HUE", "HEURIST_SETTLEMENT_ESHUE", "HEURIST_SETTLEMENT_DISTRIBUTOR",
             "HEURIST_SETTLEMENT_CHAIN_ID")


@dataclass(frozen=True)
class Deployment:
    """Where the contracts are, who owns and settles them, and the transactions that made them."""

    chain_id: int
    hue: str
    eshue: str
    distributor: str
    owner: str
    settler: str
    block: int  # the distributor's deployment block: where to start looking for its events
    gas_used: int
    txs: dict[str, str]  # step -> transaction hash

    def env(self) -> dict[str, str]:
        return dict(zip(ENV_NAMES, (self.hue, self.eshue, self.distributor, str(self.chain_id)), strict=True))

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@node_errors("deploy")
def deploy(w3: Web3, wallet: Wallet, settler: str | None = None) -> Deployment:
    """Deploy HUE, esHUE and the RewardsDistributor with ``wallet`` and wire them (see the module docstring)."""
    if settler is not None and not Web3.is_address(settler):
        raise SettlementError(f"--settler {settler!r} is not an address: give 0x and 40 hex digits")
    settles = Web3.to_checksum_address(settler) if settler else wallet.address
    txs: dict[str, str] = {}
    gas = 0

    def send(step: str, call: Any) -> Any:
        nonlocal gas
        receipt = transact(w3, wallet, call, what=f"deploy: {step}")
        txs[step] = tx_hex(receipt)
        gas += int(receipt["gasUsed"])
        return receipt

    def create(name: str, *args: Any) -> Any:
        artifact = load(name)
        factory = w3.eth.contract(abi=artifact.abi, bytecode=artifact.bytecode)
        receipt = send(name, factory.constructor(*args))
        return receipt, w3.eth.contract(address=receipt["contractAddress"], abi=artifact.abi)

    _, hue = create("HUE")
    _, eshue = create("esHUE", hue.address)
    made, distributor = create("RewardsDistributor", hue.address, eshue.address, settles)
    send("HUE.setMinter(esHUE)", hue.functions.setMinter(eshue.address, True))
    send("HUE.setMinter(RewardsDistributor)", hue.functions.setMinter(distributor.address, True))
    send("esHUE.setMinter(RewardsDistributor)", eshue.functions.setMinter(distributor.address, True))
    send("esHUE.setProtocol(RewardsDistributor)", eshue.functions.setProtocol(distributor.address, True))
    return Deployment(chain_id=int(w3.eth.chain_id), hue=hue.address, eshue=eshue.address,
                      distributor=distributor.address, owner=wallet.address, settler=settles,
                      block=int(made["blockNumber"]), gas_used=gas, txs=txs)


def record(values: dict[str, str], env_file: Path) -> list[str]:
    """Set ``values`` (NAME -> value) in ``env_file``, replacing their lines in place and appending the others;
    every other line is kept. Written atomically with the file's mode. Returns the names whose value a variable
    of the process environment overrides (Settings prefers it to the file)."""
    env_file = Path(env_file)
    by_hand = " ".join(f"{name}={value}" for name, value in values.items())  # a deploy is paid: never lose them
    try:
        lines = env_file.read_text().splitlines() if env_file.exists() else []
    except OSError as err:
        raise SettlementError(f"--env-file {env_file}: cannot read it ({err.strerror}); set these yourself: "
                              f"{by_hand}") from None
    pending = dict(values)
    out = []
    for line in lines:
        found = re.match(r"\s*(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)\s*=", line)
        name = found.group(1) if found else None
        if name in values:
            if name in pending:
                out.append(f"{name}={pending.pop(name)}")
            continue  # a second line of the same name would shadow the first: dropped
        out.append(line)
    if pending and out and out[-1].strip():
        out.append("")
    out.extend(f"{name}={value}" for name, value in pending.items())
    mode = env_file.stat().st_mode & 0o777 if env_file.exists() else 0o644
    try:
        env_file.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=env_file.parent, prefix=f".{env_file.name}.")
        with os.fdopen(fd, "w") as handle:
            handle.write("\n".join(out) + "\n")
        os.chmod(tmp, mode)
        os.replace(tmp, env_file)
    except OSError as err:
        raise SettlementError(f"--env-file {env_file}: cannot write it ({err.strerror}); set these yourself: "
                              f"{by_hand}") from None
    return [name for name, value in values.items() if os.environ.get(name, value) != value]
