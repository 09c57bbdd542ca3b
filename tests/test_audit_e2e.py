"""The audit on a live network: an honest miner and a cheater share a queue; every job is replayed by a
trusted auditor; the cheater ends flagged with its points clawed back, the honest miner untouched."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import text

from heurist.client import Client, ImageRequest
from heurist.embedded import EmbeddedNetwork, wait_until
from heurist.jobs import JobState
from heurist.ledger.audit_service import AuditLedger
from heurist.ledger.tables import Reason


@pytest.fixture(scope="module")
def network_settings() -> dict[str, Any]:
    return {"audit_base_rate": 1.0, "audit_new_miner_rate": 1.0, "audit_seed": 7}


@pytest.mark.slow  # a whole network for one test: in `make test-slow`, keeping `make test` near 15 min
def test_random_image_cheater_is_caught_and_honest_miner_is_not(network: EmbeddedNetwork, client: Client) -> None:
    honest = network.start_miner(["tiny-sd"], name="honest")
    cheater = network.start_miner(["tiny-sd"], name="cheater", cheat="random-image")
    network.start_auditor(["tiny-sd"])
    for wallet in (honest, cheater):
        wait_until(lambda w=wallet: client.ledger.is_registered(w.address), 300, "miners to register",
                   check=network.check_alive)
    results = client.map([ImageRequest("a harbour", "tiny-sd", seed=s, steps=8) for s in range(10)],
                         timeout=300, progress=False)
    # The ledger alone cannot tell a random image from a real one (its sha256 matches what was stored);
    # once the cheater is banned (3 failed audits) its completions are refused and those jobs are sent
    # again: every job ends completed, the refused ones by the honest miner.
    assert [r.state for r in results] == [JobState.COMPLETED] * len(results)
    completed = results
    for r in results:
        if (Reason.BANNED, cheater.address) in client.ledger.rejections(r.job_id):
            assert r.miner == honest.address
    by_miner = {w.address: sum(r.miner == w.address for r in completed) for w in (honest, cheater)}
    assert by_miner[honest.address] and by_miner[cheater.address], by_miner
    audits = AuditLedger(client.ledger.engine)
    wait_until(lambda: sum(audits.standing(m).audited for m in by_miner) == len(completed), 300,
               "every credited job to be audited", check=network.check_alive)
    assert audits.standing(honest.address).failed == 0
    assert audits.standing(honest.address).passed == by_miner[honest.address]
    assert audits.standing(cheater.address).failed == by_miner[cheater.address]
    assert audits.balance(cheater.address).total_micro == 0  # every credit clawed back
    assert audits.balance(honest.address).total_micro > 0
    assert audits.is_banned(cheater.address) == (by_miner[cheater.address] >= 3)
    with client.ledger.engine.connect() as conn:
        flagged = {row[0] for row in conn.execute(text("SELECT miner_address FROM v_flagged_miners"))}
    assert cheater.address in flagged and honest.address not in flagged
