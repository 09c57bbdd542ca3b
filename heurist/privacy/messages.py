"""What privacy-enabled miners sign: their registration, and each request for a key share.

Both are EIP-712 typed data in the network's domain (``heurist.signing``), like every other signed message.

* ``PrivacyRegistration``: a miner (or an auditor) accepts a named policy version and publishes its X25519 key,
  to which key-release nodes seal shares. ``tee_attestation`` is reserved: recorded, verified when a verifier is
  configured (``HEURIST_PRIVACY_TEE_VERIFIER``), and recorded as absent otherwise. Sent to the ledger's inbox
  at worker start (``heurist miner --private``); the ledger records it (``heurist.privacy.registry``).
* ``PrivacyApproval``: the operator's approve or revoke, signed by the approver key every node is configured with.
* ``KeyRequest``: one request to one node for one job's share, fresh: a random 32-byte nonce, never accepted
  twice by a node, and an expiry at most ``MAX_REQUEST_TTL_S`` (60 s) ahead of the node's clock.
"""

from __future__ import annotations

from pydantic import Field

from heurist.jobs import ADDRESS, HEX32, JOB_ID, MAX_KEYRELEASE_NODES, SIGNATURE, Frozen, Signable

MAX_REQUEST_TTL_S = 60.0
POLICY_VERSION_CHARS = 64
MAX_ATTESTATION_CHARS = 16_384  # base64 of a TEE quote: an SGX DCAP or TDX quote is about 5 KB
NOTE_CHARS = 500


class PrivacyRegistration(Signable):
    miner: ADDRESS
    x25519_public_key: HEX32
    policy_version: str = Field(min_length=1, max_length=POLICY_VERSION_CHARS)
    tee_attestation: str | None = Field(None, max_length=MAX_ATTESTATION_CHARS,
                                        description="Reserved: a TEE's attestation report, base64.")
    registered_at: float


class SignedRegistration(Frozen):
    registration: PrivacyRegistration
    signature: SIGNATURE


class PrivacyApproval(Signable):
    """An operator's decision on a privacy miner, signed by the network's approver key
    (``HEURIST_PRIVACY_APPROVER``): key-release nodes count only approvals that recover to it, so whoever can
    write the database cannot approve a key of their own."""

    address: ADDRESS
    approved: bool
    note: str = Field(max_length=NOTE_CHARS)
    at: float


class KeyRequest(Signable):
    miner: ADDRESS = Field(description="Who asks: a registered privacy miner or auditor.")
    job_id: JOB_ID
    node: int = Field(ge=1, le=MAX_KEYRELEASE_NODES, description="The key-release node asked (1-based).")
    nonce: HEX32
    expires_at: float


class SignedKeyRequest(Frozen):
    request: KeyRequest
    signature: SIGNATURE


class ShareGrant(Frozen):
    """A node's answer: its share, sealed to the requester's registered X25519 key (base64)."""

    job_id: JOB_ID
    node: int = Field(ge=1, le=MAX_KEYRELEASE_NODES)
    sealed: str = Field(min_length=1, max_length=1024)


__all__ = ["MAX_REQUEST_TTL_S", "KeyRequest", "PrivacyApproval", "PrivacyRegistration", "ShareGrant",
           "SignedKeyRequest", "SignedRegistration"]
