"""`heurist exporter`: metrics read from the ledger and the broker, checked against what really happened.

The live tests scrape a real exporter process over HTTP while a network on RabbitMQ + PostgreSQL +
SeaweedFS runs jobs; the unit tests feed the ledger queries and the incremental histograms known rows on
SQLite and PostgreSQL, and check the Grafana dashboard only queries metrics the exporter emits.
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from heurist.catalog import load_catalog
from heurist.client import Client, ImageRequest
from heurist.embedded import EmbeddedNetwork, heurist_cmd, wait_until
from heurist.errors import ConfigError
from heurist.jobs import JobState
from heurist.monitoring.collector import METRICS
from heurist.monitoring.latency import BUCKETS, Histogram, LatencyHistograms
from heurist.monitoring.ledger_metrics import LEDGER_METRICS
from heurist.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
DASHBOARD = ROOT / "monitoring" / "grafana" / "heurist-dashboard.json"
TINY_QUEUE = "vram8.tiny-sd"

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


# ------------------------------------------------------------------------------------------- scraping


def scrape(url: str) -> tuple[Samples, dict[str, str]]:
    """Samples by (name, labels) and each family's type, parsed by prometheus_client's own parser."""
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    samples: Samples = {}
    types: dict[str, str] = {}
    for family in text_string_to_metric_families(text):
        types[family.name] = family.type
        for s in family.samples:
            samples[(s.name, frozenset(s.labels.items()))] = s.value
    return samples, types


def value(samples: Samples, name: str, **labels: str) -> float:
    """One sample's value; a missing series fails the test by name."""
    key = (name, frozenset(labels.items()))
    assert key in samples, f"no sample {name}{labels}"
    return samples[key]


@pytest.fixture(scope="module")
def network_settings() -> dict[str, Any]:
    """Every job of a new miner is sampled for audit, so the audit queue's depth is known exactly."""
    return {"audit_new_miner_rate": 1.0}


@pytest.fixture(scope="module")
def miner_address(network: EmbeddedNetwork, client: Client) -> str:
    """A CPU miner serving tiny-sd only (faster to start than the shared fixture's two models)."""
    wallet = network.start_miner(["tiny-sd"])
    wait_until(lambda: client.ledger.is_registered(wallet.address), 120, "the miner to register",
               check=network.check_alive)
    return wallet.address


@pytest.fixture(scope="module")
def exporter(network: EmbeddedNetwork, client: Client) -> str:
    """`heurist exporter --port 0` as a child of the network; its /metrics URL, read from its log line."""
    client.ledger  # noqa: B018  (migrates the ledger database before the exporter reads it)
    network.spawn("exporter", heurist_cmd("exporter", "--port", "0"), network.trusted_env())
    log = network.logs / "exporter.log"
    found: list[str] = []

    def announced() -> bool:
        found[:] = re.findall(r"serving (http://\S+/metrics)", log.read_text() if log.exists() else "")
        return bool(found)

    wait_until(announced, 60, "the exporter to serve", check=network.check_alive)
    return found[0]


# ----------------------------------------------------------------------------------- live network


def test_queue_depth_counters_and_latency_follow_real_jobs(network: EmbeddedNetwork, client: Client,
                                                           exporter: str, request: pytest.FixtureRequest) -> None:
    before, types = scrape(exporter)
    assert types == {name: kind for name, (kind, _) in METRICS.items()}, "families must match collector.METRICS"
    assert value(before, "heurist_exporter_source_up", source="ledger") == 1
    assert value(before, "heurist_exporter_source_up", source="broker") == 1
    assert value(before, "heurist_queue_messages", queue=TINY_QUEUE, role="job", model="tiny-sd", tier="vram8") == 0
    # Never declared on this vhost: depth 0, not an error.
    assert value(before, "heurist_queue_messages", queue="vram24.mixtral-8x7b", role="job", model="mixtral-8x7b",
                 tier="vram24") == 0

    # No miner yet: the jobs wait in the queue and the exporter sees them there.
    handles = [client.submit(ImageRequest("a red fox", "tiny-sd", seed=s, steps=4)) for s in range(3)]
    depth = {"queue": TINY_QUEUE, "role": "job", "model": "tiny-sd", "tier": "vram8"}
    wait_until(lambda: value(scrape(exporter)[0], "heurist_queue_messages", **depth) == 3, 30, "a depth of 3")
    waiting, _ = scrape(exporter)
    assert value(waiting, "heurist_jobs_queued", model="tiny-sd") == 3
    assert value(waiting, "heurist_jobs_submitted_total", model="tiny-sd") == \
        value(before, "heurist_jobs_submitted_total", model="tiny-sd") + 3
    assert value(waiting, "heurist_miners_active", tier="vram8") == 0

    miner = request.getfixturevalue("miner_address")  # starts the miner: the queue drains
    results = [h.result(timeout=120) for h in handles]
    assert [r.state for r in results] == [JobState.COMPLETED] * 3 and {r.miner for r in results} == {miner}
    wait_until(lambda: value(scrape(exporter)[0], "heurist_queue_messages", **depth) == 0, 30, "the queue to drain")
    after, _ = scrape(exporter)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("heurist_jobs_finished_total", model="tiny-sd", state="completed") == 3
    assert delta("heurist_jobs_finished_total", model="tiny-sd", state="failed") == 0
    assert value(after, "heurist_jobs_queued", model="tiny-sd") == 0
    assert delta("heurist_points_issued_total", model="tiny-sd") == pytest.approx(sum(r.points for r in results),
                                                                                  abs=1e-6)
    assert sum(r.points for r in results) > 0
    assert value(after, "heurist_miners_active", tier="vram8") == 1
    assert value(after, "heurist_miners_active", tier="vram24") == 0
    assert delta("heurist_miners_registered") == 1
    # Every job of the new miner was sampled for audit; no auditor runs, so they wait on audit.tiny-sd. The ledger
    # publishes a sample just after its client's verdict notice (heurist.verdicts.publisher): wait for all three.
    audits = {"queue": "audit.tiny-sd", "role": "audit", "model": "tiny-sd", "tier": "vram8"}
    wait_until(lambda: value(scrape(exporter)[0], "heurist_queue_messages", **audits) == 3, 30, "3 audit samples")
    assert delta("heurist_job_latency_seconds_count", model="tiny-sd") == 3
    assert delta("heurist_job_compute_seconds_count", model="tiny-sd") == 3
    views = [client.ledger.job(r.job_id) for r in results]
    waited = sum(v.finished_at - v.created_at for v in views if v is not None and v.finished_at is not None)
    assert delta("heurist_job_latency_seconds_sum", model="tiny-sd") == pytest.approx(waited, rel=1e-6)
    _assert_histograms_well_formed(after, "tiny-sd")


def _assert_histograms_well_formed(samples: Samples, model: str) -> None:
    for name in ("heurist_job_latency_seconds", "heurist_job_compute_seconds"):
        bounds = [*map(str, BUCKETS), "+Inf"]
        cumulative = [value(samples, f"{name}_bucket", model=model, le=le) for le in bounds]
        assert cumulative == sorted(cumulative), f"{name} buckets must be cumulative"
        assert cumulative[-1] == value(samples, f"{name}_count", model=model)


def test_audit_verdicts_flags_bans_and_clawbacks_are_counted(client: Client, exporter: str,
                                                             miner_address: str) -> None:
    from heurist.ledger.audit_service import AuditLedger
    from heurist.ledger.tables import AuditReason

    results = client.map([ImageRequest("a mill", "tiny-sd", seed=s, steps=2) for s in (40, 41)], timeout=120,
                         progress=False)
    assert [r.state for r in results] == [JobState.COMPLETED] * 2
    before, _ = scrape(exporter)
    audits = AuditLedger(client.ledger.engine, ban_threshold=1)
    audits.record_audit(results[0].job_id, passed=True)
    failed = audits.record_audit(results[1].job_id, passed=False, reason=AuditReason.IMAGE_MISMATCH)
    assert failed.banned and failed.clawback_micro < 0
    audits.flag(miner_address, "test: odd metrics")
    after, _ = scrape(exporter)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("heurist_audits_total", model="tiny-sd", outcome="passed") == 1
    assert delta("heurist_audits_total", model="tiny-sd", outcome="failed") == 1
    assert delta("heurist_points_clawed_back_total", model="tiny-sd") == pytest.approx(results[1].points, abs=1e-6)
    assert delta("heurist_miners_banned") == 1 and delta("heurist_miners_flagged") == 1
    audits.unflag(miner_address, "test: metrics fine again")
    assert value(scrape(exporter)[0], "heurist_miners_flagged") == value(before, "heurist_miners_flagged")


# ---------------------------------------------------------------------------------- ledger queries


def _seed_ledger(url: str, now: float) -> Any:
    """A migrated ledger with two miners (one silent for an hour), and nothing else yet."""
    from heurist.db.engine import make_engine, session_scope
    from heurist.db.migrate import upgrade
    from heurist.ledger.tables import Miner

    upgrade(url)
    engine = make_engine(url)
    with session_scope(engine) as session:
        session.add(Miner(address="0x" + "a" * 40, first_seen=now, last_seen=now, models=["sdxl", "sd15"],
                          device={}))
        session.add(Miner(address="0x" + "b" * 40, first_seen=now - 7200, last_seen=now - 3600,
                          models=["mixtral-8x7b"], device={}))
    return engine


def _add_job(engine: Any, job_id: str, model: str, created: float, finished: float, run_s: float,
             state: JobState = JobState.COMPLETED, points_micro: int = 0) -> None:
    from heurist.catalog.schema import JobKind
    from heurist.db.engine import session_scope
    from heurist.ledger.tables import CompletionRow, EntryKind, Job, PointsEntry

    miner = "0x" + "a" * 40
    with session_scope(engine) as session:
        session.add(Job(id=job_id, model_id=model, kind=JobKind.IMAGE, params={}, queue=f"q.{model}", state=state,
                        output_key=f"outputs/{job_id}", created_at=created, deadline_at=created + 600,
                        miner_address=miner, finished_at=finished))
        session.flush()
        session.add(CompletionRow(job_id=job_id, miner_address=miner, output_sha256="0" * 64, output_bytes=1,
                                  content_type="image/png", input_tokens=0, output_tokens=0,
                                  timings={"run_s": run_s, "upload_s": 0.0, "total_s": run_s}, device={},
                                  weights_sha256=None, finished_at=finished, signature="0x" + "1" * 130,
                                  received_at=finished))
        if points_micro:
            session.add(PointsEntry(idempotency_key=f"credit:{job_id}", miner_address=miner, job_id=job_id,
                                    kind=EntryKind.ESCROW, amount_micro=points_micro, created_at=finished))


def _expected(values: list[float]) -> Histogram:
    hist = Histogram()
    for v in values:
        hist.observe(v)
    return hist


def test_latency_histograms_fold_history_in_sql_then_count_each_new_job_once(db_url: str) -> None:
    from heurist.db.engine import session_scope

    now = time.time()
    engine = _seed_ledger(db_url, now)
    old = [(0.1, 0.05), (0.7, 0.3), (3.0, 2.0), (45.0, 40.0), (900.0, 1.0)]  # (latency, run_s), an hour ago
    for i, (lat, run) in enumerate(old):
        _add_job(engine, f"old-{i}", "sd15", now - 3600 - lat, now - 3600, run)
    _add_job(engine, "recent-0", "sd15", now - 12.0, now - 10.0, 1.5)  # inside the lookback: read as a row
    _add_job(engine, "failed-0", "sd15", now - 5.0, now - 4.0, 0.5, state=JobState.FAILED)  # not verified
    hist = LatencyHistograms(lookback_s=30.0)
    with session_scope(engine) as session:
        hist.update(session)
    lat_values = [lat for lat, _ in old] + [2.0]
    assert hist.latency["sd15"].counts == _expected(lat_values).counts
    assert hist.latency["sd15"].total == pytest.approx(sum(lat_values))
    assert hist.compute["sd15"].counts == _expected([run for _, run in old] + [1.5]).counts

    # A newer job, and one that commits late with an older finish (still within the lookback), then a
    # scrape with nothing new: each is counted once.
    _add_job(engine, "new-0", "sdxl", now - 3.0, now, 2.5)
    with session_scope(engine) as session:
        hist.update(session)
    _add_job(engine, "late-commit", "sd15", now - 25.0, now - 20.0, 4.0)
    for _ in range(2):
        with session_scope(engine) as session:
            hist.update(session)
    assert hist.latency["sd15"].count == len(old) + 2 and hist.latency["sdxl"].count == 1
    assert hist.latency["sdxl"].total == pytest.approx(3.0)
    assert hist.latency["sd15"].cumulative()[-1] == ("+Inf", float(len(old) + 2))
    engine.dispose()


def test_append_only_sums_count_a_late_committed_row_once(db_url: str) -> None:
    """Ids 1-4 are history (one GROUP BY), 5 and 7 new rows; 6 becomes visible after 7, as a PostgreSQL
    transaction that took its id first but committed last would."""
    from heurist.db.engine import session_scope
    from heurist.ledger.tables import EntryKind, PointsEntry
    from heurist.monitoring.increments import AppendOnlySums

    now = time.time()
    engine = _seed_ledger(db_url, now)
    miner = "0x" + "a" * 40

    def add(row_id: int, created: float, micro: int, kind: EntryKind = EntryKind.JOB_CREDIT) -> None:
        with session_scope(engine) as session:
            session.add(PointsEntry(id=row_id, idempotency_key=f"k{row_id}", miner_address=miner, job_id=None,
                                    kind=kind, amount_micro=micro, created_at=created))

    for row_id in range(1, 5):
        add(row_id, now - 3600, 10, EntryKind.ESCROW if row_id % 2 else EntryKind.JOB_CREDIT)
    add(5, now - 2, 100)
    add(7, now - 1, 1000)
    sums = AppendOnlySums(PointsEntry.id, PointsEntry.created_at, [PointsEntry.kind], PointsEntry.amount_micro,
                          lookback_s=30.0)

    def update() -> dict[str, int]:
        with session_scope(engine) as session:
            return {kind: total for (kind,), total in sums.update(session).items()}

    assert update() == {"escrow": 20, "job_credit": 1120}
    assert sums.watermark == 4  # history folded up to id 4; 5 and 7 are remembered, not summed again
    add(6, now - 1.5, 10_000)
    assert update() == {"escrow": 20, "job_credit": 11_120}
    assert update() == {"escrow": 20, "job_credit": 11_120}
    engine.dispose()


def test_ledger_stats_count_jobs_points_miners_and_standing(db_url: str) -> None:
    from heurist.db.engine import session_scope
    from heurist.ledger.tables import MinerEvent, MinerEventKind
    from heurist.monitoring.ledger_stats import LedgerStatsReader

    now = time.time()
    engine = _seed_ledger(db_url, now)
    _add_job(engine, "a", "sd15", now - 5, now - 4, 1.0, points_micro=1_500_000)
    _add_job(engine, "b", "sdxl", now - 5, now - 3, 1.0, points_micro=3_300_000)
    _add_job(engine, "c", "sdxl", now - 5, now - 2, 1.0, state=JobState.FAILED)
    miner = "0x" + "a" * 40
    with session_scope(engine) as session:
        for kind in (MinerEventKind.FLAGGED, MinerEventKind.UNFLAGGED, MinerEventKind.BANNED):
            session.add(MinerEvent(miner_address=miner, kind=kind, detail="", created_at=now))
    catalog = load_catalog()
    with session_scope(engine) as session:
        stats = LedgerStatsReader(catalog).read(session, active_since=now - 90)
    assert stats.jobs == {("sd15", "completed"): 1, ("sdxl", "completed"): 1, ("sdxl", "failed"): 1}
    assert stats.points_issued == {"sd15": 1.5, "sdxl": 3.3} and stats.points_escrowed == pytest.approx(4.8)
    assert stats.miners_registered == 2
    assert stats.miners_active["vram12"] == 1 and stats.miners_active["vram24"] == 0  # b is silent: offline
    assert stats.miners_banned == 1 and stats.miners_flagged == 0
    engine.dispose()


def test_miner_tier_is_its_largest_catalog_class() -> None:
    from heurist.monitoring.ledger_stats import UNKNOWN_TIER, miners_per_tier
    from heurist.routing import miner_tier

    catalog = load_catalog()
    assert miner_tier(catalog, ["sd15", "sdxl"]) == "vram12"
    assert miner_tier(catalog, ["tiny-sd", "not-a-model"]) == "vram8"
    assert miner_tier(catalog, ["gone-from-the-catalog"]) is None
    counts = miners_per_tier(catalog, [["sd15"], ["gone-from-the-catalog"], ["mixtral-8x7b", "sd15"]])
    assert (counts["vram8"], counts["vram24"], counts[UNKNOWN_TIER], counts["vram80"]) == (1, 1, 1, 0)


# ------------------------------------------------------------------------------- embedded broker


def test_embedded_broker_depth_counts_waiting_messages_and_creates_no_queue(tmp_path: Path) -> None:
    from kombu import Connection, Exchange, Queue

    from heurist import broker
    from heurist.monitoring.queues import QueueDepths

    broker.register()
    url = f"embedded+sqlite:///{tmp_path / 'broker.sqlite'}"
    queue = Queue(TINY_QUEUE, Exchange(TINY_QUEUE), routing_key=TINY_QUEUE)
    with Connection(url) as conn:
        producer = conn.Producer()
        for i in range(2):
            producer.publish({"n": i}, exchange=queue.exchange, routing_key=TINY_QUEUE, declare=[queue])
        depths = QueueDepths(url)
        try:
            assert depths.read([TINY_QUEUE, "vram12.sdxl"]) == {TINY_QUEUE: 2, "vram12.sdxl": 0}
            message = conn.SimpleQueue(queue).get(timeout=5)
            assert depths.read([TINY_QUEUE]) == {TINY_QUEUE: 1}  # taken, unacknowledged: no longer waiting
            message.ack()
            assert depths.read([TINY_QUEUE]) == {TINY_QUEUE: 1}
            channel: Any = conn.default_channel
            assert "vram12.sdxl" not in {q.name for q in channel.session.query(channel.queue_cls)}
        finally:
            depths.close()


# --------------------------------------------------------------------------------- CLI and files


def test_a_busy_port_is_an_error_naming_port(tmp_path: Path) -> None:
    from heurist.monitoring.server import serve

    settings = Settings(_env_file=None, data_dir=tmp_path)  # type: ignore[call-arg]
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ConfigError, match="--port"):
            serve(settings, "127.0.0.1", port)


def test_the_exporter_command_does_not_import_torch() -> None:
    code = ("import sys, heurist.cli.main, heurist.monitoring.server; "
            "sys.exit('torch' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], timeout=60).returncode == 0


def _dashboard_exprs() -> Iterator[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["title"] and dashboard["panels"]
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            yield target["expr"]
    for variable in dashboard.get("templating", {}).get("list", []):
        if isinstance(variable.get("query"), dict):
            yield variable["query"]["query"]
        elif variable.get("query"):
            yield variable["query"]


def _exposed_sample_names() -> set[str]:
    """The series names Prometheus stores for the exporter's families and the ledger process's own
    (``LEDGER_METRICS``; counters gain _total, histograms _bucket/_sum/_count)."""
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}
    return {name + suffix for name, (kind, _) in {**METRICS, **LEDGER_METRICS}.items() for suffix in suffixes[kind]}


def test_dashboard_queries_only_metrics_the_exporter_exposes() -> None:
    exposed = _exposed_sample_names()
    used = {name for expr in _dashboard_exprs() for name in re.findall(r"\bheurist_[a-z0-9_]+", expr)}
    assert used, "the dashboard queries no heurist metric"
    assert used <= exposed, f"unknown metrics in the dashboard: {sorted(used - exposed)}"
    wanted = {"heurist_queue_messages", "heurist_jobs_finished_total", "heurist_job_latency_seconds_bucket",
              "heurist_miners_active", "heurist_points_issued_total", "heurist_audits_total"}
    assert wanted <= used, f"the dashboard misses {sorted(wanted - used)}"


def test_prometheus_config_scrapes_the_exporter_port() -> None:
    config = yaml.safe_load((ROOT / "monitoring" / "prometheus.yml").read_text())
    targets = {t for job in config["scrape_configs"] for sc in job["static_configs"] for t in sc["targets"]}
    default_port = Settings.model_fields["exporter_port"].default
    assert any(t.endswith(f":{default_port}") for t in targets), targets
