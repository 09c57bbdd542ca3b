"""Access-control conditions (ACC): who may receive a private job's key, as a small JSON language.

Lit Protocol's conditions, cut to what this network can check against its own ledger. A condition is one of:

* ``{"kind": "addresses", "addresses": ["0x...", ...]}``: the requester is one of these (1 to 512) addresses;
* ``{"kind": "privacy_enabled"}``: an operator approved it (``heurist privacy approve``) and its latest
  registration accepts the current policy version (and carries a verified TEE attestation, when a verifier is
  configured);
* ``{"kind": "min_reputation", "value": 0.8}``: its audit reputation (``heurist.ledger.audit_service``, 0 to 1)
  is at least this;
* ``{"kind": "min_stake", "hue": "10000"}``: HUE and esHUE staked on it (the economy's ledger) is at least this;
* ``{"kind": "and", "all": [...]}`` / ``{"kind": "or", "any": [...]}``: 1 to 16 conditions, nested up to 4 deep.

Validation is pydantic's, so an error names its place: ``all.1.value: Input should be less than or equal to 1``.
``canonical`` gives the bytes a client binds to the ciphertext (sorted keys, compact, addresses lower-case), so the
key-release nodes and the miner all hash the same text. ``holds`` evaluates it on ``Facts`` a key-release node
read from the ledger; it never raises.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, TypeAdapter, ValidationError, field_validator

from heurist.economy.amounts import parse_hue
from heurist.errors import HeuristError
from heurist.jobs import ADDRESS, MAX_ACC_CHARS, Frozen
from heurist.privacy.envelope import acc_digest

MAX_ADDRESSES = 512
MAX_TERMS = 16
MAX_DEPTH = 4


class AccError(HeuristError):
    """An access-control condition that does not parse; the message names the field and the fix."""


class Addresses(Frozen):
    kind: Literal["addresses"]
    addresses: list[ADDRESS] = Field(min_length=1, max_length=MAX_ADDRESSES)

    @field_validator("addresses")
    @classmethod
    def _lower(cls, value: list[str]) -> list[str]:
        return sorted({a.lower() for a in value})


class PrivacyEnabled(Frozen):
    kind: Literal["privacy_enabled"]


class MinReputation(Frozen):
    kind: Literal["min_reputation"]
    value: float = Field(ge=0, le=1)


class MinStake(Frozen):
    kind: Literal["min_stake"]
    hue: str = Field(description="HUE, as a decimal string (\"10000\", \"0.5\")")

    @field_validator("hue")
    @classmethod
    def _amount(cls, value: str) -> str:
        try:
            parse_hue(value)
        except (ValueError, HeuristError) as err:  # negatives too: parse_hue refuses them
            raise ValueError(f"not a HUE amount ({err}); write it as a decimal string such as \"10000\"") from None
        return value

    @property
    def units(self) -> int:
        return parse_hue(self.hue)


class All(Frozen):
    kind: Literal["and"]
    all: list[Condition] = Field(min_length=1, max_length=MAX_TERMS)


class Any_(Frozen):
    kind: Literal["or"]
    any: list[Condition] = Field(min_length=1, max_length=MAX_TERMS)


Condition = Annotated[Addresses | PrivacyEnabled | MinReputation | MinStake | All | Any_,
                      Field(discriminator="kind")]
All.model_rebuild()
Any_.model_rebuild()
_ADAPTER: TypeAdapter[Condition] = TypeAdapter(Condition)  # type: ignore[arg-type]


@dataclass(frozen=True)
class Facts:
    """What the ledger says of one requester (a miner or an auditor), read by a key-release node."""

    address: str
    privacy_enabled: bool
    reputation: float
    stake_units: int


def parse(value: object) -> Condition:
    """A condition from parsed JSON (a dict) or JSON text; raises ``AccError`` naming the first bad field."""
    try:
        if isinstance(value, str | bytes):
            if len(value) > MAX_ACC_CHARS:
                raise AccError(f"acc: {len(value)} characters, at most {MAX_ACC_CHARS}; list fewer addresses")
            condition = _ADAPTER.validate_json(value)
        else:
            condition = _ADAPTER.validate_python(value)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(_without_tags(first["loc"])) or "acc"
        raise AccError(f"acc: {where}: {first['msg']} (see `heurist submit --help` for the ACC language)") from None
    if depth(condition) > MAX_DEPTH:
        raise AccError(f"acc: nested {depth(condition)} deep, at most {MAX_DEPTH}; flatten the and/or terms")
    return condition


def load(path: Path) -> Condition:
    """A condition from a JSON file (``--acc FILE``)."""
    try:
        return parse(path.read_text())
    except OSError as err:
        raise AccError(f"--acc: cannot read {path}: {err.strerror}") from None


def canonical(condition: Condition) -> str:
    """The text bound to the ciphertext: sorted keys, compact, addresses lower-case and sorted."""
    return json.dumps(condition.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))


def digest(acc_text: str) -> str:
    """What the client bound to the ciphertext and sealed into every share (``heurist.privacy.envelope``)."""
    return acc_digest(acc_text)


def holds(condition: Condition, facts: Facts) -> bool:
    """Whether ``facts`` satisfy ``condition``."""
    match condition:
        case Addresses(addresses=allowed):
            return facts.address.lower() in allowed
        case PrivacyEnabled():
            return facts.privacy_enabled
        case MinReputation(value=least):
            return facts.reputation >= least
        case MinStake():
            return facts.stake_units >= condition.units
        case All(all=terms):
            return all(holds(t, facts) for t in terms)
        case Any_(any=terms):
            return any(holds(t, facts) for t in terms)
    return False


def depth(condition: Condition) -> int:
    if isinstance(condition, All | Any_):
        return 1 + max(depth(t) for t in (condition.all if isinstance(condition, All) else condition.any))
    return 1


def _without_tags(loc: tuple[int | str, ...]) -> list[str]:
    """pydantic puts the union's tag in an error's place (``all.1.min_reputation.value``): drop it, since a tag
    follows the start or a list index."""
    tags = ("addresses", "privacy_enabled", "min_reputation", "min_stake", "and", "or")
    return [str(p) for i, p in enumerate(loc) if not (p in tags and (i == 0 or isinstance(loc[i - 1], int)))]


DEFAULT = PrivacyEnabled(kind="privacy_enabled")  # what a private job asks when the client gives no ACC

__all__ = ["DEFAULT", "AccError", "Addresses", "All", "Any_", "Condition", "Facts", "MinReputation", "MinStake",
           "PrivacyEnabled", "canonical", "digest", "holds", "load", "parse"]
