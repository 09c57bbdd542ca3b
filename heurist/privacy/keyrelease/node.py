"""One key-release node's decision: give a requester this node's share of a job's key, or refuse and say why.

Checks, in order, each a small function that raises ``Refused``: its signature recovers to the miner it names;
the request is for this node; it is fresh (it expires after now and at most ``MAX_REQUEST_TTL_S``, 60 s, ahead);
the requester is under its rate limit (these touch no database); the requester has a privacy registration whose
signature holds and is privacy-enabled (approved by a decision the approver key signed, policy accepted, not
banned): every ACC narrows that, none widens it; the job exists and is private; this node's sealed share
opens with its key and is bound to this job, this node and the ACC now in the database (an operator who edits
a job's ACC gets nothing: the client sealed the digest of the original into every share); the ACC holds on
what the ledger says of the requester (``facts``). Only then is the release recorded, and the insert of its
row is the replay check: ``keyrelease_log`` is unique on (node, nonce), so a request seen once, even by
another process of this node, fails to insert and is refused.

Every decision is a log line (refusals WARNING, releases INFO), and every release and every refusal of a
registered requester is also a ``keyrelease_log`` row; neither ever holds key material: the share goes out only
sealed to the requester's registered X25519 key. Refusals before the registration check (forged, wrong node,
stale, rate limited, unregistered) and replays are log lines only: anyone can sign with a fresh key, and a curious
node could replay a miner's captured request forever; neither must grow the database.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from nacl.public import PrivateKey
from pydantic import ValidationError
from sqlalchemy import Engine
from sqlalchemy.exc import IntegrityError

from heurist.db.base import ID_LEN
from heurist.db.engine import session_scope
from heurist.economy.amounts import format_hue
from heurist.errors import HeuristError
from heurist.jobs import PrivateEnvelope
from heurist.ledger.tables import Job
from heurist.privacy import acc
from heurist.privacy.envelope import PrivacyError, Share, open_sealed, seal_to
from heurist.privacy.keyrelease.facts import read_facts
from heurist.privacy.messages import MAX_REQUEST_TTL_S, KeyRequest, ShareGrant, SignedKeyRequest
from heurist.privacy.tables import Release
from heurist.settings import Settings
from heurist.signing import Domain, message_signer

log = logging.getLogger(__name__)

REASON_CHARS = 500  # keyrelease_log.reason


class Refused(HeuristError):
    """The node gives no share; ``reason`` says why (HTTP 403), never with key material. ``stored``: False for a
    refusal that is a log line only (a replay, a flood), so repeating it grows nothing."""

    def __init__(self, reason: str, *, stored: bool = True) -> None:
        super().__init__(reason)
        self.reason = reason
        self.stored = stored


class RateLimit:
    """At most ``RATE`` requests a second per requester, in bursts of ``BURST`` (a token bucket, in memory): a
    miner asks each node once per job (twice for a re-run), so this is far above honest use and far below what
    a flood could make the ledger's database answer."""

    RATE, BURST = 20.0, 60.0

    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}

    def take(self, requester: str) -> None:
        now = self.clock()
        tokens, then = self._buckets.get(requester, (self.BURST, now))
        tokens = min(self.BURST, tokens + (now - then) * self.RATE)
        if tokens < 1:
            raise Refused(f"rate limited: at most {self.RATE:.0f} requests a second per requester", stored=False)
        if len(self._buckets) > 100_000:  # forget idle requesters rather than grow without end
            self._buckets.clear()
        self._buckets[requester] = (tokens - 1, now)


class MalformedRequest(HeuristError):
    """The body is not a ``SignedKeyRequest`` (HTTP 422); the message names the first bad field."""


@dataclass(frozen=True)
class Policy:
    """What every node of a network agrees on: the policy version, whether a TEE is required, the domain, and
    the approver key whose signed approvals count (None: approvals as the database holds them)."""

    version: str
    tee_required: bool
    domain: Domain
    approver: str | None = None

    @classmethod
    def of(cls, settings: Settings) -> Policy:
        return cls(settings.privacy_policy_version, settings.privacy_tee_verifier is not None,
                   Domain.of(settings), settings.privacy_approver)


class KeyReleaseNode:
    """Node ``index`` (1-based) with its X25519 ``private_key``, reading the ledger on ``engine``."""

    def __init__(self, index: int, private_key: PrivateKey, engine: Engine, policy: Policy,
                 clock: Callable[[], float] = time.time) -> None:
        self.index = index
        self._key = private_key
        self.public_key = private_key.public_key
        self.engine = engine
        self.policy = policy
        self.clock = clock
        self.limits = RateLimit(clock)

    def answer(self, payload: Any) -> ShareGrant:
        """This node's share of the requested job sealed to the requester, or ``Refused``."""
        signed = parse(payload)
        request, now = signed.request, self.clock()
        requester: str | None = None
        registered = False  # only a registered requester's refusals are stored: anyone can sign with a new key
        try:
            requester = self._signer(signed)
            self._for_this_node(request)  # these three touch no database: a flood costs a signature check
            self._fresh(request, now)
            self.limits.take(requester)
            facts, why_not, key = read_facts(self.engine, requester, policy_version=self.policy.version,
                                             tee_required=self.policy.tee_required, approver=self.policy.approver,
                                             domain=self.policy.domain)
            if facts is None or key is None:
                raise Refused(why_not or "not a registered privacy miner")
            registered = True
            if why_not is not None:  # every ACC also needs an approved, unbanned privacy miner
                raise Refused(f"not privacy-enabled: {why_not}")
            envelope = self._envelope(request.job_id)
            share = self._share(envelope, request)
            self._acc_holds(envelope, facts, why_not)
            grant = ShareGrant(job_id=request.job_id, node=self.index,
                               sealed=seal_to(key, share.to_json(job_id=request.job_id, node=self.index)))
            self._released(request, requester, now)
        except Refused as refusal:
            self._refused(request, requester if registered else None, refusal.reason, now,
                          stored=registered and refusal.stored)
            raise
        log.info("node %d released its share of job %s to %s", self.index, request.job_id, requester)
        return grant

    # ------------------------------------------------------------------------------------------ checks

    def _for_this_node(self, request: KeyRequest) -> None:
        if request.node != self.index:
            raise Refused(f"wrong node: the request is for node {request.node}, this is node {self.index}")

    def _signer(self, signed: SignedKeyRequest) -> str:
        signer = message_signer(signed.request, signed.signature, self.policy.domain)
        if signer is None or signer.lower() != signed.request.miner.lower():
            raise Refused("bad signature: it does not recover to the request's miner")
        return signer

    @staticmethod
    def _fresh(request: KeyRequest, now: float) -> None:
        if request.expires_at <= now:
            raise Refused(f"expired {now - request.expires_at:.0f} s ago; send a new request")
        if request.expires_at > now + MAX_REQUEST_TTL_S:
            raise Refused(f"expires {request.expires_at - now:.0f} s ahead, at most {MAX_REQUEST_TTL_S:.0f} s "
                          "(check the requester's clock)")

    def _envelope(self, job_id: str) -> PrivateEnvelope:
        with session_scope(self.engine) as session:
            job = session.get(Job, job_id) if len(job_id) <= ID_LEN else None
            if job is None:
                raise Refused(f"unknown job {job_id}")
            raw = job.sealed
        if raw is None:
            raise Refused(f"job {job_id} is not private (it has no sealed envelope)")
        try:
            return PrivateEnvelope.model_validate(raw)
        except ValidationError:
            raise Refused(f"job {job_id}: its sealed envelope is malformed") from None

    def _share(self, envelope: PrivateEnvelope, request: KeyRequest) -> Share:
        mine = [s for s in envelope.shares if s.node == self.index]
        if not mine:
            raise Refused(f"job {request.job_id} has no share for node {self.index}")
        try:
            data = open_sealed(self._key, mine[0].sealed)
            share = Share.from_json(data)
        except PrivacyError:
            raise Refused(f"job {request.job_id}: the share for node {self.index} does not open with this "
                          "node's key") from None
        bound = (data.get("job_id"), data.get("acc_sha256"), data.get("node"))
        if bound[0] != request.job_id or bound[2] != self.index:
            raise Refused(f"job {request.job_id}: the share for node {self.index} was sealed for another job "
                          "or node")
        if bound[1] != acc.digest(envelope.acc):
            raise Refused("the job's ACC is not the one its client sealed")
        return share

    @staticmethod
    def _acc_holds(envelope: PrivateEnvelope, facts: acc.Facts, why_not: str | None) -> None:
        try:
            condition = acc.parse(envelope.acc)
        except acc.AccError as err:
            raise Refused(f"the job's ACC does not parse ({err})") from None
        if not acc.holds(condition, facts):
            raise Refused(f"ACC not satisfied: {unmet(condition, facts, why_not)}")

    # --------------------------------------------------------------------------------------------- log

    def _released(self, request: KeyRequest, requester: str, now: float) -> None:
        try:
            self._insert(request.job_id, requester, request.nonce, True, "released", now)
        except IntegrityError:
            raise Refused(f"replayed nonce: node {self.index} already answered nonce {request.nonce}",
                          stored=False) from None

    def _refused(self, request: KeyRequest, requester: str | None, reason: str, now: float, *,
                 stored: bool) -> None:
        """Log the refusal; store it too (with its nonce, which is then spent) when ``stored``. A refused request
        sent again finds its nonce taken and is a log line only, like every refusal that is not ``stored``."""
        if stored:
            with contextlib.suppress(IntegrityError):
                self._insert(request.job_id, requester, request.nonce, False, reason, now)
        who = requester or f"{request.miner} (unverified or unregistered)"
        log.warning("node %d refused job %s to %s: %s", self.index, request.job_id, who, reason)

    def _insert(self, job_id: str, requester: str | None, nonce: str | None, released: bool, reason: str,
                now: float) -> None:
        with session_scope(self.engine) as session:
            session.add(Release(node=self.index, job_id=job_id[:ID_LEN], requester=requester, nonce=nonce,
                                released=released, reason=reason[:REASON_CHARS], at=now))


def parse(payload: Any) -> SignedKeyRequest:
    """The signed request in a JSON body, or ``MalformedRequest`` naming the first bad field."""
    try:
        return SignedKeyRequest.model_validate(payload)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "body"
        raise MalformedRequest(f"{where}: {first['msg']} (the body is a SignedKeyRequest, "
                               "heurist.privacy.messages)") from None


def unmet(condition: acc.Condition, facts: acc.Facts, why_not: str | None) -> str:
    """Which terms of ``condition`` fail on ``facts``, in words (no key material: only ledger facts)."""
    match condition:
        case acc.Addresses(addresses=allowed):
            return f"addresses ({facts.address} is not among the {len(allowed)} listed)"
        case acc.PrivacyEnabled():
            return f"privacy_enabled ({why_not or 'not privacy-enabled'})"
        case acc.MinReputation(value=least):
            return f"min_reputation {least:g} (its reputation is {facts.reputation:.3f})"
        case acc.MinStake():
            return f"min_stake {condition.hue} HUE ({format_hue(facts.stake_units)} HUE staked on it)"
        case acc.All(all=terms):
            return "; ".join(unmet(t, facts, why_not) for t in terms if not acc.holds(t, facts))
        case acc.Any_(any=terms):
            return "none of: " + " | ".join(unmet(t, facts, why_not) for t in terms)
    return "unknown condition"


__all__ = ["KeyReleaseNode", "MalformedRequest", "Policy", "Refused", "parse", "unmet"]
