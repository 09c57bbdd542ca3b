"""API key material: ``hk_`` + 32 url-safe random characters; the database sees only the sha256."""

from __future__ import annotations

import hashlib
import secrets

KEY_PREFIX = "hk_"
RANDOM_BYTES = 24  # 24 bytes -> 32 url-safe base64 characters
DISPLAY_LEN = 11  # "hk_" + 8 characters: enough to tell keys apart, far too few to guess the rest


def new_key() -> str:
    """A fresh plaintext key, shown to its owner once and never stored."""
    return KEY_PREFIX + secrets.token_urlsafe(RANDOM_BYTES)


def hash_key(plaintext: str) -> str:
    """The stored form: a leaked table does not leak usable keys (they are random, so no salt is needed)."""
    return hashlib.sha256(plaintext.encode()).hexdigest()


def display_prefix(plaintext: str) -> str:
    return plaintext[:DISPLAY_LEN]


def looks_like_key(plaintext: str) -> bool:
    return plaintext.startswith(KEY_PREFIX) and len(plaintext) == len(KEY_PREFIX) + 32
