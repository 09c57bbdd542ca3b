"""The client's side of a private job: seal it before it is recorded or sent, open its output after.

``heurist.client.Client`` calls only this module for private jobs, so the client keeps one path for both kinds.

* **Secret.** Every job's data key is ``envelope.data_key(secret, job_id)``: the client stores one 32-byte
  secret, never a key per job, and still opens an output after a crash. ``HEURIST_PRIVACY_CLIENT_KEY``, else
  ``data_dir/privacy-client.key``, created on first use (0600, published atomically like the dispatch key, so
  two clients starting together agree on one secret). Losing it makes the outputs unreadable: back it up.
* **Sealing.** The job record, the signed message and the ledger see ``metering.metering(params)`` (the billed
  fields, prompt ``PRIVATE_PROMPT``), so points and prices are a public job's; the real parameters travel only
  inside the ``PrivateEnvelope``, bound to the job id, the model and the ACC's canonical text, with the key split
  t-of-n (``HEURIST_KEYRELEASE_THRESHOLD`` of ``HEURIST_KEYRELEASE_NODES``).
* **Opening.** The stored output is ``envelope.encrypt_output`` of what a public job would store (a PNG, or a
  ``TextOutput`` JSON, which is parsed here so a miner's garbage is an error and not an answer).

Sealing costs about 0.3 ms per job (``heurist.privacy.envelope``); opening an output about 3 ms per MB (measured
here, XChaCha20-Poly1305 in libsodium).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from nacl.public import PublicKey
from pydantic import ValidationError

from heurist.errors import ConfigError, InvalidJobError
from heurist.jobs import JobParams, PrivateEnvelope, TextOutput
from heurist.privacy import acc, envelope, metering
from heurist.privacy.envelope import DecryptionError, PrivacyError
from heurist.secret_files import ensure_secret
from heurist.settings import Settings
from heurist.settings_privacy import NO_NODES, configured_nodes

KEY_FILE = "privacy-client.key"
SECRET_BYTES = 32

AccInput = acc.Condition | Mapping[str, Any] | str | None


def client_secret(settings: Settings) -> bytes:
    """The secret every private job's data key derives from: the setting, else the key file (created)."""
    if settings.privacy_client_key is not None:
        secret = _parse(settings.privacy_client_key.get_secret_value())
        if secret is None:
            raise ConfigError("HEURIST_PRIVACY_CLIENT_KEY is not a 32-byte hex secret; unset it to use "
                              f"{settings.data_dir / KEY_FILE} (created on first use)")
        return secret
    return _key_file(settings.data_dir / KEY_FILE)


def node_keys(settings: Settings) -> list[PublicKey]:
    """The key-release nodes' public keys in index order; ConfigError if a private job cannot be sealed."""
    return [envelope.public_key(node.public_key, f"HEURIST_KEYRELEASE_NODES[{i}].public_key")
            for i, node in enumerate(configured_nodes(settings))]


def condition(value: AccInput) -> acc.Condition:
    """A private job's ACC from what a caller passed: a parsed condition, its dict or JSON text, or None
    (``acc.DEFAULT``: any approved privacy-enabled miner)."""
    if value is None:
        return acc.DEFAULT
    if isinstance(value, Mapping):
        return acc.parse(dict(value))
    if isinstance(value, str):
        return acc.parse(value)
    return value


def refuse_acc_without_private(private: bool, value: AccInput) -> None:
    """An ACC on a public job would protect nothing: refuse it rather than send the prompt in the clear."""
    if value is not None and not private:
        raise InvalidJobError("acc: only a private job has an access-control condition; pass private=True "
                              "(`--private`) or drop the acc")


def seal_job(settings: Settings, secret: bytes, job_id: str, model_id: str, params: JobParams,
             acc_condition: acc.Condition, nodes: list[PublicKey] | None = None) -> tuple[JobParams, PrivateEnvelope]:
    """The clear (billed-only) parameters and the envelope of the real ones; ``nodes``: ``node_keys(settings)``
    when the caller already read them."""
    nodes = nodes if nodes is not None else node_keys(settings)
    sealed = envelope.seal(envelope.data_key(secret, job_id), params, job_id=job_id, model_id=model_id,
                           acc_text=acc.canonical(acc_condition), threshold=settings.keyrelease_threshold,
                           nodes=nodes)
    return metering.metering(params), sealed


def open_output(secret: bytes, job_id: str, blob: bytes, *, text: bool = False) -> bytes:
    """The plaintext of a private job's stored output; with ``text``, also checked to be a ``TextOutput``."""
    try:
        plain = envelope.decrypt_output(envelope.data_key(secret, job_id), job_id, blob)
    except DecryptionError as err:
        raise DecryptionError(f"{err}; or this client's secret (HEURIST_PRIVACY_CLIENT_KEY or data_dir/"
                              f"{KEY_FILE}) is not the one that submitted it") from None
    if text:
        try:
            TextOutput.model_validate_json(plain)
        except ValidationError as err:
            raise PrivacyError(f"job {job_id}: the decrypted output is not a text answer "
                               f"({err.errors()[0]['msg']}); report its miner") from None
    return plain


def _parse(text: str) -> bytes | None:
    try:
        raw = bytes.fromhex(text.strip().removeprefix("0x"))
    except ValueError:
        return None
    return raw if len(raw) == SECRET_BYTES else None


def _key_file(path: Path) -> bytes:
    secret = _parse(ensure_secret(path, lambda: os.urandom(SECRET_BYTES).hex(), "privacy client key file"))
    if secret is None:
        raise ConfigError(f"privacy client key file {path} does not hold a 32-byte hex secret; restore it from "
                          "a backup (outputs of jobs sealed under it cannot be read without it)")
    return secret


__all__ = ["KEY_FILE", "NO_NODES", "AccInput", "client_secret", "condition", "node_keys", "open_output",
           "refuse_acc_without_private", "seal_job"]
