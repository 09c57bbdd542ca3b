"""The ``heurist`` command: one entry point for miners, clients, ledger operators and demos."""

from __future__ import annotations

import sys

import typer
from pydantic import ValidationError
from rich.markup import escape

from heurist.cli import access, audit, bench, demo, gateway, jobs, keys, network, search, submit, up, wallet
from heurist.cli import economy as economy_cli
from heurist.cli import epochs as epochs_cli
from heurist.cli import miners as miners_cli
from heurist.cli import privacy as privacy_cli
from heurist.cli import settlement as settlement_cli
from heurist.cli.common import err_console
from heurist.cli.doctor import doctor as doctor_command
from heurist.cli.exporter import exporter as exporter_command
from heurist.cli.flower import flower as flower_command
from heurist.errors import HeuristError
from heurist.settings import Settings

app = typer.Typer(
    rich_markup_mode="markdown",
    help="Heurist: a decentralized AI compute network on Celery. Miners host models, applications "
    "submit jobs, a trusted ledger credits points.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
network.register(app)
app.add_typer(submit.app, name="submit")
app.add_typer(wallet.app, name="wallet")
app.add_typer(network.models_app, name="models")
app.add_typer(network.db_app, name="db")
app.add_typer(bench.app, name="bench")
app.add_typer(audit.app, name="audit")
app.add_typer(access.app, name="broker")
app.add_typer(keys.app, name="keys")
app.add_typer(search.app, name="search")
app.command("demo")(demo.demo)
app.command("gateway")(gateway.gateway)
app.command("up")(up.up)
app.command("exporter")(exporter_command)
app.command("flower")(flower_command)
app.command("miners")(miners_cli.miners)
jobs.register(app)
app.command("doctor")(doctor_command)
economy_cli.register(app)
epochs_cli.register(app)
privacy_cli.register(app)
settlement_cli.register(app)


def _usage_error(err: BaseException) -> bool:
    """A click usage error (bad option, missing argument). typer 0.29 raises those of its vendored click,
    which are not ``click.ClickException``: match either by what they can do."""
    return callable(getattr(err, "show", None)) and isinstance(getattr(err, "exit_code", None), int)


SECRET_WORDS = ("KEY", "SECRET", "PASSWORD", "URL", "TOKEN")  # their values are not echoed (a URL holds a password)


def _settings_errors(err: ValidationError) -> list[str]:
    """One line per setting the environment (or .env) gives a value it cannot take, naming the variable."""
    lines = []
    for e in err.errors():
        name = "HEURIST_" + "_".join(str(part) for part in e["loc"]).upper()
        shown = name if any(word in name for word in SECRET_WORDS) else f"{name}={e.get('input')!r}"
        lines.append(f"{shown}: {e['msg']}; fix it in the environment or .env, or unset it for the default "
                     "(the README's settings table lists them)")
    return lines


def _interrupted() -> None:
    err_console.print("interrupted: every process this command started has been stopped")
    sys.exit(130)


def main(cli: typer.Typer = app) -> None:
    """Run the CLI (or another command line of this project's, e.g. ``workers.testing.cheater``); errors
    meant for people are printed as one line, never as a traceback."""
    try:
        code = cli(standalone_mode=False)
    except HeuristError as err:
        err_console.print(f"[bold red]error:[/] {escape(str(err))}")  # a miner's text may hold markup
        sys.exit(2)
    except ValidationError as err:
        if err.title != Settings.__name__:
            raise
        for line in _settings_errors(err):
            err_console.print(f"[bold red]error:[/] {escape(line)}")
        sys.exit(2)
    except KeyboardInterrupt:
        _interrupted()
    except Exception as err:
        if type(err).__name__ == "Abort":  # click's (real or vendored) wrapper of Ctrl-C
            _interrupted()
        if not _usage_error(err):
            raise
        err.show()  # type: ignore[attr-defined]
        sys.exit(err.exit_code)  # type: ignore[attr-defined]
    if code == 130:  # typer returns (not raises) the exit code of a Ctrl-C it caught itself
        _interrupted()
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
