"""The one settings object. Read once at process start (``get_settings``), never at import time."""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from urllib.parse import urlsplit

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from heurist.settings_economy import EconomySettings
from heurist.settings_privacy import PrivacySettings

DEFAULT_DATA_DIR = Path(".heurist")
AMQP_SCHEMES = ("amqp", "amqps", "pyamqp")
DEFAULT_MAX_JOB_DEADLINE_S = 1500.0  # 25 min: below RabbitMQ's default consumer_timeout of 30 min


def is_amqp(url: str) -> bool:
    """Whether a broker URL names RabbitMQ (``amqp://``, ``amqps://``, ``pyamqp://``, or a ``+`` variant of one):
    the broker with users, permissions and a management API, unlike the embedded SQLite broker."""
    return url.split("://", 1)[0].split("+", 1)[0] in AMQP_SCHEMES


class Settings(BaseSettings, EconomySettings, PrivacySettings):
    """Every knob of the network, from env vars prefixed ``HEURIST_`` (or a ``.env`` file).

    Defaults give the embedded network: SQLite broker and ledger under ``data_dir``. The token economy's
    knobs (``HEURIST_ECONOMY_*``) are declared in ``heurist.settings_economy``, private jobs' in
    ``heurist.settings_privacy``.
    """

    model_config = SettingsConfigDict(env_prefix="HEURIST_", env_file=".env", extra="ignore")

    data_dir: Path = Field(DEFAULT_DATA_DIR, description="Where embedded state lives (SQLite files, models).")
    broker_url: str | None = Field(None, description="Celery broker; default: SQLite file in data_dir.")
    broker_admin_url: str | None = Field(
        None, description="RabbitMQ management API that creates, revokes and restores per-miner broker users "
        "(`heurist broker`, the auditor's bans), e.g. http://admin:secret@broker:15672; its user needs the "
        "administrator tag. Default: the broker URL's host on port 15672 with the broker URL's credentials.")
    broker_confirm_timeout_s: float = Field(
        5.0, gt=0, le=120, description="How long a publish that matters (a job, a completion, a retry) waits for "
        "the broker's confirm before it is retried on a new connection (heurist.confirms). AMQP only.")
    broker_publish_timeout_s: float = Field(
        30.0, ge=0, le=600, description="How long an unconfirmed publish keeps trying (on new connections, "
        "1-5 s apart) before it raises BrokerUnavailableError: a submit is then recorded failed, and the gateway "
        "answers 503. One try can overrun it by a confirm and a connect timeout (5 + 4 s).")
    broker_heartbeat_s: int = Field(
        10, ge=0, le=600, description="AMQP heartbeat of the workers (ledger, auditor, miners): a connection "
        "that went silent (a partition) is dropped after 2-3 of these, by the worker, which reconnects, and by "
        "RabbitMQ, which requeues its unacknowledged jobs (heurist.reconnect). 0: off (not recommended).")
    database_url: str | None = Field(None, description="Ledger database; default: SQLite file in data_dir.")
    catalog_path: Path | None = Field(None, description="Model catalog TOML; default: the shipped one.")
    models_dir: Path | None = Field(None, description="Where locally built/cached model files live.")

    s3_endpoint: str | None = Field(None, description="S3-compatible endpoint URL (SeaweedFS, MinIO, R2, AWS).")
    s3_access_key: SecretStr | None = Field(None, description="S3 access key of the trusted side; required with "
                                            "HEURIST_S3_ENDPOINT (the embedded network makes its own).")
    s3_secret_key: SecretStr | None = Field(None, description="S3 secret key of the trusted side; required with "
                                            "HEURIST_S3_ENDPOINT.")
    s3_region: str = "us-east-1"
    s3_bucket: str = "heurist-outputs"
    presign_expiry_s: int = Field(
        3600, ge=60, le=7 * 24 * 3600, description="Longest life of a presigned URL. A job's PUT URL lives until "
        "the job's deadline and at most this (heurist.dispatch.upload_expiry_s); GET URLs live this long.")

    inbox_max_messages: int = Field(1000, ge=10, description="Messages a miner's inbox holds before the broker "
                                    "refuses its publishes (policy `heurist-inboxes`, overflow reject-publish).")
    inbox_max_bytes: int = Field(4 * 1024 * 1024, ge=64 * 1024, description="Bytes a miner's inbox holds: also the "
                                 "largest message a miner can send the ledger (an honest completion is about 2 KB, "
                                 "46 KB with its output inline).")
    dead_letters_max: int = Field(100_000, ge=100, description="Dead letters kept (`heurist broker dead-letters`); "
                                  "the oldest are dropped first.")
    inbox_poll_s: float = Field(2.0, gt=0, le=60, description="How often the ledger looks for new miners' inboxes.")

    torch_threads: int | None = Field(
        None, ge=1, description="torch intra-op threads of a miner or auditor; default: torch's (all cores). Set it "
        "when several torch processes share the cores: two with 2 threads each on 2 cores ran a job 35x slower.")
    # A miner runs concurrent jobs of one model as one batch (workers.miner.batches): 8 SmolLM2 answers batched
    # took 3.5-6.4x less time than one after another on a 2-core CPU. It takes as many jobs from the broker at once.
    miner_max_batch: int = Field(8, ge=1, le=64, description="Most jobs of one model a miner runs in one batch "
                                 "(and so in flight at once); a model whose pipeline cannot batch runs each alone. "
                                 "1: one job at a time, as before.")
    miner_batch_window_ms: float = Field(5.0, ge=0, le=1000, description="How long a miner's batch waits for "
                                         "more jobs after its first arrived, when fewer than HEURIST_MINER_MAX_BATCH "
                                         "are waiting (jobs that queued during the previous batch go at once).")
    miner_inline_bytes: int = Field(32_768, ge=0, le=32_768, description="Largest output a miner sends inside its "
                                    "completion instead of uploading it (heurist.ledger.inline: one S3 request per "
                                    "job instead of four). 0: always upload to the job's presigned URL.")

    miner_key: SecretStr | None = Field(None, description="Miner private key (hex). Prefer --key-file.")
    dispatch_key: SecretStr | None = Field(
        None, description="Trusted side only: the network's dispatch key (hex private key) that signs every job "
        "message (client, gateway, ledger redispatch). Default: data_dir/dispatch.key, created (0600) on first "
        "use. Every trusted process of one network must use the same key.")
    dispatch_address: str | None = Field(
        None, pattern=r"^0x[0-9a-fA-F]{40}$", description="Miners: the address of the network's dispatch key; "
        "a miner runs only job messages it signed. The operator's `heurist broker add-miner --json` prints it "
        "(dispatch_address).")
    chain_id: int = Field(
        31337, ge=1, description="The network's EVM chain id, in the EIP-712 domain of every signed message "
        "(heurist.signing): a signature made for one network is refused on another. Every process of one "
        "network, miners included, must use the same. Default: a local EVM's (31337).")
    verifying_contract: str | None = Field(
        None, pattern=r"^0x[0-9a-fA-F]{40}$", description="The network's settlement contract, also in the "
        "EIP-712 domain once the network has one. Every process of one network must use the same.")
    # Settlement on an EVM chain (heurist.settlement): `heurist contracts deploy` records all four in .env.
    settlement_hue: str | None = Field(
        None, pattern=r"^0x[0-9a-fA-F]{40}$", description="The HUE token contract's address on the settlement "
        "chain (recorded by `heurist contracts deploy`).")
    settlement_eshue: str | None = Field(
        None, pattern=r"^0x[0-9a-fA-F]{40}$", description="The esHUE token contract's address on the settlement "
        "chain (recorded by `heurist contracts deploy`).")
    settlement_distributor: str | None = Field(
        None, pattern=r"^0x[0-9a-fA-F]{40}$", description="The RewardsDistributor's address: where `heurist "
        "settle` posts each epoch's Merkle root and `heurist claim-onchain` claims (recorded by `heurist "
        "contracts deploy`; --distributor overrides it).")
    settlement_chain_id: int | None = Field(
        None, ge=1, description="The settlement chain's id (zkSync Era: 324, its Sepolia testnet: 300, ganache: "
        "1337). The settlement commands refuse an --rpc node that serves another chain. Default: not checked.")
    ledger_queue: str = "ledger"
    max_message_bytes: int = Field(
        65_536, ge=57_344, le=16 * 2**20, description="Largest message body the ledger and the auditor accept; "
        "a larger one is refused before it is parsed and kept in `dead-letters` (an honest completion is ~1.3 KB, "
        "~46 KB with a 32 KiB output inline: heurist.ledger.inline; a hello under 16 KB).")
    audit_queue_prefix: str = Field("audit", description="Sampled jobs go to '<prefix>.<model>'.")
    audit_base_rate: float = Field(0.10, ge=0, le=1, description="Share of jobs audited for miners in good standing.")
    audit_new_miner_rate: float = Field(0.5, ge=0, le=1)
    audit_suspicious_rate: float = Field(1.0, ge=0, le=1)
    audit_seed: int | None = Field(None, description="Fix to make sampling reproducible (tests); unset: secret.")
    outbox_interval_s: float = Field(5.0, gt=0, le=300, description="How often each ledger publishes outbox rows "
                                     "left unsent (audit samples whose fast-path publish a crash or the broker cut).")
    escrow_new_miners: bool = Field(True, description="Hold new miners' points until enough audits pass.")
    result_poll_interval_s: float = Field(0.1, gt=0, le=5)
    # Pushed verdicts (heurist.verdicts): on RabbitMQ the ledger tells a waiting client when its job ends.
    verdict_notifications: bool = Field(True, description="On RabbitMQ, clients learn verdicts from a notification "
                                        "the ledger publishes, not by polling the database every "
                                        "result_poll_interval_s (the embedded broker always polls).")
    verdict_fallback_poll_s: float = Field(5.0, gt=0, le=600, description="With notifications, how often a waiting "
                                           "client still reads its unfinished jobs: what finds a verdict whose "
                                           "notification was lost (a broker partition, a ledger killed mid-publish).")
    gateway_rate_per_minute: int = Field(60, ge=1, description="Requests per minute per API key at the gateway.")
    gateway_timeout_s: float = Field(120.0, gt=0, description="How long a gateway request waits for its jobs.")
    search_max_document_bytes: int = Field(
        200_000, ge=1000, le=10_000_000, description="Largest document text (UTF-8 bytes) POST /v1/documents "
        "ingests; a larger one is refused with 413 before any work (split it). Embedding costs ~45 ms of CPU "
        "per kB here.")
    search_ingest_micro_units_per_byte: int = Field(
        2, ge=0, description="What ingesting a document costs its API key, in millionths of a credit unit per "
        "UTF-8 byte of text (exact integers): 2 makes 200 kB cost 0.4 units. Charged before the work, once per "
        "document; a duplicate of the key's own document costs nothing.")
    gateway_max_timeout_s: float = Field(600.0, gt=0, description="The largest `timeout_s` a request may ask.")
    gateway_reconcile_interval_s: float = Field(30.0, gt=0, description="How often the gateway refunds failed "
                                                "jobs and settles text jobs whose request had already timed out.")

    sweep_interval_s: float = Field(30.0, gt=0, description="How often the ledger looks for stranded jobs: still "
                                    "queued past their deadline (lost, purged or never taken).")
    sweep_grace_s: float = Field(60.0, ge=0, description="How long past its deadline a queued job is left alone "
                                 "before the sweep re-sends or fails it (a completion may still be on its way).")
    sweep_output_wait_s: float = Field(300.0, ge=0, description="Extra wait for a stranded job whose output object "
                                       "already exists: its completion is probably still queued for the ledger.")
    job_resends: int = Field(2, ge=0, description="How many times the sweep re-sends a stranded job (fresh "
                             "deadline, fresh upload URL) before failing it, which refunds its credits.")
    max_job_deadline_s: float = Field(
        DEFAULT_MAX_JOB_DEADLINE_S, gt=0, description="The longest deadline a catalog model may give a job (at its "
        "maximum limits); a catalog with a longer one is refused at load. Keep it at least 30 s (the hard time "
        "limit's grace, heurist.time_limits) below RabbitMQ's consumer_timeout (default 1,800,000 ms): a job "
        "unacknowledged past that has its miner's channel closed (docs/operators.md).")
    # The ledger verifies completions in batches (heurist.ledger.batch): each worker thread holds one message while
    # its completion waits in a batch or for S3. Measured on 2 cores: 32 threads kept one ledger process at 54 % of
    # a core (95 completions/s), 64 at 76 % (129/s), 128 at 86 % (154/s); 256 did no better (122/s).
    ledger_concurrency: int = Field(128, ge=1, le=512, description="Worker threads (and prefetched messages) of a "
                                    "ledger process on AMQP; `heurist ledger --concurrency` overrides it.")
    ledger_batch: int = Field(32, ge=1, le=512, description="Most completions a ledger reads and credits together "
                              "(one session for their reads, one transaction for their credits); 1: each alone.")
    ledger_batch_window_ms: float = Field(50.0, ge=0, le=1000, description="How long a ledger's batch waits for "
                                          "more completions after its first arrived, when fewer than "
                                          "HEURIST_LEDGER_BATCH are waiting and the ledger is busy (an idle "
                                          "ledger's batch of one never waits).")
    ledger_retry_max_s: float = Field(30.0, gt=0, le=300, description="Longest pause between two retries of a "
                                      "ledger message that met a database or storage outage (they double from "
                                      "0.5 s). Retried without limit, never dropped (heurist.transient).")
    ledger_outage_alert_s: float = Field(60.0, ge=0, description="Seconds of ledger messages failing on the "
                                         "database or storage before the ledger logs an ERROR and sets "
                                         "heurist_ledger_outage_alert.")
    ledger_metrics_host: str = Field("127.0.0.1", description="Interface the ledger's own /metrics binds.")
    ledger_metrics_port: int = Field(0, ge=0, le=65535, description="TCP port of the ledger process's /metrics "
                                     "(retries, outages, dead letters; monitoring/prometheus.yml uses 9109); 0: off.")

    flower_user: str = Field("admin", pattern=r"^[^:\s]+$", description="Basic-auth user of `heurist flower`.")
    flower_password: SecretStr | None = Field(None, description="Basic-auth password of `heurist flower`; "
                                              "required: Flower never starts as an open dashboard.")

    heartbeat_interval_s: float = Field(30.0, gt=0, le=3600, description="How often a miner sends its signed "
                                        "heartbeat to the ledger.")
    epoch_s: int = Field(3600, ge=10, description="Length of a reward epoch; uptime is measured per epoch.")
    offline_after_missed: int = Field(3, ge=1, description="A miner is shown offline after this many "
                                      "heartbeat intervals without one.")

    # Supervision (heurist.supervision): the embedded network and `heurist miner`'s per-GPU workers restart a
    # child that dies unasked; production uses systemd or compose restart policies (docs/operators.md).
    restart_backoff_s: float = Field(1.0, gt=0, description="Wait before restarting a child that died, doubled "
                                     "for each of its restarts still within restart_window_s.")
    restart_backoff_max_s: float = Field(30.0, gt=0, description="The longest wait before a restart.")
    restart_limit: int = Field(8, ge=0, description="Restarts of one child within restart_window_s before its "
                               "supervisor leaves it down and reports it failed with its log (a crash loop); "
                               "0: never restart.")
    restart_window_s: float = Field(600.0, gt=0, description="The window restart_limit counts restarts in.")
    restart_settle_s: float = Field(30.0, ge=0, description="A child that exits this soon after the start its "
                                    "owner asked for is reported failed at once, not restarted: a start that fails "
                                    "(a missing model file, a bad option) fails again.")
    liveness_file: Path | None = Field(None, description="Workers (ledger, auditor, miner) touch this file every "
                                       "5 s while they hold a broker connection and consume; `python -m "
                                       "heurist.liveness` fails once it is older than 60 s (container health "
                                       "checks). Default: no file.")

    exporter_host: str = Field("127.0.0.1", description="Interface `heurist exporter` binds (0.0.0.0: all).")
    exporter_port: int = Field(9108, ge=0, le=65535, description="TCP port of `heurist exporter`'s /metrics "
                               "(0: any free port).")

    def resolved_broker_url(self) -> str:
        return self.broker_url or f"embedded+sqlite:///{(self.data_dir / 'broker.sqlite').resolve()}"

    def resolved_broker_admin_url(self) -> str | None:
        """The management API URL: set, or derived from an AMQP broker URL; None for other brokers."""
        if self.broker_admin_url:
            return self.broker_admin_url
        url = self.resolved_broker_url()
        parts = urlsplit(url)
        if not is_amqp(url) or not parts.hostname:
            return None
        user, password = parts.username or "guest", parts.password or "guest"  # kombu's defaults
        host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
        return f"http://{user}:{password}@{host}:15672"

    def offline_after_s(self) -> float:
        """Seconds of silence after which a miner counts as offline."""
        return self.heartbeat_interval_s * self.offline_after_missed

    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{(self.data_dir / 'ledger.sqlite').resolve()}"

    def resolved_models_dir(self) -> Path:
        return (self.models_dir or self.data_dir / "models").resolve()


def settings_env(settings: Settings) -> dict[str, str]:
    """``HEURIST_*`` variables that recreate ``settings`` in a child process (secrets included: trusted only)."""
    env: dict[str, str] = {}
    dumped = settings.model_dump(mode="json")  # lists of models (the key-release nodes) as JSON
    for name in Settings.model_fields:
        value = getattr(settings, name)
        if value is None:
            continue
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        env[f"HEURIST_{name.upper()}"] = json.dumps(dumped[name]) if isinstance(value, dict | list) else str(value)
    return env


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read from the environment on first use."""
    return Settings()
