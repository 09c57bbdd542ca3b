"""``heurist submit``: send an image or text job, optionally wait for the verified result."""

from __future__ import annotations

from pathlib import Path

import typer

from heurist.cli.common import console, print_json, settings_with
from heurist.client import Client, JobHandle

app = typer.Typer(
    help="Submit jobs to the network.", no_args_is_help=True,
    rich_markup_mode="markdown",
)

WAIT = typer.Option(False, "--wait", help="Wait for the ledger's verdict and download the output.")
OUT = typer.Option(Path("heurist-output"), "--out", help="Where --wait saves the output.")
TIMEOUT = typer.Option(300.0, "--timeout", help="Seconds --wait waits.")
JSON = typer.Option(False, "--json", help="Print one JSON object.")


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
    wait: bool = WAIT, out: Path = OUT, timeout: float = TIMEOUT, json_out: bool = JSON,
) -> None:
    """Submit an image job to its model's queue."""
    with Client(settings_with()) as client:
        handle = client.submit_image(prompt, model=model, width=width, height=height, steps=steps,
                                     guidance=guidance, seed=seed, negative_prompt=negative)
        _report(handle, wait, out, timeout, json_out)


@app.command("text")
def text(
    prompt: str = typer.Argument(..., help="The user message."),
    model: str = typer.Option("smollm2-135m", "--model", help="Catalog model id (see `heurist routes`)."),
    max_tokens: int | None = typer.Option(None, "--max-tokens", help="Most tokens to generate."),
    temperature: float = typer.Option(0.0, "--temperature", help="0 = greedy (reproducible)."),
    seed: int | None = typer.Option(None, "--seed"),
    wait: bool = WAIT, out: Path = OUT, timeout: float = TIMEOUT, json_out: bool = JSON,
) -> None:
    """Submit a text job to its model's queue."""
    with Client(settings_with()) as client:
        handle = client.submit_text(prompt, model=model, max_tokens=max_tokens, temperature=temperature, seed=seed)
        _report(handle, wait, out, timeout, json_out)


def _report(handle: JobHandle, wait: bool, out: Path, timeout: float, json_out: bool) -> None:
    info: dict[str, object] = {"job_id": handle.id, "model": handle.spec.id, "queue": handle.spec.queue}
    if wait:
        result = handle.result(timeout)
        path = handle.download(out)
        info.update(state=result.state.value, points=result.points, miner=result.miner, file=str(path),
                    url=result.url)
    if json_out:
        print_json(info)
        return
    for key, value in info.items():
        console.print(f"[bold]{key}[/]: {value}")
