"""Miner identity: an EVM key pair. Completions are signed EIP-191 messages, recovered by the ledger."""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

from eth_account import Account
from eth_account.messages import encode_defunct

from heurist.errors import ConfigError


@dataclass(frozen=True)
class Wallet:
    """A private key held in memory; never logged, never put on the command line."""

    _account: object = field(repr=False)

    @classmethod
    def create(cls) -> Wallet:
        return cls(Account.create())

    @classmethod
    def from_key(cls, key_hex: str) -> Wallet:
        try:
            return cls(Account.from_key(key_hex.strip()))
        except (ValueError, TypeError):
            raise ConfigError(
                "the miner key is not a valid 32-byte hex private key; create one with `heurist wallet new`"
            ) from None

    @classmethod
    def from_file(cls, path: Path) -> Wallet:
        try:
            return cls.from_key(Path(path).read_text())
        except OSError as err:
            raise ConfigError(
                f"cannot read key file {path}: {err.strerror}; create one with `heurist wallet new --out {path}`"
            ) from None

    @property
    def address(self) -> str:
        return str(self._account.address)  # type: ignore[attr-defined]

    @property
    def key_hex(self) -> str:
        return "0x" + bytes(self._account.key).hex()  # type: ignore[attr-defined]

    def sign(self, payload: bytes) -> str:
        signed = self._account.sign_message(encode_defunct(primitive=payload))  # type: ignore[attr-defined]
        return "0x" + bytes(signed.signature).hex()

    def save(self, path: Path) -> None:
        """Write the key with owner-only permissions; refuse to overwrite an existing key."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, stat.S_IRUSR | stat.S_IWUSR)
        with os.fdopen(fd, "w") as handle:
            handle.write(self.key_hex + "\n")


def recover_signer(payload: bytes, signature: str) -> str | None:
    """The address that signed ``payload``, or None if the signature is malformed."""
    try:
        return str(Account.recover_message(encode_defunct(primitive=payload), signature=signature))
    except Exception:  # eth-keys raises several types for malformed signatures
        return None
