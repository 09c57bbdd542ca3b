"""EVM identities: a key pair. Every message of the network is EIP-712 typed data in the network's domain
(``heurist.signing``). ``Wallet.sign`` and ``recover_signer`` (EIP-191, a wallet's ``personal_sign``) sign no
network message; the tests use them to show such signatures are refused. Signers are recovered, never claimed."""

from __future__ import annotations

import hashlib
import hmac
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

from eth_account import Account
from eth_account.messages import SignableMessage, encode_defunct

from heurist.errors import ConfigError

# The order of the secp256k1 group: a private key is an integer in 1..SECP256K1_N-1.
SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
DERIVE_DOMAIN = b"heurist/gpu-worker/v1"


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

    def derive(self, index: int) -> Wallet:
        """The key of this operator's worker number ``index`` (one per GPU); ``derive(0)`` is this key.

        Each GPU of a multi-GPU box is its own miner in the ledger (its own device, points and audits), yet
        the operator keeps one key file: worker ``i`` uses ``HMAC-SHA256(key, "heurist/gpu-worker/v1" ||
        i as 4 big-endian bytes)`` as its private key (re-hashed with a counter in the ~2^-128 case that
        it is not a valid secp256k1 key). Deterministic, so restarts keep each GPU's address; one-way, so
        a worker's key does not reveal the operator's.
        """
        if index < 0 or index >= 2**32:
            raise ConfigError(f"worker index must be in 0..{2**32 - 1}, got {index}")
        if index == 0:
            return self
        secret = bytes(self._account.key)  # type: ignore[attr-defined]
        message = DERIVE_DOMAIN + index.to_bytes(4, "big")
        for counter in range(256):
            retry = bytes([counter]) if counter else b""
            digest = hmac.new(secret, message + retry, hashlib.sha256).digest()
            if 0 < int.from_bytes(digest, "big") < SECP256K1_N:
                return Wallet(Account.from_key(digest))
        raise ConfigError("could not derive a valid worker key")  # probability ~2^-32000: never happens

    def sign(self, payload: bytes) -> str:
        signed = self._account.sign_message(encode_defunct(primitive=payload))  # type: ignore[attr-defined]
        return "0x" + bytes(signed.signature).hex()

    def sign_encoded(self, message: SignableMessage) -> str:
        """Sign an already encoded message (EIP-712 typed data from ``heurist.signing``)."""
        signed = self._account.sign_message(message)  # type: ignore[attr-defined]
        return "0x" + bytes(signed.signature).hex()

    def save(self, path: Path) -> None:
        """Write the key with owner-only permissions; refuse to overwrite an existing key."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, stat.S_IRUSR | stat.S_IWUSR)
        with os.fdopen(fd, "w") as handle:
            handle.write(self.key_hex + "\n")


def recover_signer(payload: bytes, signature: str) -> str | None:
    """The address that signed ``payload`` (EIP-191), or None if the signature is malformed."""
    return recover_encoded(encode_defunct(primitive=payload), signature)


def recover_encoded(message: SignableMessage, signature: str) -> str | None:
    """The address that signed an encoded message, or None if the signature is malformed."""
    try:
        return str(Account.recover_message(message, signature=signature))
    except Exception:  # eth-keys raises several types for malformed signatures
        return None
