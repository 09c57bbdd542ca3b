"""Benchmark workers for `heurist bench path`: the network's own cost, measured without a model's.

``NullPipeline`` answers at once with fixed bytes, so what is timed is the job path itself: validation,
ledger record, presign, broker, miner runtime, PUT, signing, ledger verification and crediting.
The baseline worker does the least a Celery job-with-output can: one presigned PUT.
"""

from __future__ import annotations

import json
import socket

import requests
from celery import Celery, Task
from rich.console import Console

from heurist.bench.path import BENCH_MODEL, PUT_QUEUE, PUT_TASK
from heurist.catalog import Catalog
from heurist.catalog.attestation import weights_digest
from heurist.celery_app import create_app, run_worker, worker_pool
from heurist.identity import Wallet
from heurist.jobs import ImageParams, TextOutput, TextParams
from heurist.services import Services
from heurist.settings import Settings
from heurist.storage.presigned import put_presigned
from workers.miner.device import detect_device
from workers.miner.launch import MinerPlan, serve
from workers.miner.pipelines.backend import OnToken, Pipeline, PipelineOutput


class NullPipeline(Pipeline):
    """A text 'model' that costs nothing: returns ``size`` bytes of TextOutput JSON."""

    def __init__(self, spec: object, size: int) -> None:
        self.spec = spec  # type: ignore[assignment]
        self.weights_sha256 = weights_digest(self.spec.files)  # attests the catalog's files it never loads
        filler = "x" * max(size - 120, 1)
        self.data = json.dumps(TextOutput(text=filler, input_tokens=1, output_tokens=1, output_token_ids=[0],
                                          finish_reason="length").model_dump()).encode()

    def run(self, params: ImageParams | TextParams, deadline_at: float,
            on_token: OnToken | None = None) -> PipelineOutput:
        return PipelineOutput(self.data, "application/json", input_tokens=1, output_tokens=1)


def run_null_miner(settings: Settings, catalog: Catalog, wallet: Wallet, size: int, console: Console) -> None:
    """A miner serving only the bench model through the real runtime, signing and all."""
    spec = catalog[BENCH_MODEL]
    plan = MinerPlan(device=detect_device("cpu"), vram_gb=spec.vram.gb, models=[spec], refused=[])
    serve(settings, wallet, plan, {spec.id: NullPipeline(spec, size)}, loglevel="WARNING", console=console)


def register_put_task(app: Celery) -> None:
    http = requests.Session()

    # The baseline is the bare Celery way, so it keeps Celery's plain Task: its link tells the bench it is done.
    @app.task(name=PUT_TASK, bind=True, acks_late=True, base=Task)
    def put(self: Task, url: str, size: int) -> int:
        """The baseline: one presigned PUT of ``size`` bytes, nothing else."""
        put_presigned(url, b"x" * size, "application/octet-stream", session=http)
        return size


def run_put_worker(settings: Settings) -> None:
    app = create_app(settings, Services("bench PUT"))
    register_put_task(app)
    pool, concurrency = worker_pool(settings.resolved_broker_url(), 1)
    worker = app.Worker(hostname=f"bench-put@{socket.gethostname()}", queues=[PUT_QUEUE], pool=pool,
                        concurrency=concurrency, prefetch_multiplier=1, loglevel="WARNING", quiet=True)
    run_worker(worker, "bench PUT")
