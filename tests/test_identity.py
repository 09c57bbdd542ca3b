"""Miner keys sign completions; the ledger recovers the signer."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from heurist.errors import ConfigError
from heurist.identity import Wallet, recover_signer


def test_sign_and_recover() -> None:
    wallet = Wallet.create()
    signature = wallet.sign(b"payload")
    assert recover_signer(b"payload", signature) == wallet.address
    assert recover_signer(b"payload!", signature) != wallet.address
    assert recover_signer(b"payload", "0x" + "00" * 65) is None


def test_key_file_is_private_and_never_overwritten(tmp_path: Path) -> None:
    wallet = Wallet.create()
    path = tmp_path / "k" / "miner.key"
    wallet.save(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert Wallet.from_file(path).address == wallet.address
    with pytest.raises(FileExistsError):
        Wallet.create().save(path)


def test_bad_keys_say_how_to_fix(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="heurist wallet new"):
        Wallet.from_key("not-a-key")
    with pytest.raises(ConfigError, match="cannot read key file"):
        Wallet.from_file(tmp_path / "absent.key")


def test_repr_hides_the_key() -> None:
    wallet = Wallet.create()
    assert wallet.key_hex[2:] not in repr(wallet)
