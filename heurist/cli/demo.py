"""``heurist demo``: the whole network on this machine, a batch of jobs, and the points they earned."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from heurist.audit.report import audit_report
from heurist.catalog import JobKind
from heurist.cli.common import console, err_console, print_json, redacted, settings_with
from heurist.cli.demo_economy import EconomyDemo, economy_overrides
from heurist.cli.demo_private import DEFAULT_PROMPT, PrivateDemo, private_summary, show_private
from heurist.cli.epochs import show_report
from heurist.client import Client, ImageRequest, JobResult, TextRequest
from heurist.credits.ledger import CreditLedger
from heurist.embedded import EmbeddedNetwork, wait_until
from heurist.errors import ConfigError
from heurist.identity import Wallet
from heurist.ledger.audit_service import AuditLedger

IMAGE_PROMPTS = ["a lighthouse at dawn", "a red fox in snow", "a city of glass", "a bowl of ramen",
                 "a sailing ship in a storm", "a cat astronaut"]
TEXT_PROMPTS = ["What is a GPU? Answer in one sentence.", "Name three primary colors.",
                "Why is the sky blue? One sentence.", "Say hello in French."]


def demo(
    image_jobs: int = typer.Option(4, "--image-jobs", min=0, help="tiny-sd 64x64 image jobs to submit."),
    text_jobs: int = typer.Option(2, "--text-jobs", min=0, help="SmolLM2 text jobs to submit."),
    max_tokens: int = typer.Option(24, "--max-tokens", min=1, max=512, help="Tokens per text job."),
    json_out: bool = typer.Option(False, "--json", help="End with one JSON line: jobs, points, miners."),
    output: Path = typer.Option(Path("demo-output"), "--output", help="Where images and answers are saved."),
    data_dir: Path = typer.Option(Path(".heurist/demo"), "--data-dir", help="Embedded state (reset each run)."),
    models_dir: Path = typer.Option(Path(".heurist/models"), "--models-dir", help="Built models (kept)."),
    timeout: float = typer.Option(900.0, "--timeout", help="Seconds to wait for all jobs."),
    with_cheater: bool = typer.Option(False, "--with-cheater", help="Add a second miner that cheats (see --cheat)."),
    cheat: str = typer.Option("random-image", "--cheat", help="How the cheater cheats: "
                              "random-image, not-an-image, fewer-steps, other-seed, low-res, garbage-text, "
                              "truncated-text, inflated-tokens, tampered-weights, modified-weights, fake-latency or "
                              "fake-device."),
    audit_rate: float = typer.Option(1.0, "--audit-rate", min=0.0, max=1.0,
                                     help="Share of jobs the auditor replays (production default: 10%)."),
    economy: bool = typer.Option(False, "--economy", help="Also run the token economy: genesis, stakes, a bribe, "
                                 "credits bought with HUE, then close the jobs' epoch and print its rewards and "
                                 "Merkle root (README, 'Token economy')."),
    epoch_s: int = typer.Option(30, "--epoch-s", min=10, max=3600, help="Epoch length with --economy."),
    private: bool = typer.Option(False, "--private", help="Run private jobs instead: 3 key-release nodes (2 of 3 "
                                 "needed), a privacy miner and an auditor with its own key; one private text job "
                                 "and one private image job, their decrypted answers printed (README, 'Private "
                                 "jobs')."),
    prompt: str = typer.Option(DEFAULT_PROMPT, "--prompt", help="The private text job's prompt (with --private)."),
) -> None:
    """Run the embedded network (SQLite broker and ledger, SeaweedFS, one CPU miner), submit jobs, show points.

    HEURIST_BROKER_URL, HEURIST_DATABASE_URL and HEURIST_S3_ENDPOINT (with its keys) put the same demo on
    RabbitMQ, PostgreSQL and an S3 service you run.
    """
    signal.signal(signal.SIGTERM, _interrupt)  # a plain `kill` cleans up like Ctrl-C
    started = time.monotonic()
    cheater = cheater_models(cheat) if with_cheater else []  # a bad --cheat fails before anything starts
    base = settings_with(audit_base_rate=audit_rate, audit_new_miner_rate=audit_rate, audit_suspicious_rate=1.0,
                         **(economy_overrides(epoch_s) if economy else {}))
    report: dict[str, object] | None = None
    with EmbeddedNetwork(data_dir.resolve(), base=base, models_dir=models_dir.resolve(),
                         on_restart=say_restart) as net:
        secret = PrivateDemo(net) if private else None
        wallets = [secret.start() if secret is not None else _start_public(net)]
        if with_cheater:
            wallets.append(net.start_miner(cheater, name="cheater", cheat=cheat))
        with Client(net.settings()) as client:
            with err_console.status("miners: verifying model files and loading pipelines"):
                wait_until(lambda: all(client.ledger.is_registered(w.address) for w in wallets), 600,
                           "the miners to start", check=net.check_alive)
            tokens = EconomyDemo(net.settings(), data_dir.resolve(), wallets[0]) if economy else None
            if tokens is not None:
                tokens.before_jobs(CreditLedger(client.ledger.engine).create_key("demo app")[0])
            if secret is not None:
                results = _run_private(secret, client, prompt, max_tokens, timeout)
            else:
                results = client.map(_requests(image_jobs, text_jobs, max_tokens), timeout=timeout, progress=True)
            audits = AuditLedger(client.ledger.engine)
            if audit_rate == 1.0:
                _wait_for_audits(net, audits, results, timeout)
            saved = _save(client, results, output)
            if tokens is not None:
                report = tokens.after_jobs()
            summary = _summary(client, audits, results, saved, output, time.monotonic() - started)
            if secret is not None:
                summary.update(private_summary(results, saved))
    _print_tables(summary, results, saved, err_console if json_out else console)
    if private:
        show_private(summary, err_console if json_out else console)
    if tokens is not None and report is not None:
        summary.update(_economy_summary(report, tokens, summary, err_console if json_out else console))
    if json_out:
        print_json(summary)


def _economy_summary(report: dict[str, Any], tokens: EconomyDemo, summary: dict[str, object],
                     out: Console) -> dict[str, object]:
    """Print the epoch's rewards and how to get a proof; the keys the JSON line ends with."""
    show_report(report, out)
    staker = tokens.staker.address
    out.print(f"addresses: {tokens.addresses()}")
    env = f"HEURIST_DATABASE_URL={summary['ledger']} HEURIST_EPOCH_S={tokens.economy.rules.epoch_s}"
    out.print(f"a proof: `{env} heurist proof {staker} --epoch {report['epoch']} --json`", soft_wrap=True)
    out.print(f"stakers' view: `{env} heurist nodes`; the report again: `{env} heurist epoch report "
              f"{report['epoch']}`", soft_wrap=True)
    return {"epoch": report["epoch"], "merkle_root": report["merkle_root"], "issued": report["issued"],
            "burned": report["burned"], "payouts": report["payouts"], "economy": tokens.addresses()}


def _start_public(net: EmbeddedNetwork) -> Wallet:
    """The plain demo's honest miner and its auditor."""
    wallet = net.start_miner(name="honest")
    net.start_auditor()
    return wallet


def _run_private(secret: PrivateDemo, client: Client, prompt: str, max_tokens: int, timeout: float) -> list[JobResult]:
    secret.approve(client.ledger.engine)
    with err_console.status("private jobs: sealing, key release, running, decrypting"):
        return secret.run(client, prompt, max_tokens, timeout)


def cheater_models(cheat: str) -> list[str]:
    """The models a cheater serves: those its cheat applies to (an unknown cheat is a clear error)."""
    from workers.testing.cheats import CHEATS  # torch-free

    spec = CHEATS.get(cheat)
    if spec is None:
        raise ConfigError(f"--cheat: unknown cheat {cheat!r}; one of {', '.join(CHEATS)}")
    return [m for m, kind in (("tiny-sd", JobKind.IMAGE), ("smollm2-135m", JobKind.TEXT)) if spec.kind in (None, kind)]


def say_restart(line: str) -> None:
    """One line on stderr when the network's supervisor restarts a child (or gives up on one)."""
    err_console.print(f"[yellow]supervisor:[/] {line}", soft_wrap=True, highlight=False)


def _describe_output(path: str | None) -> str | None:
    """The file name, and for a text answer its first words."""
    if path is None:
        return None
    if path.endswith(".txt"):
        answer = Path(path).read_text().strip()
        return f"{Path(path).name}: {answer[:60]}{'…' if len(answer) > 60 else ''}"
    return Path(path).name


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _wait_for_audits(net: EmbeddedNetwork, audits: AuditLedger, results: list[JobResult], timeout: float) -> None:
    """With every job sampled, wait until the auditor has a verdict on each credited one."""
    miners = {r.miner for r in results if r.miner}
    credited = sum(r.state.has_output for r in results)

    def done() -> bool:
        return sum(audits.standing(m).audited for m in miners) >= credited

    with err_console.status(f"auditor: replaying {credited} jobs"):
        wait_until(done, timeout, "the audits", check=net.check_alive)


def _requests(image_jobs: int, text_jobs: int, max_tokens: int) -> list[ImageRequest | TextRequest]:
    images: list[ImageRequest | TextRequest] = [
        ImageRequest(IMAGE_PROMPTS[i % len(IMAGE_PROMPTS)], "tiny-sd", seed=i) for i in range(image_jobs)
    ]
    texts = [TextRequest(TEXT_PROMPTS[i % len(TEXT_PROMPTS)], "smollm2-135m", max_tokens=max_tokens)
             for i in range(text_jobs)]
    return images + texts


def _save(client: Client, results: list[JobResult], output: Path) -> dict[str, str]:
    """Download every output under ``output``; text answers are also written as plain .txt.

    Returns job id -> saved file (for a text job, the .txt holding the answer).
    """
    output.mkdir(parents=True, exist_ok=True)
    saved: dict[str, str] = {}
    for result in results:
        if not result.state.has_output:
            continue
        data = client.fetch_output(result)
        path = output / Path(result.output_key).name
        path.write_bytes(data)
        if path.suffix == ".json":
            path = path.with_suffix(".txt")
            path.write_text(json.loads(data)["text"] + "\n")
        saved[result.job_id] = str(path)
    return saved


def _summary(client: Client, audits: AuditLedger, results: list[JobResult], saved: dict[str, str], output: Path,
             elapsed: float) -> dict[str, object]:
    jobs = {m.address: m.jobs for m in client.ledger.miner_points()}
    report = audit_report(audits)
    miners = [{**m.as_dict(), "jobs": jobs.get(m.address, 0)} for m in report]
    return {
        "jobs": len(results),
        "completed": sum(r.state.has_output for r in results),
        "failed": sum(not r.state.has_output for r in results),
        "points_total": round(sum(m.points for m in report), 6),  # after audits: clawbacks count
        "miners": miners,
        "outputs": str(output),
        "ledger": redacted(client.settings.resolved_database_url()),
        "elapsed_s": round(elapsed, 1),
        "results": [{"job_id": r.job_id, "model": r.model_id, "state": r.state.value, "points": r.points,
                     "miner": r.miner, "file": saved.get(r.job_id)} for r in results],
    }


def _print_tables(summary: dict[str, object], results: list[JobResult], saved: dict[str, str],
                  out: Console) -> None:
    jobs = Table("job", "model", "state", "points", "miner", "output", title="jobs")
    for r in results:
        jobs.add_row(r.job_id[:8], r.model_id, r.state.value, f"{r.points:.6f}", (r.miner or "-")[:12],
                     _describe_output(saved.get(r.job_id)) or r.error or "-")
    miners = Table("miner", "jobs", "points", "escrowed", "audits ok/failed", "flagged", title="miners")
    for m in summary["miners"]:  # type: ignore[attr-defined]
        miners.add_row(m["address"], str(m["jobs"]), f"{m['points']:.6f}", f"{m['escrowed']:.6f}",
                       f"{m['audits_passed']}/{m['audits_failed']}", "[red]yes[/]" if m["flagged"] else "no")
    out.print(jobs, miners)
    out.print(f"{summary['completed']}/{summary['jobs']} jobs completed, "
                      f"{summary['points_total']:.6f} points, outputs in {summary['outputs']}/ "
                      f"({summary['elapsed_s']}s)")
    out.print(f"the ledger stays in {summary['ledger']}: `HEURIST_DATABASE_URL={summary['ledger']} heurist points`")
