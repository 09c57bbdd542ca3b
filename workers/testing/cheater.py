"""``python -m workers.testing.cheater --cheat NAME``: an honest miner with one cheat added, and nothing else.

For the audit's tests and ``heurist demo --with-cheater`` (``EmbeddedNetwork.start_miner(..., cheat=...)``)
only, so the production ``heurist miner``, ``run_miner`` and the GPU supervisor know nothing of cheats. It
takes the options the embedded network gives a miner and runs the very miner ``heurist miner`` runs
(``workers.miner.launch.run_miner``), the cheat's middleware (``workers.testing.cheats``) after the defaults.
"""

from __future__ import annotations

from pathlib import Path

import typer

from heurist.catalog import load_catalog
from heurist.cli.common import settings_with, split_csv
from heurist.cli.main import main
from heurist.identity import Wallet
from workers.miner.launch import MinerOptions, run_miner
from workers.testing.cheats import CHEATS, cheat_middleware
from workers.testing.faults import FAULTS

cli = typer.Typer(add_completion=False, pretty_exceptions_enable=False)


@cli.command()
def cheater(
    cheat: str = typer.Option(..., "--cheat", help=f"How it cheats: {', '.join(CHEATS)}; or a fault of the "
                              f"time-limit tests: {', '.join(FAULTS)}."),
    key_file: Path = typer.Option(..., "--key-file", help="Miner key file."),
    models: str | None = typer.Option(None, "--models", help="Comma-separated model ids (default: all that fit)."),
    device: str | None = typer.Option(None, "--device", help="Force 'cpu' or 'cuda' (default: detect)."),
    loglevel: str = typer.Option("INFO", "--loglevel"),
) -> None:
    """Run a cheating miner: the honest miner's load, announce and consume, with the cheat in its middleware."""
    middleware = cheat_middleware(cheat)  # an unknown cheat fails before anything loads
    settings = settings_with()
    wanted = split_csv(models)
    options = MinerOptions(model_ids=tuple(wanted) if wanted else None, device_kind=device, loglevel=loglevel,
                           middleware=(middleware,))
    run_miner(settings, load_catalog(settings.catalog_path), Wallet.from_file(key_file), options)


if __name__ == "__main__":
    main(cli)
