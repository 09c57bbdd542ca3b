"""``heurist submit``: send an image or text job, optionally wait for the verified result.

With ``--private`` the job is sealed for privacy-enabled miners (``heurist.privacy``) that satisfy ``--acc`` and
goes to ``private.<tier>.<model>``; ``--wait`` then saves (and for text prints) the decrypted answer, like a
public job's.
"""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.markup import escape

from heurist.cli.common import console, print_json, settings_with
from heurist.client import Client, JobHandle
from heurist.privacy import acc
from heurist.privacy.acc import AccError

ACC_HELP = """
**Private jobs** (`--private`): the prompt and parameters are encrypted end to end; only privacy-enabled
miners that satisfy the job's access-control condition (ACC) can get its key from the key-release nodes
(`HEURIST_KEYRELEASE_NODES`). Points and prices are a public job's.

**ACC** (`--acc FILE`, JSON; default `{"kind": "privacy_enabled"}`), one of:

* `{"kind": "addresses", "addresses": ["0x...", ...]}`: one of these miners;
* `{"kind": "privacy_enabled"}`: an approved privacy miner (`heurist privacy approve`);
* `{"kind": "min_reputation", "value": 0.8}`: audit reputation at least this (0 to 1);
* `{"kind": "min_stake", "hue": "10000"}`: HUE staked on the miner at least this;
* `{"kind": "and", "all": [...]}` and `{"kind": "or", "any": [...]}`: combinations (up to 4 deep).

Example: `{"kind": "and", "all": [{"kind": "privacy_enabled"}, {"kind": "min_reputation", "value": 0.9}]}`
"""

app = typer.Typer(
    help="Submit jobs to the network.\n\n" + ACC_HELP, no_args_is_help=True,
    rich_markup_mode="markdown",
)

WAIT = typer.Option(False, "--wait", help="Wait for the ledger's verdict and download the output.")
OUT = typer.Option(Path("heurist-output"), "--out", help="Where --wait saves the output.")
TIMEOUT = typer.Option(300.0, "--timeout", help="Seconds --wait waits.")
JSON = typer.Option(False, "--json", help="Print one JSON object.")
PRIVATE = typer.Option(False, "--private", help="Encrypt the job for privacy-enabled miners (see `heurist "
                       "submit --help`); needs HEURIST_KEYRELEASE_NODES.")
ACC = typer.Option(None, "--acc", help="With --private: a JSON file holding the access-control condition "
                   "(default: any approved privacy-enabled miner).", dir_okay=False)


@app.command("image")
def image(
    prompt: str = typer.Argument(..., help="What to draw."),
    model: str = typer.Option("sd15", "--model", help="Catalog model id (see `heurist routes`)."),
    width: int | None = typer.Option(None, "--width", help="Pixels, a multiple of 8 (default: model's)."),
    height: int | None = typer.Option(None, "--height", help="Pixels, a multiple of 8 (default: model's)."),
    steps: int | None = typer.Option(None, "--steps", help="Denoising steps (default: model's)."),
    guidance: float | None = typer.Option(None, "--guidance", help="Classifier-free guidance scale."),
    seed: int | None = typer.Option(None, "--seed", help="RNG seed (default: random, recorded for audit)."),
    negative: str = typer.Option("", "--negative", help="Negative prompt."),
    private: bool = PRIVATE, acc_file: Path | None = ACC,
    wait: bool = WAIT, out: Path = OUT, timeout: float = TIMEOUT, json_out: bool = JSON,
) -> None:
    """Submit an image job to its model's queue (with --private, its private queue)."""
    condition = _acc(acc_file)
    with Client(settings_with()) as client:
        handle = client.submit_image(prompt, model=model, width=width, height=height, steps=steps,
                                     guidance=guidance, seed=seed, negative_prompt=negative, private=private,
                                     acc=condition)
        _report(handle, wait, out, timeout, json_out)


@app.command("text")
def text(
    prompt: str = typer.Argument(..., help="The user message."),
    model: str = typer.Option("smollm2-135m", "--model", help="Catalog model id (see `heurist routes`)."),
    max_tokens: int | None = typer.Option(None, "--max-tokens", help="Most tokens to generate."),
    temperature: float = typer.Option(0.0, "--temperature", help="0 = greedy (reproducible)."),
    seed: int | None = typer.Option(None, "--seed"),
    private: bool = PRIVATE, acc_file: Path | None = ACC,
    wait: bool = WAIT, out: Path = OUT, timeout: float = TIMEOUT, json_out: bool = JSON,
) -> None:
    """Submit a text job to its model's queue (with --private, its private queue)."""
    condition = _acc(acc_file)
    with Client(settings_with()) as client:
        handle = client.submit_text(prompt, model=model, max_tokens=max_tokens, temperature=temperature, seed=seed,
                                    private=private, acc=condition)
        _report(handle, wait, out, timeout, json_out)


def _acc(path: Path | None) -> acc.Condition | None:
    """The --acc file's condition (None without one); its errors name --acc and the file."""
    if path is None:
        return None
    try:
        return acc.load(path)
    except AccError as err:
        message = str(err)
        raise AccError(message if message.startswith("--acc") else f"--acc {path}: {message}") from None


def _report(handle: JobHandle, wait: bool, out: Path, timeout: float, json_out: bool) -> None:
    info: dict[str, object] = {"job_id": handle.id, "model": handle.spec.id, "queue": handle.queue}
    if handle.private:
        info["private"] = True
    if wait:
        result = handle.result(timeout)
        path = handle.download(out)  # a private job's decrypted
        assert isinstance(path, Path)
        info.update(state=result.state.value, points=result.points, miner=result.miner, file=str(path))
        if not handle.private:  # a private job's URL serves only ciphertext
            info["url"] = result.url
        if path.suffix == ".json":  # a text answer: show it
            info["answer"] = json.loads(path.read_bytes())["text"]
    if json_out:
        print_json(info)
        return
    for key, value in info.items():
        console.print(f"[bold]{key}[/]: {escape(str(value))}")  # a miner's answer may hold markup
