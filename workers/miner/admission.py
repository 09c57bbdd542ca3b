"""Which job messages a miner runs: small checks in a fixed order, the first refusal wins.

Anyone who may publish into a tier queue can put a message there, and a miner reads its queues as they
are. Before this, an honest miner obeyed forged jobs: it rendered 512² on a model whose catalog maximum is
256, generated 1,050 tokens where the maximum is 512, PUT its output to an attacker's HTTP server (SSRF,
free compute) and answered a victim's job id with the attacker's prompt (issue 12, attack 4). Now a job runs
only if:

1. it parses as a ``SignedJob`` (a frozen model: extra fields are refused);
2. its EIP-712 signature recovers to the network's ``dispatch_address`` (``heurist.signing``): forged jobs,
   and genuine ones whose prompt, size, URL or job id were changed, stop here;
3. its deadline has not passed: a genuine message held back and replayed late earns nothing and is not run;
4. its model is one this miner loaded (a genuine job republished into another model's queue);
5. it is public, or this is a privacy miner (``heurist miner --private``): a private job's message holds only
   ciphertext for a public miner, which could run nothing but its neutral clear copy;
6. its parameters are within the catalog's limits (``heurist.submission``, the checks the client runs; a
   private job's real ones are checked again once decrypted, ``workers.miner.private``);
7. its upload URL is on the configured store: same scheme, host and port as ``HEURIST_S3_ENDPOINT`` (and
   under its path, if it has one);
8. this process has not admitted the very same signed message before (a genuine message republished many
   times would otherwise be run each time: free compute for nobody). A redispatched job is a new message
   (fresh URL, new signature) and runs. Up to ``REMEMBERED`` signatures are kept, each until its deadline.

Checks 3 to 7 hold only what a correct dispatcher already guarantees; they bound the damage of a
dispatcher bug or a leaked dispatch key. The signature comes first: nothing in an unsigned message is worth
reading. A refusal is a ``JobRefused``; the task rejects the message without requeue (the broker's
dead-letter exchange keeps it) and sends nothing to the ledger: a miner that reported a failure for every
refused message would let anyone fail a victim's job by republishing it where it is refused.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from pydantic import ValidationError

from heurist.catalog import ModelSpec
from heurist.errors import ConfigError, InvalidJobError, JobRefused
from heurist.jobs import ImageParams, JobMessage, SignedJob
from heurist.settings import Settings
from heurist.signing import DEFAULT_DOMAIN, Domain, job_signer
from heurist.submission import image_params, text_params

DEFAULT_PORTS = {"http": 80, "https": 443}
REMEMBERED = 10_000  # admitted signatures kept against replays (about 2 MB)


@dataclass(frozen=True)
class Origin:
    """Scheme, host, port and path prefix of the object store's endpoint."""

    scheme: str
    host: str
    port: int | None
    path: str

    @classmethod
    def of(cls, url: str) -> Origin:
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        try:
            port = parts.port or DEFAULT_PORTS.get(scheme)
        except ValueError:  # a port that is not a number
            port = None
        return cls(scheme, (parts.hostname or "").lower(), port, parts.path.rstrip("/"))

    def holds(self, url: str) -> bool:
        other = Origin.of(url)
        return ((other.scheme, other.host, other.port) == (self.scheme, self.host, self.port)
                and (other.path + "/").startswith(self.path + "/"))


@dataclass
class Candidate:
    """One message under consideration, and what the checks have learned of it."""

    payload: Any
    signed: SignedJob | None = None
    spec: ModelSpec | None = None

    @property
    def job(self) -> JobMessage:
        assert self.signed is not None
        return self.signed.job


@dataclass(frozen=True)
class Admission:
    """The checks' inputs: the dispatcher's address, the store, the models loaded here, a clock."""

    dispatch_address: str
    store: Origin
    models: Mapping[str, ModelSpec]
    clock: Callable[[], float] = time.time
    domain: Domain = DEFAULT_DOMAIN  # the network's (its chain id): a job signed for another is refused
    private: bool = False  # a privacy miner (``heurist miner --private``): it may run private jobs
    admitted: OrderedDict[str, float] = field(default_factory=OrderedDict, compare=False, repr=False)

    @classmethod
    def from_settings(cls, settings: Settings, models: Sequence[ModelSpec], private: bool = False) -> Admission:
        """Refuse to start without what the checks compare against (a miner that cannot check obeys anyone)."""
        if not settings.dispatch_address:
            raise ConfigError("HEURIST_DISPATCH_ADDRESS is not set: a miner runs only job messages signed by "
                              "the network's dispatch key, whose address the network operator gives you with "
                              "your broker URL (`heurist broker add-miner ADDRESS --json` prints dispatch_address)")
        if not settings.s3_endpoint or not Origin.of(settings.s3_endpoint).host:
            raise ConfigError("HEURIST_S3_ENDPOINT is not set to a URL: a miner uploads outputs only to the "
                              "network's object store; set it to the store's public URL the operator gives you "
                              "(e.g. https://s3.example.net), the one its presigned URLs point at")
        return cls(settings.dispatch_address, Origin.of(settings.s3_endpoint), {m.id: m for m in models},
                   domain=Domain.of(settings), private=private)

    def admit(self, payload: Any) -> JobMessage:
        """The job in ``payload`` if every check passes; raises ``JobRefused`` with the first failing one."""
        candidate = Candidate(payload)
        for check in CHECKS:
            check(self, candidate)
        return candidate.job


def _parse(a: Admission, c: Candidate) -> None:
    try:
        c.signed = SignedJob.model_validate(c.payload)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "message"
        raise JobRefused("malformed", f"{where}: {first['msg']}") from None


def _check_signature(a: Admission, c: Candidate) -> None:
    """Only the dispatcher's key signs jobs; any change to a signed message changes what recovers."""
    assert c.signed is not None
    signer = job_signer(c.signed, a.domain)
    if signer is None or signer.lower() != a.dispatch_address.lower():
        raise JobRefused("bad_signature", f"job {c.job.job_id} is not signed by the dispatcher "
                         f"{a.dispatch_address} (recovers to {signer})")


def _check_not_expired(a: Admission, c: Candidate) -> None:
    now = a.clock()
    if now > c.job.deadline_at:
        raise JobRefused("expired", f"job {c.job.job_id} expired {now - c.job.deadline_at:.1f}s ago")


def _check_model(a: Admission, c: Candidate) -> None:
    c.spec = a.models.get(c.job.model_id)
    if c.spec is None:
        raise JobRefused("not_served", f"job {c.job.job_id} is for {c.job.model_id!r}, which this miner does "
                         f"not serve ({', '.join(sorted(a.models))})")


def _check_private(a: Admission, c: Candidate) -> None:
    if c.job.private is not None and not a.private:
        raise JobRefused("not_private", f"job {c.job.job_id} is private and this miner is not a privacy miner "
                         "(`heurist miner --private`)")


def _check_params(a: Admission, c: Candidate) -> None:
    """The catalog's limits, with the client's own checks: one rule on both sides."""
    assert c.spec is not None
    p = c.job.params
    try:
        if isinstance(p, ImageParams):
            image_params(c.spec, p.prompt, negative_prompt=p.negative_prompt, width=p.width, height=p.height,
                         steps=p.steps, guidance=p.guidance, seed=p.seed)
        else:
            text_params(c.spec, p.prompt, max_tokens=p.max_tokens, temperature=p.temperature, seed=p.seed)
    except InvalidJobError as err:
        raise JobRefused("out_of_limits", f"job {c.job.job_id}: {err}") from None


def _check_output_url(a: Admission, c: Candidate) -> None:
    if not a.store.holds(c.job.output_url):
        there = Origin.of(c.job.output_url)
        raise JobRefused("foreign_store", f"job {c.job.job_id} uploads to {there.scheme}://{there.host}:"
                         f"{there.port}, not to the store {a.store.scheme}://{a.store.host}:{a.store.port}")


def _check_not_replayed(a: Admission, c: Candidate) -> None:
    """Last, so only a message that passed everything is remembered (signature -> deadline)."""
    assert c.signed is not None
    now = a.clock()
    while a.admitted and (len(a.admitted) >= REMEMBERED or next(iter(a.admitted.values())) < now):
        a.admitted.popitem(last=False)  # oldest first; an expired message is refused by its deadline anyway
    signature = c.signed.signature.lower().removeprefix("0x")
    if signature in a.admitted:
        raise JobRefused("replayed", f"job {c.job.job_id}: this very message was already run here")
    a.admitted[signature] = c.job.deadline_at


Check = Callable[[Admission, Candidate], None]

# The order is the contract: each check may rely on what the ones before it filled in.
CHECKS: tuple[Check, ...] = (
    _parse,
    _check_signature,
    _check_not_expired,
    _check_model,
    _check_private,
    _check_params,
    _check_output_url,
    _check_not_replayed,
)


__all__ = ["CHECKS", "Admission", "Candidate", "JobRefused", "Origin"]
