"""``heurist demo --economy``: the token economy around the demo's jobs, from genesis to a Merkle root.

The demo shortens the epoch (``--epoch-s``, default 30 s) and the heartbeat (epoch / 15), then:

1. genesis mints 30,000 HUE to the miner, 20,000 to a staker and 100 to an app (keys in the data dir);
2. the miner stakes 10,000 HUE on itself, the staker 15,000 HUE on the miner, and the miner sets a 20 %
   bribe, which takes effect from the next epoch;
3. at the next epoch boundary the app buys credit units for an API key with 10 HUE (the base fee is burned,
   the miners' share joins the epoch's pool), and the demo's jobs run;
4. when that epoch has ended, every ended epoch is closed and the jobs' epoch is reported.

Points are credited at once here (no escrow for new miners): a 30 s demo cannot wait for the audits that
release escrow. The audits still replay every job.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from heurist.cli.common import err_console
from heurist.db.engine import make_engine
from heurist.economy.actions import FundKey, SetBribe, Stake
from heurist.economy.amounts import hue
from heurist.economy.epochs import close_ended
from heurist.economy.service import Economy
from heurist.identity import Wallet
from heurist.settings import Settings

GENESIS = {"miner": 30_000, "staker": 20_000, "app": 100}


def economy_overrides(epoch_s: int) -> dict[str, Any]:
    """Settings for a demo-sized economy: short epochs, heartbeats 15 times an epoch, a short close grace."""
    return {"epoch_s": epoch_s, "heartbeat_interval_s": max(1.0, epoch_s / 15), "economy_close_grace_s": 2.0,
            "escrow_new_miners": False}


class EconomyDemo:
    """Drives the demo's economy around its jobs (see the module docstring)."""

    def __init__(self, settings: Settings, data_dir: Path, miner: Wallet) -> None:
        self.settings, self.miner = settings, miner
        self.staker = _wallet(data_dir / "staker.key")
        self.app = _wallet(data_dir / "app.key")
        self.economy = Economy.from_settings(settings, make_engine(settings.resolved_database_url()))
        self.jobs_epoch = -1

    def before_jobs(self, api_key_id: int) -> None:
        """Genesis, stakes and the bribe; then wait for a fresh epoch and buy credits in it."""
        eco, sign = self.economy, self.economy.domain.sign
        eco.genesis({self.miner.address: hue(GENESIS["miner"]), self.staker.address: hue(GENESIS["staker"]),
                     self.app.address: hue(GENESIS["app"])})
        m, s = self.miner.address, self.staker.address
        eco.apply(sign(self.miner, Stake(account=m, node=m, token="HUE", amount=hue(10_000), nonce=0)))
        eco.apply(sign(self.staker, Stake(account=s, node=m, token="HUE", amount=hue(15_000), nonce=0)))
        eco.apply(sign(self.miner, SetBribe(node=m, bps=2_000, nonce=1)))
        epoch_ms = eco.rules.epoch_s * 1000
        boundary = (eco.now_ms() // epoch_ms + 1) * epoch_ms
        with err_console.status(f"economy: staked 25,000 HUE on the miner, bribe 20 %; waiting "
                                f"{(boundary - eco.now_ms()) / 1000:.0f} s for the next epoch"):
            time.sleep(max(0.0, (boundary - eco.now_ms()) / 1000 + 0.05))
        self.jobs_epoch = eco.rules.epoch_of(eco.now_ms())
        eco.apply(sign(self.app, FundKey(account=self.app.address, key_id=api_key_id, amount=hue(10), nonce=0)))

    def after_jobs(self) -> dict[str, Any]:
        """Wait for the jobs' epoch to end, close every ended epoch, return the report with the most rewards."""
        eco = self.economy
        end_ms = eco.rules.epoch_bounds(self.jobs_epoch)[1] + int(eco.rules.close_grace_s * 1000)
        with err_console.status(f"economy: waiting {max(0, end_ms - eco.now_ms()) / 1000:.0f} s for epoch "
                                f"{self.jobs_epoch} to end"):
            time.sleep(max(0.0, (end_ms - eco.now_ms()) / 1000 + 0.05))
        reports = [r for r in close_ended(eco) if r["epoch"] >= self.jobs_epoch]
        return max(reports, key=lambda r: (int(r["issued"]) + int(r["fees_to_miners"]), r["epoch"]))

    def addresses(self) -> dict[str, str]:
        return {"miner": self.miner.address, "staker": self.staker.address, "app": self.app.address}


def _wallet(path: Path) -> Wallet:
    wallet = Wallet.create()
    wallet.save(path)
    return wallet
