"""Private jobs' tables: registrations, approvals and every key-release decision, all append-only.

* ``privacy_registrations``: each signed registration a miner or auditor sent (the latest counts): its X25519 key,
  the policy version it accepted, its TEE attestation (or none) and what the verifier said (``tee_status``).
* ``privacy_approvals``: an operator's approve or revoke of an address (the latest valid one counts), with who and
  why, and its signature by the network's approver key: nodes re-check it, so a database writer approves nobody.
* ``keyrelease_log``: one row per key request a node answered or refused, with the reason; never key material.
  ``(node, nonce)`` is unique, so a replayed request cannot be released twice, even by two processes of a node.

A private job's envelope (ciphertext, ACC, sealed shares) sits on the job itself (``jobs.sealed``), so the sweep
and redispatch re-send it like any job.
"""

from __future__ import annotations

from enum import StrEnum

from sqlalchemy import Boolean, Double, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from heurist.db.base import ADDRESS_LEN, ID_LEN, Base, BigId, StrEnumType


class TeeStatus(StrEnum):
    ABSENT = "absent"  # no attestation sent, or no verifier configured
    VERIFIED = "verified"
    REFUSED = "refused"


class Registration(Base):
    __tablename__ = "privacy_registrations"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    address: Mapped[str] = mapped_column(String(ADDRESS_LEN), index=True)
    x25519_public_key: Mapped[str] = mapped_column(String(64))
    policy_version: Mapped[str] = mapped_column(String(64))
    signature: Mapped[str] = mapped_column(String(132))
    tee_attestation: Mapped[str | None] = mapped_column(Text())
    tee_status: Mapped[TeeStatus] = mapped_column(StrEnumType(TeeStatus))
    registered_at: Mapped[float] = mapped_column(Double())
    received_at: Mapped[float] = mapped_column(Double())


class Approval(Base):
    __tablename__ = "privacy_approvals"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    address: Mapped[str] = mapped_column(String(ADDRESS_LEN), index=True)
    approved: Mapped[bool] = mapped_column(Boolean())
    operator: Mapped[str] = mapped_column(String(128))
    note: Mapped[str] = mapped_column(String(500))
    at: Mapped[float] = mapped_column(Double())
    approver: Mapped[str | None] = mapped_column(String(ADDRESS_LEN))  # who signed it (None: unsigned)
    signature: Mapped[str | None] = mapped_column(String(132))  # EIP-712 PrivacyApproval by the approver


class Release(Base):
    __tablename__ = "keyrelease_log"
    __table_args__ = (UniqueConstraint("node", "nonce", name="uq_keyrelease_log_node_nonce"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    node: Mapped[int] = mapped_column(Integer())
    job_id: Mapped[str] = mapped_column(String(ID_LEN), index=True)
    requester: Mapped[str | None] = mapped_column(String(ADDRESS_LEN), index=True)
    nonce: Mapped[str | None] = mapped_column(String(64))  # None: a request refused before its signature held
    released: Mapped[bool] = mapped_column(Boolean())
    reason: Mapped[str] = mapped_column(String(500))
    at: Mapped[float] = mapped_column(Double())


__all__ = ["Approval", "Registration", "Release", "TeeStatus"]
