"""The economy's knobs: flat ``HEURIST_ECONOMY_*`` settings, turned once into exact integer ``Rules``.

The fields are ``heurist.settings_economy.EconomySettings``, a mixin of ``heurist.settings.Settings`` (one settings
object, read at start; it lives outside this package because miners read settings too, and the miner side never
imports the economy). Amounts are typed as decimal HUE ("0.01") and
become base units in ``Rules``; shares are basis points (10,000 = 100 %), so no float reaches a balance.

Defaults, and why:

* activation 10,000 HUE (the seed's); one stake action at least 1 HUE, so dust cannot bloat the book.
* emission: each epoch mints ``remaining x epoch_s // tau`` with tau = 4 years: an exponential decay of the
  budget left under the cap, so the schedule can never pass it (each epoch takes a fraction of what is left).
  With 950 M HUE left and 1-hour epochs that is about 27,000 HUE an epoch at first.
* fees: a Standard Credit Unit costs the base fee (0.01 HUE, burned) plus 0.002 HUE for miners. The base fee
  moves by at most 1/8 an epoch toward 10,000 units an epoch (EIP-1559's rule and denominator).
* esHUE stake counts 1.5x HUE stake in a staker's share (15,000 bps).
* unstaking HUE locks it 30 days; esHUE vests linearly into HUE over 365 days.
* testnet: 50 M HUE at TGE, half to the Waifu pool (image points), half to the Llama pool (text points).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from heurist.economy.amounts import ONE, AmountError, parse_hue
from heurist.settings_economy import BPS as BPS  # re-exported: the formulas take it from here
from heurist.settings_economy import DAY_S

if TYPE_CHECKING:
    from heurist.settings import Settings

CAP = 1_000_000_000 * ONE  # HUE's maximum supply, in base units
TESTNET_POOL = 50_000_000 * ONE  # 5 % of the cap, converted from testnet points at TGE
MICRO = 1_000_000  # credit units are micro-units (heurist.points.MICRO); fees are per micro-unit


@dataclass(frozen=True)
class Rules:
    """Every constant of the formulas as exact integers (base units, basis points, seconds)."""

    epoch_s: int
    activation: int = 10_000 * ONE
    min_stake: int = ONE
    emission_tau_s: int = 4 * 365 * DAY_S
    base_fee_per_micro: int = ONE // 100 // MICRO  # 0.01 HUE per unit
    miner_fee_per_micro: int = 2 * ONE // 1000 // MICRO
    target_micro_units: int = 10_000 * MICRO
    eshue_multiplier_bps: int = 15_000
    unstake_lock_s: int = 30 * DAY_S
    vesting_s: int = 365 * DAY_S
    waifu_bps: int = 5_000
    close_grace_s: float = 60.0
    slots_per_epoch: int = 120  # heartbeat slots in an epoch (epoch_s / heartbeat_interval_s, rounded up)
    cap: int = CAP
    testnet_pool: int = TESTNET_POOL

    @classmethod
    def of(cls, settings: Settings) -> Rules:
        return cls(
            epoch_s=settings.epoch_s,
            activation=parse_hue(settings.economy_activation_hue, "HEURIST_ECONOMY_ACTIVATION_HUE"),
            min_stake=parse_hue(settings.economy_min_stake_hue, "HEURIST_ECONOMY_MIN_STAKE_HUE"),
            emission_tau_s=settings.economy_emission_tau_s,
            base_fee_per_micro=_per_micro(settings.economy_base_fee_hue, "HEURIST_ECONOMY_BASE_FEE_HUE"),
            miner_fee_per_micro=_per_micro(settings.economy_miner_fee_hue, "HEURIST_ECONOMY_MINER_FEE_HUE"),
            target_micro_units=settings.economy_target_units * MICRO,
            eshue_multiplier_bps=settings.economy_eshue_multiplier_bps,
            unstake_lock_s=settings.economy_unstake_lock_s,
            vesting_s=settings.economy_vesting_s,
            waifu_bps=settings.economy_waifu_bps,
            close_grace_s=settings.economy_close_grace_s,
            slots_per_epoch=max(1, math.ceil(settings.epoch_s / settings.heartbeat_interval_s)),
        )

    def epoch_bounds(self, epoch: int) -> tuple[int, int]:
        """[start, end) of ``epoch`` in unix milliseconds (the same epochs as uptime: floor(t / epoch_s))."""
        return epoch * self.epoch_s * 1000, (epoch + 1) * self.epoch_s * 1000

    def epoch_of(self, t_ms: int) -> int:
        return t_ms // (self.epoch_s * 1000)


def _per_micro(text: str, field: str) -> int:
    """A per-unit HUE price as base units per micro-unit; it must divide exactly (no rounding of fees)."""
    per_unit = parse_hue(text, field)
    if per_unit % MICRO:
        raise AmountError(f"{field}: {text} HUE per unit must be a whole number of base units per micro-unit "
                         f"(a multiple of 1e-12 HUE)")
    return per_unit // MICRO
