"""The token economy's settings (``HEURIST_ECONOMY_*``), mixed into ``heurist.settings.Settings``.

Outside ``heurist.economy`` because every process reads settings, miners included, and the miner side never
imports the trusted side (tests/test_import_contract.py). ``heurist.economy.config.Rules`` turns them into exact
integers once; the defaults and why are in that module's docstring.
"""

from __future__ import annotations

from pydantic import BaseModel, Field

DAY_S = 86_400
BPS = 10_000


class EconomySettings(BaseModel):
    """Mixed into ``Settings``: every field is ``HEURIST_<NAME>``."""

    economy_genesis: dict[str, str] = Field(
        default_factory=dict, description='Genesis allocation, JSON {"0xADDRESS": "HUE amount"}: minted once, '
        "counted against the 1,000,000,000 HUE cap (`heurist economy genesis` does the same from the CLI).")
    economy_activation_hue: str = Field("10000", description="HUE or esHUE staked on a node (its own plus "
                                        "delegated, time-averaged over the epoch) for it to earn rewards.")
    economy_min_stake_hue: str = Field("1", description="The smallest amount one stake action may stake.")
    economy_emission_tau_s: int = Field(4 * 365 * DAY_S, ge=1, description="Emission's time constant: each epoch "
                                        "mints remaining_budget x epoch_s // tau (never past the cap).")
    economy_base_fee_hue: str = Field("0.01", description="Starting base fee per Standard Credit Unit (burned).")
    economy_miner_fee_hue: str = Field("0.002", description="Miners' share per Standard Credit Unit, added to "
                                       "the epoch's reward pool.")
    economy_target_units: int = Field(10_000, ge=1, description="Credit units bought per epoch the base fee "
                                      "steers toward (EIP-1559's target).")
    economy_eshue_multiplier_bps: int = Field(15_000, ge=10_000, le=100_000, description="Weight of esHUE stake "
                                              "against HUE stake in a staker's share, in basis points.")
    economy_unstake_lock_s: int = Field(30 * DAY_S, ge=0, description="How long unstaked HUE stays locked.")
    economy_vesting_s: int = Field(365 * DAY_S, ge=1, description="How long esHUE takes to vest into HUE.")
    economy_waifu_bps: int = Field(5_000, ge=0, le=BPS, description="The Waifu (image) pool's share of the "
                                   "50,000,000 testnet HUE at TGE, in basis points; the Llama pool gets the rest.")
    economy_close_grace_s: float = Field(60.0, ge=0, description="How long after an epoch ends before it may be "
                                         "closed (credits still being committed then count in it).")
    economy_domain_name: str = Field("Heurist", description="EIP-712 domain name of signed economy actions.")
    economy_domain_version: str = Field("1", description="EIP-712 domain version of signed economy actions.")
