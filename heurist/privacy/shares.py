"""A privacy miner's side of key release: ask the key-release nodes for a job's shares, rebuild its data key.

Miner code: it imports only the job messages, the envelope's cryptography, the signed messages and HTTP, never
the nodes' own package (``heurist.privacy.keyrelease``, trusted side; tests/test_import_contract.py).

* **Asking.** Every node that holds a share of the job (``envelope.shares``) is asked at once, from a small
  thread pool, each with its own fresh ``SignedKeyRequest``: a random 32-byte nonce and an expiry 30 s ahead
  (a node refuses past ``MAX_REQUEST_TTL_S``, 60 s). ``POST {url}/v1/share``; 200 is a ``ShareGrant``, 403 a
  refusal whose ``detail`` says why (the ACC does not hold, a replayed nonce, ...).
* **Opening.** A grant is sealed to this miner's X25519 key (derived from its wallet's key, published in its
  registration). Its payload must name this job and this node, and its point must be this node's (x = node
  index): a node cannot make a miner count one share twice.
* **Checking.** A share can be well formed and still wrong (a dishonest node sends random points with its own
  x): a key is accepted only once it opens the job's parameters (``open_params``, authenticated with the job id,
  the ACC and the model). Each share that arrives is tried with every (t-1)-subset of those before it
  (``itertools.combinations``), so one lying node, even the fastest, only delays the key until t honest shares
  are in; it does not fail the job. A try costs about 2.5 ms (pycryptodome's Shamir is pure Python), so
  3 nodes at t = 2, with a liar answering first, add about 5 ms.
* **Stopping.** Once a combination opens, the rest are not waited for. Fewer than t shares: a ``PrivacyError``
  listing each node's outcome ("got 1 of 2 key shares needed (node 1: released; node 2: connection refused;
  node 3: refused: ...)"). Enough shares, none of whose t-subsets opens: "the shares received do not rebuild
  the job's key (a key-release node sent a bad share: ...)" naming the nodes that answered; if every subset
  agrees on one key, the shares are sound and the ciphertext is what is wrong (``open_params``'s
  ``DecryptionError``). Never a share or a key.

Measured with three local test nodes (tests/test_privacy_miner.py, which make no ledger checks): the key in about
15 ms (plus 2.5 ms to check it), 12 ms with one node down (a refused port fails at once); a node that hangs
costs up to ``timeout_s`` (``HEURIST_KEYRELEASE_TIMEOUT_S``, 5 s) only when its share is needed.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from itertools import combinations
from typing import TYPE_CHECKING

import requests
from nacl.public import PrivateKey
from pydantic import ValidationError

from heurist.identity import Wallet
from heurist.jobs import PrivateEnvelope
from heurist.privacy.envelope import DecryptionError, PrivacyError, Share, combine, open_params, open_sealed, x25519_key
from heurist.privacy.messages import (
    KeyRequest,
    PrivacyRegistration,
    ShareGrant,
    SignedKeyRequest,
    SignedRegistration,
)
from heurist.settings_privacy import configured_nodes
from heurist.signing import DEFAULT_DOMAIN, Domain, sign_message

if TYPE_CHECKING:
    from heurist.settings import Settings
    from heurist.settings_privacy import KeyReleaseNode

log = logging.getLogger(__name__)

REQUEST_TTL_S = 30.0  # a key request's life: enough for a slow node, well under the nodes' 60 s bound
DETAIL_CHARS = 200  # how much of a node's refusal reason goes into the failure text


def miner_x25519(wallet: Wallet) -> PrivateKey:
    """The X25519 key a wallet's shares are sealed to (``heurist.privacy.envelope.x25519_key`` of its key)."""
    return x25519_key(bytes.fromhex(wallet.key_hex.removeprefix("0x")))


def registration(wallet: Wallet, policy_version: str, domain: Domain = DEFAULT_DOMAIN,
                 tee_attestation: str | None = None) -> SignedRegistration:
    """A signed acceptance of ``policy_version``, publishing this wallet's X25519 public key."""
    body = PrivacyRegistration(miner=wallet.address, x25519_public_key=bytes(miner_x25519(wallet).public_key).hex(),
                               policy_version=policy_version, tee_attestation=tee_attestation,
                               registered_at=time.time())
    return SignedRegistration(registration=body, signature=sign_message(wallet, body, domain))


class _Refused(Exception):
    """One node's outcome other than a share: its text goes into the failure's list."""


@dataclass
class ShareGatherer:
    """Asks the configured key-release nodes (index order: node i is ``nodes[i - 1]``) for a job's shares."""

    wallet: Wallet
    nodes: Sequence[KeyReleaseNode]
    threshold: int = 2  # the network's configured t; the envelope's own threshold is what a job needs
    domain: Domain = DEFAULT_DOMAIN
    timeout_s: float = 5.0
    session: requests.Session = field(default_factory=requests.Session)
    _key: PrivateKey = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._key = miner_x25519(self.wallet)

    @classmethod
    def from_settings(cls, settings: Settings, wallet: Wallet,
                      session: requests.Session | None = None) -> ShareGatherer:
        """The configured nodes (``HEURIST_KEYRELEASE_*``); ``ConfigError`` if none are, or too few for t."""
        return cls(wallet, configured_nodes(settings), settings.keyrelease_threshold, Domain.of(settings),
                   settings.keyrelease_timeout_s, session or requests.Session())

    def key_for(self, job_id: str, envelope: PrivateEnvelope, model_id: str) -> bytes:
        """The job's data key, checked by opening the envelope's parameters (bound to ``job_id`` and
        ``model_id``); ``PrivacyError`` naming each node's outcome when it cannot be had."""
        need = envelope.threshold
        held = sorted({s.node for s in envelope.shares})
        outcomes = {i: "not asked (no such node configured)" for i in held if i > len(self.nodes)}
        asked = [i for i in held if i <= len(self.nodes)]
        shares: list[tuple[int, Share]] = []
        key: bytes | None = None
        pool = ThreadPoolExecutor(max_workers=max(1, len(asked)), thread_name_prefix="keyrelease")
        try:
            pending: dict[Future[Share], int] = {pool.submit(self._ask, i, job_id): i for i in asked}
            while pending and key is None:
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    node = pending.pop(future)
                    try:
                        shares.append((node, future.result()))
                        outcomes[node] = "released"
                    except _Refused as refused:
                        outcomes[node] = str(refused)
                        continue
                    key = key or _opening([s for _, s in shares], need,
                                          lambda k: _opens(k, envelope, job_id, model_id))
            for node in pending.values():
                outcomes[node] = "not needed"
        finally:
            pool.shutdown(wait=False, cancel_futures=True)  # a key that opens: the slow ones are not waited for
        listed = "; ".join(f"node {i}: {outcomes[i]}" for i in sorted(outcomes))
        if len(shares) < need:
            log.warning("job %s: got %d of %d key shares needed (%s)", job_id, len(shares), need, listed)
            raise PrivacyError(f"got {len(shares)} of {need} key shares needed ({listed})")
        if key is None:
            raise _unopened(job_id, envelope, model_id, shares, need, outcomes)
        log.info("job %s: key rebuilt from %d of %d nodes (%s)", job_id, len(shares), len(held), listed)
        return key

    def _ask(self, node: int, job_id: str) -> Share:
        """Node ``node``'s share of ``job_id``, or ``_Refused`` saying why not."""
        request = KeyRequest(miner=self.wallet.address, job_id=job_id, node=node, nonce=os.urandom(32).hex(),
                             expires_at=time.time() + REQUEST_TTL_S)
        signed = SignedKeyRequest(request=request, signature=sign_message(self.wallet, request, self.domain))
        url = self.nodes[node - 1].url.rstrip("/") + "/v1/share"
        try:
            answer = self.session.post(url, json=signed.model_dump(mode="json"), timeout=self.timeout_s)
        except requests.Timeout:
            raise _Refused(f"no answer within {self.timeout_s:g} s") from None
        except requests.ConnectionError as err:
            raise _Refused("connection refused" if "refused" in str(err).lower() else "unreachable") from None
        except requests.RequestException as err:
            raise _Refused(f"request failed ({type(err).__name__})") from None
        if answer.status_code != 200:
            word = "refused" if answer.status_code == 403 else f"HTTP {answer.status_code}"
            raise _Refused(f"{word}: {_detail(answer)}")
        return self._open(node, job_id, answer)

    def _open(self, node: int, job_id: str, answer: requests.Response) -> Share:
        try:
            grant = ShareGrant.model_validate_json(answer.content)
        except ValidationError:
            raise _Refused("answered with a malformed grant") from None
        if grant.job_id != job_id or grant.node != node:
            raise _Refused(f"granted a share of job {grant.job_id} node {grant.node}, not this one")
        try:
            payload = open_sealed(self._key, grant.sealed)
            share = Share.from_json(payload)
        except PrivacyError as err:
            raise _Refused(f"its grant does not open: {err}") from None
        if payload.get("job_id") != job_id or payload.get("node") != node or share.x != node:
            raise _Refused("sealed a share of another job or node")
        return share


def _opens(key: bytes, envelope: PrivateEnvelope, job_id: str, model_id: str) -> bool:
    try:
        open_params(key, envelope, job_id=job_id, model_id=model_id)
    except DecryptionError:
        return False
    return True


def _opening(shares: list[Share], need: int, opens: Callable[[bytes], bool]) -> bytes | None:
    """The key of the first ``need``-subset that includes the newest share and opens, or None. The subsets
    without the newest share were tried when their own newest arrived."""
    if len(shares) < need:
        return None
    newest, earlier = shares[-1], shares[:-1]
    for rest in combinations(earlier, need - 1):
        key = combine([*rest, newest])
        if opens(key):
            return key
    return None


def _unopened(job_id: str, envelope: PrivateEnvelope, model_id: str, shares: list[tuple[int, Share]], need: int,
              outcomes: dict[int, str]) -> PrivacyError:
    """Why ``need`` or more shares opened nothing: a bad share, or (more than ``need`` shares, all agreeing on one
    key) a ciphertext that does not open under the key the nodes agree on."""
    answered = sorted(node for node, _ in shares)
    keys = {combine(list(subset)) for subset in combinations([s for _, s in shares], need)}
    if len(shares) > need and len(keys) == 1:
        try:
            open_params(keys.pop(), envelope, job_id=job_id, model_id=model_id)
        except DecryptionError as err:
            log.warning("job %s: the shares of nodes %s agree, but the parameters do not open", job_id, answered)
            return err
    others = "".join(f"; node {i}: {outcomes[i]}" for i in sorted(outcomes) if i not in answered)
    text = (f"the shares received do not rebuild the job's key (a key-release node sent a bad share: nodes "
            f"{', '.join(map(str, answered))} answered{others})")
    log.warning("job %s: %s", job_id, text)
    return PrivacyError(text)


def _detail(answer: requests.Response) -> str:
    """A node's reason, printable and short (a node's text, not ours: nothing else of the answer is kept)."""
    try:
        detail = answer.json().get("detail")
    except (ValueError, AttributeError):
        detail = None
    text = detail if isinstance(detail, str) else answer.reason or "no reason given"
    text = "".join(ch if ch.isprintable() else " " for ch in text).strip()
    return text[:DETAIL_CHARS] + ("..." if len(text) > DETAIL_CHARS else "")


__all__ = ["REQUEST_TTL_S", "ShareGatherer", "miner_x25519", "registration"]
