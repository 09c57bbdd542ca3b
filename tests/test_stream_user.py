"""The broker user a streamed answer must come from: ``LedgerReader.broker_user``, the user the ledger bound a
miner's key to at its hello (``miners.broker_user``). The gateway compares it with the user its ``TokenStream``
locked to (``heurist.stream_auth``). On SQLite and PostgreSQL."""

from __future__ import annotations

import time

from heurist.access.backend import miner_user
from heurist.identity import Wallet
from heurist.jobs import MinerHello, SignedHello
from heurist.ledger.service import Ledger
from heurist.signing import sign_message
from tests.fixtures.ledger import DEVICE


def _hello(wallet: Wallet) -> SignedHello:
    hello = MinerHello(miner=wallet.address, models=["smollm2-135m"], queues=[], device=DEVICE,
                       started_at=time.time())
    return SignedHello(hello=hello, signature=sign_message(wallet, hello))


def test_the_reader_names_the_broker_user_a_key_is_bound_to(ledger: Ledger) -> None:
    bound, unbound, stranger = Wallet.create(), Wallet.create(), Wallet.create()
    assert ledger.register_miner(_hello(bound), sender=miner_user(bound.address)).accepted
    assert ledger.register_miner(_hello(unbound)).accepted  # the embedded broker, or a trusted user: no user
    reader = ledger.reader
    assert reader.broker_user(bound.address) == miner_user(bound.address)
    assert reader.broker_user(bound.address.lower()) == miner_user(bound.address)  # any spelling of the address
    assert reader.broker_user(unbound.address) is None
    assert reader.broker_user(stranger.address) is None and reader.broker_user("not an address") is None
