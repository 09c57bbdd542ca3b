"""Two `heurist ledger` processes consuming the same queues at once, with every completion delivered two or three
times (through its miner's inbox, again through it, and to the trusted ``ledger`` queue): exactly one credit per
job, every job COMPLETED, every extra delivery answered as a duplicate, nothing dead-lettered. RabbitMQ and
SeaweedFS, on PostgreSQL and on one SQLite file shared by both processes."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from heurist.bench.ledger_rig import LedgerNetwork, LedgerRig
from heurist.bench.path import bench_catalog
from heurist.embedded import wait_until
from heurist.jobs import JobState
from heurist.settings import Settings
from heurist.storage.seaweed import SeaweedServer

JOBS = 60


@pytest.mark.parametrize("database", ["postgresql", "sqlite"])
def test_two_ledger_processes_credit_each_job_once_with_duplicates_in_flight(
        rabbit_url: str, seaweed: SeaweedServer, database: str, request: pytest.FixtureRequest,
        tmp_path: Path) -> None:
    url = request.getfixturevalue("postgres_url") if database == "postgresql" else \
        f"sqlite:///{tmp_path / 'ledger.sqlite'}"
    base = Settings(_env_file=None, broker_url=rabbit_url, database_url=url,  # type: ignore[call-arg]
                    s3_endpoint=seaweed.endpoint, s3_access_key=seaweed.access_key,
                    s3_secret_key=seaweed.secret_key, s3_bucket=f"two-{uuid.uuid4().hex[:8]}",
                    catalog_path=bench_catalog(tmp_path))
    with LedgerNetwork(tmp_path / "net", base=base) as net:
        rig = LedgerRig(net, miners=2)
        try:
            signed = rig.completions(JOBS)
            ids = [one.completion.job_id for one in signed]
            rig.start_ledgers(2)
            wait_until(lambda: rig.consuming(2), 180, "both ledgers to consume", check=net.check_alive)
            again = signed[::3] + signed[1::3]  # two in three: twice through the inbox
            rig.publish(signed)
            rig.publish(again)
            rig.publish(signed[::2], trusted=True)  # every other one also to the trusted queue
            extra = len(again) + len(signed[::2])
            rig.wait_verified(ids, 300)
            wait_until(lambda: rig.duplicates(ids) >= extra, 180, "every delivery to be answered",
                       check=net.check_alive)
            rig.stop_ledgers()
            assert rig.credits(ids) == dict.fromkeys(ids, 1)
            assert set(rig.states(ids).values()) == {JobState.COMPLETED}
            assert rig.duplicates(ids) == extra and rig.dead_letters() == 0
        finally:
            rig.close()
