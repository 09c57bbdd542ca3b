"""`heurist bench epoch`: how an epoch close grows with the number of stake positions (1,000, 10,000, 100,000).

A close reads every stake leg, splits each node's reward among its stakers and posts one transaction with a leg
per staker paid, so its cost is a few statements per 2,000 accounts plus Python work per position: it should grow
about 10x from 10,000 to 100,000 positions (the ``ratio_100k_10k`` reported). A per-row round trip would show as
a much larger ratio and as minutes at 100,000.

Each size gets a fresh database (migrated to head): a SQLite file in a temporary directory, or with
``database_url`` a new PostgreSQL database created through that URL (a role allowed to CREATE DATABASE) and
dropped afterwards. It holds 100 miner nodes, each with credited points and uptime in the epoch, a 10,000 HUE
self-stake (the activation threshold) and a 20 % bribe, and N stake positions spread over the nodes, one per
distinct staker, alternating HUE and esHUE. They are posted in bulk, one book transaction dated at the epoch's
start (a mint leg and N stake legs), not as N signed actions; PostgreSQL then gets ``ANALYZE``, as autovacuum
would within a minute of such a load (without statistics its planner scans every stake account per 2,000 keys).
Only ``close_epoch`` is timed (wall clock); it pays every staker, so the report has N + 100 payouts and a Merkle
root over them. The same sizes give the same root on both databases.

Measured here (2 shared cores, other work running): SQLite 0.24 / 2.6 / 25.8 s for 1k / 10k / 100k (ratio 9.9);
PostgreSQL 0.73 / 6.0 / 66.7 s (ratio 11.1). At 100k on PostgreSQL about half is SQL (the 51 account SELECTs
13 s, the balance UPDATEs 8 s, leg INSERTs 5 s, account upserts 5 s), the rest Python (ORM rows, Merkle, report).
"""

from __future__ import annotations

import random
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

from eth_utils import to_checksum_address
from rich.console import Console
from sqlalchemy import insert, text
from sqlalchemy.engine import URL, make_url

from heurist.db.engine import make_engine, normalize_url, session_scope
from heurist.db.migrate import upgrade
from heurist.economy.amounts import ONE
from heurist.economy.book import MINT, Ref, post, stake
from heurist.economy.config import Rules
from heurist.economy.epochs import close_epoch
from heurist.economy.service import Economy
from heurist.economy.tables import Bribe, Token
from heurist.errors import HeuristError
from heurist.ledger.tables import EntryKind, Miner, MinerUptime, PointsEntry

NODES = 100
EPOCH_S = 3600
EPOCH = 1_893_456_000 // EPOCH_S  # the hour from 2030-01-01T00:00Z
BRIBE_BPS = 2_000
SELF_STAKE = 10_000 * ONE  # each operator's own stake: the activation threshold


class BenchDatabaseError(HeuristError):
    """The PostgreSQL server given to `heurist bench epoch` cannot be used."""


@dataclass(frozen=True)
class EpochRun:
    positions: int
    seconds: float  # close_epoch alone
    payouts: int
    merkle_root: str
    setup_seconds: float

    @property
    def positions_per_s(self) -> float:
        return self.positions / self.seconds if self.seconds > 0 else float("inf")


@dataclass(frozen=True)
class EpochBench:
    database: str  # sqlite | postgresql
    runs: list[EpochRun]

    def ratio(self, big: int, small: int) -> float | None:
        """Seconds at ``big`` positions over seconds at ``small``, if both were measured."""
        seconds = {run.positions: run.seconds for run in self.runs}
        if big not in seconds or small not in seconds or seconds[small] <= 0:
            return None
        return round(seconds[big] / seconds[small], 2)


def _addresses(count: int, rng: random.Random) -> list[str]:
    """``count`` distinct EIP-55 addresses (random bytes: no key pairs needed to hold a position)."""
    seen: set[str] = set()
    while len(seen) < count:
        seen.add(to_checksum_address(rng.randbytes(20)))
    return sorted(seen)


def _populate(url: str, positions: int, rules: Rules) -> None:
    """The nodes, their points, uptime and bribes, and ``positions`` stake positions, in one transaction."""
    rng = random.Random(positions)
    nodes = _addresses(NODES, rng)
    stakers = _addresses(positions, rng)
    start = rules.epoch_bounds(EPOCH)[0]
    legs: list[tuple[Ref, int]] = [(stake(node, node, Token.HUE), SELF_STAKE) for node in nodes]
    for i, staker in enumerate(stakers):
        legs.append((stake(staker, nodes[i % NODES], Token.HUE if i % 2 else Token.ESHUE),
                     rng.randint(1, 1_000) * ONE))
    legs.append((MINT, -sum(amount for _, amount in legs)))
    engine = make_engine(url)
    try:
        with session_scope(engine) as session:
            session.execute(insert(Miner), [{"address": n, "first_seen": 0.0, "last_seen": 0.0, "models": [],
                                             "device": {}} for n in nodes])
            session.execute(insert(PointsEntry), [
                {"idempotency_key": f"bench-epoch:{n}", "miner_address": n, "job_id": None,
                 "kind": EntryKind.JOB_CREDIT, "amount_micro": rng.randint(1, 1_000) * 1_000_000,
                 "created_at": start / 1000 + 60} for n in nodes])
            session.execute(insert(MinerUptime), [{"address": n, "epoch": EPOCH, "slots": rng.randint(60, 120),
                                                   "last_slot": 0} for n in nodes])
            posting = post(session, key="bench-epoch:positions", kind="bench", actor="", at_ms=start, epoch=EPOCH,
                           legs=legs, body={"positions": positions}, cap=rules.cap)
            session.execute(insert(Bribe), [{"node": n, "bps": BRIBE_BPS, "effective_epoch": EPOCH,
                                             "tx_id": posting.tx.id} for n in nodes])
        if engine.dialect.name == "postgresql":  # what autovacuum does within a minute of a bulk load
            with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                conn.execute(text("ANALYZE"))
    finally:
        engine.dispose()


def _time_close(url: str, rules: Rules) -> tuple[float, dict[str, object]]:
    end = rules.epoch_bounds(EPOCH)[1]
    now = [end / 1000 + 1.0]  # the economy's clock: just after the epoch (grace 0)
    engine = make_engine(url)
    try:
        economy = Economy(engine, rules, clock=lambda: now[0])
        started = time.perf_counter()
        report = close_epoch(economy, EPOCH)
        return time.perf_counter() - started, report
    finally:
        engine.dispose()


@contextmanager
def _database(base: str | None, scratch: Path) -> Iterator[str]:
    """A fresh database: a SQLite file under ``scratch``, or a new PostgreSQL database via ``base``, dropped after."""
    if base is None or make_url(base).get_backend_name() == "sqlite":
        yield f"sqlite:///{scratch / f'epoch-{uuid.uuid4().hex[:8]}.sqlite'}"
        return
    server = normalize_url(base)
    name = f"heurist_bench_{uuid.uuid4().hex[:12]}"
    _admin(server, f'CREATE DATABASE "{name}"')
    try:
        yield server.set(database=name).render_as_string(hide_password=False)
    finally:
        _admin(server, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _admin(server: URL, sql: str) -> None:
    """CREATE/DROP DATABASE, outside a transaction, connected to the database the URL names."""
    import psycopg

    try:
        with psycopg.connect(server.set(drivername="postgresql").render_as_string(hide_password=False),
                             autocommit=True, connect_timeout=10) as conn:
            conn.execute(sql)  # type: ignore[arg-type]  # the name is ours (a uuid)
    except psycopg.Error as exc:
        where = server.render_as_string(hide_password=True)
        raise BenchDatabaseError(f"--database-url: {where} refused `{sql}` ({' '.join(str(exc).split())}); give a "
                                 "PostgreSQL role allowed to create databases, e.g. "
                                 "postgresql://postgres@127.0.0.1:5432/postgres") from None


def run_epoch_bench(sizes: list[int], database_url: str | None, console: Console) -> EpochBench:
    """Set up and close one epoch per size (smallest first), each on a fresh database."""
    rules = Rules(epoch_s=EPOCH_S, close_grace_s=0, slots_per_epoch=120)
    runs = []
    with tempfile.TemporaryDirectory(prefix="heurist-bench-epoch-") as tmp:
        for positions in sorted(sizes):
            with _database(database_url, Path(tmp)) as url:
                with console.status(f"{positions:,} positions: migrating a fresh database") as status:
                    began = time.perf_counter()
                    upgrade(url)
                    status.update(f"{positions:,} positions: posting {NODES} nodes and {positions:,} stakes")
                    _populate(url, positions, rules)
                    setup = time.perf_counter() - began
                    status.update(f"{positions:,} positions: closing the epoch (timed)")
                    seconds, report = _time_close(url, rules)
                payouts = report["payouts"]
                assert isinstance(payouts, list)
                runs.append(EpochRun(positions=positions, seconds=round(seconds, 3), payouts=len(payouts),
                                     merkle_root=str(report["merkle_root"]), setup_seconds=round(setup, 1)))
                console.print(f"{positions:,} positions: closed in {seconds:.2f} s (set up in {setup:.1f} s)")
    database = "sqlite" if database_url is None else make_url(database_url).get_backend_name()
    return EpochBench(database=database, runs=runs)


def as_dict(bench: EpochBench) -> dict[str, object]:
    """The JSON of `--json`: every size, the 100k/10k ratio, and the ratio of the two largest sizes measured."""
    runs = sorted(bench.runs, key=lambda r: r.positions)
    last = bench.ratio(runs[-1].positions, runs[-2].positions) if len(runs) > 1 else None
    return {"database": bench.database, "ratio_100k_10k": bench.ratio(100_000, 10_000),
            "ratio": last, "ratio_of": f"{runs[-1].positions}/{runs[-2].positions}" if last is not None else None,
            "sizes": [asdict(run) | {"positions_per_s": round(run.positions_per_s, 1)} for run in runs]}
