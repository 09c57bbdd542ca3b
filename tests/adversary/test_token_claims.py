"""A text miner is paid for tokens it never produced (issue 13, finding 1). Live, a miner stored an answer of
34+12 tokens, claimed 82+512 and was credited 13 times the honest amount; the gateway's reconcile sweep billed
the client from the same claim, and a miner colluding with a client could claim 0+0 so that it paid nothing.

The attacker has a registered key and its own restricted broker user (``heurist broker add-miner``). It holds
a genuine job of the victim's (the dispatcher signed it; a same-tier miner takes such a message from its tier
queue), PUTs an answer of 34+12 tokens to the job's presigned URL and sends, through its inbox, a correctly
signed completion claiming 82+512, then on a second job 0+0. The ledger reads the counts from the stored answer
(``heurist.ledger.token_counts``) and refuses both as ``token_mismatch``: nothing is credited to the attacker,
and the next honest job is credited and billed at the counts its stored answer holds.

The same attacker then tries to end a victim's job (issue 13, finding 2): a signed failure report for it and a
completion whose output does not exist. Both are held against the attacker, neither ends the job, and each
gives it to another miner (``ResendOnReport``): the victim's job is answered by the honest miner. So are the
jobs whose token claims were refused.
"""

from __future__ import annotations

import hashlib
import time
from typing import Any

import pytest
from sqlalchemy import text

from heurist.access import BrokerAccess
from heurist.client import Client
from heurist.embedded import EmbeddedNetwork, wait_until
from heurist.jobs import (
    Completion,
    DeviceInfo,
    Failure,
    JobState,
    SignedCompletion,
    TextOutput,
    Timings,
)
from heurist.ledger.tables import Reason
from heurist.points import job_points, to_micro
from heurist.signing import sign_failure, sign_message
from heurist.storage.presigned import put_presigned
from heurist.submission import text_params
from tasks.names import RECORD_COMPLETION, RECORD_FAILURE
from tests.adversary.raw import Attacker, recorded_job, registered_attacker, task_message

# Each module starts its own network (about 1-4 min here): run by `make test-slow`, and so by CI.
pytestmark = pytest.mark.slow

MODEL = "smollm2-135m"
DEVICE = DeviceInfo(kind="cpu", name="cpu", vram_gb=8.0)


@pytest.fixture(scope="module")
def network_settings() -> dict[str, Any]:
    return {"audit_base_rate": 0.0, "audit_new_miner_rate": 0.0, "audit_suspicious_rate": 0.0}


@pytest.fixture(scope="module")
def honest_models() -> list[str]:
    return [MODEL]


@pytest.fixture(scope="module")
def attacker(client: Client, access: BrokerAccess) -> Attacker:
    """A registered key on its own broker user, driven by hand."""
    return registered_attacker(client, access, MODEL)


def _pinned_weights(client: Client, job_id: str) -> str:
    """What an honest miner of this model attests (the attacker runs the genuine files, it only lies in counts)."""
    with client.ledger.engine.connect() as db:
        return str(db.execute(text("SELECT weights_sha256 FROM completions WHERE job_id = :j"), {"j": job_id})
                   .scalar_one())


def _claim(attacker: Attacker, client: Client, weights: str, claimed: tuple[int, int]) -> str:
    """Hold a victim's job, store a 34+12 answer through its URL, claim ``claimed`` tokens; the job's id."""
    spec = client.catalog[MODEL]
    signed_job, _ = recorded_job(client, MODEL, text_params(spec, "Name three primary colours.", max_tokens=16))
    job = signed_job.job
    answer = TextOutput(text="Red, yellow and blue.", input_tokens=34, output_tokens=12,
                        output_token_ids=list(range(1000, 1012)), finish_reason="stop").model_dump_json().encode()
    put_presigned(job.output_url, answer, "application/json")
    claim = Completion(job_id=job.job_id, model_id=MODEL, miner=attacker.wallet.address,
                       output_sha256=hashlib.sha256(answer).hexdigest(), output_bytes=len(answer),
                       content_type="application/json", input_tokens=claimed[0], output_tokens=claimed[1],
                       timings=Timings(run_s=1.0, upload_s=0.1, total_s=1.1), device=DEVICE,
                       weights_sha256=weights, finished_at=time.time())
    signed = SignedCompletion(completion=claim, signature=sign_message(attacker.wallet, claim))
    attacker.to_ledger(task_message(RECORD_COMPLETION, [signed.model_dump(mode="json")]))
    return job.job_id


def test_inflated_and_deflated_token_claims_earn_nothing(network: EmbeddedNetwork, client: Client, honest: str,
                                                         attacker: Attacker) -> None:
    spec = client.catalog[MODEL]
    first = client.submit_text("Name a colour.", model=MODEL, max_tokens=8).result(timeout=300)
    weights = _pinned_weights(client, first.job_id)

    for claimed in ((82, 512), (0, 0)):
        job_id = _claim(attacker, client, weights, claimed)
        wait_until(lambda job_id=job_id: client.ledger.rejections(job_id), 60, "the ledger's verdict",
                   check=network.check_alive)
        assert client.ledger.rejections(job_id) == [(Reason.TOKEN_MISMATCH, attacker.wallet.address)]
        [view] = client.wait_all([job_id], 300)  # re-sent at once: the honest miner answers the victim
        assert view.state is JobState.COMPLETED and view.miner == honest
        assert client.ledger.points_entries(job_id) == 1
    [standing] = [m for m in client.ledger.miner_points() if m.address == attacker.wallet.address]
    assert (standing.jobs, standing.points_micro) == (0, 0)

    # The honest network: the next job is credited and billed at what its stored answer holds.
    after = client.submit_text("Name a fruit.", model=MODEL, max_tokens=8).result(timeout=300)
    assert after.state is JobState.COMPLETED and after.miner == honest
    stored = TextOutput.model_validate_json(client.fetch_output(after))
    view = client.ledger.job(after.job_id)
    assert view is not None and (view.input_tokens, view.output_tokens) == (stored.input_tokens,
                                                                            len(stored.output_token_ids))
    params = client.ledger.job_params(after.job_id)
    assert params is not None
    assert to_micro(after.points) == to_micro(job_points(spec, params, stored.input_tokens, stored.output_tokens))


def test_a_registered_miner_cannot_end_a_victims_job(network: EmbeddedNetwork, client: Client, honest: str,
                                                     attacker: Attacker) -> None:
    """A signed failure report, then a completion for an output that does not exist: before, either ended the
    victim's job (FAILED, refunded; REJECTED, a 502). Now both are recorded against the attacker and the job is
    given to another miner, which answers it."""
    spec = client.catalog[MODEL]
    weights = _pinned_weights(client, client.submit_text("Name a sea.", model=MODEL, max_tokens=4).result(300).job_id)
    signed_job, _ = recorded_job(client, MODEL, text_params(spec, "Name a planet.", max_tokens=8))
    job_id = signed_job.job.job_id  # the attacker read it from the tier queue; the honest miner never got it
    report = sign_failure(attacker.wallet, Failure(job_id=job_id, miner=attacker.wallet.address,
                                                   error="RuntimeError: CUDA out of memory", failed_at=time.time()))
    attacker.to_ledger(task_message(RECORD_FAILURE, [report.model_dump(mode="json")]))
    claim = Completion(job_id=job_id, model_id=MODEL, miner=attacker.wallet.address,
                       output_sha256=hashlib.sha256(b"nothing").hexdigest(), output_bytes=7,
                       content_type="application/json", input_tokens=1, output_tokens=1,
                       timings=Timings(run_s=1.0, upload_s=0.1, total_s=1.1), device=DEVICE,
                       weights_sha256=weights, finished_at=time.time())
    bogus = SignedCompletion(completion=claim, signature=sign_message(attacker.wallet, claim))
    attacker.to_ledger(task_message(RECORD_COMPLETION, [bogus.model_dump(mode="json")]))

    [view] = client.wait_all([job_id], 300)
    assert view.state is JobState.COMPLETED and view.miner == honest and view.error is None
    wait_until(lambda: len(client.ledger.rejections(job_id)) == 2, 60, "both attempts to be judged")
    judged = client.ledger.rejections(job_id)
    assert {who for _, who in judged} == {attacker.wallet.address}
    [bogus] = [reason for reason, _ in judged if reason is not Reason.FAILURE_REPORTED]  # and one report
    # No output yet, the honest miner's re-sent run's output, or its accepted completion: whichever came first.
    assert bogus in (Reason.OUTPUT_MISSING, Reason.SHA256_MISMATCH, Reason.DUPLICATE)
    assert client.ledger.points_entries(job_id) == 1
    stored = TextOutput.model_validate_json(client.fetch_output(client.to_result(view)))
    assert stored.text  # the victim gets the honest miner's answer
    [standing] = [m for m in client.ledger.miner_points() if m.address == attacker.wallet.address]
    assert (standing.jobs, standing.points_micro) == (0, 0)
