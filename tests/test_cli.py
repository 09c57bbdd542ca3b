"""The `heurist` command as people use it: help that explains, clear errors, no tracebacks."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

HEURIST = [sys.executable, "-m", "heurist.cli.main"]


def run(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("HEURIST_")}
    return subprocess.run([*HEURIST, *args], capture_output=True, text=True, timeout=timeout,
                          env={**base, "COLUMNS": "200", **(env or {})})


def test_help_lists_every_command() -> None:
    done = run("--help")
    assert done.returncode == 0
    for command in ("routes", "miner", "ledger", "points", "submit", "wallet", "demo", "models", "db"):
        assert command in done.stdout


def test_routes_prints_the_queue_table() -> None:
    done = run("routes")
    assert done.returncode == 0
    for queue in ("vram8.sd15", "vram12.sdxl", "vram24.mixtral-8x7b", "vram8.smollm2-135m", "vram8.tiny-sd"):
        assert queue in done.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["image", "a cat", "--model", "sd3"], "unknown model 'sd3'"),
        (["image", "a cat", "--model", "sd15", "--width", "2048"], "width=2048 is outside 64..1024"),
        (["image", "a cat", "--model", "sd15", "--steps", "500"], "steps=500 is outside 1..100"),
        (["image", "a cat", "--model", "smollm2-135m"], "makes texts"),
        (["text", "hi", "--model", "smollm2-135m", "--max-tokens", "100000"], "max_tokens=100000"),
    ],
)
def test_bad_submissions_fail_clearly_and_touch_nothing(tmp_path: Path, args: list[str], message: str) -> None:
    # Broker, database and S3 point nowhere: validation must fail before any of them is used.
    env = {"HEURIST_BROKER_URL": "amqp://guest:guest@127.0.0.1:1//",
           "HEURIST_DATABASE_URL": f"sqlite:///{tmp_path}/never.sqlite", "HEURIST_S3_ENDPOINT": "http://127.0.0.1:1"}
    done = run("submit", *args, env=env)
    assert done.returncode == 2, done.stderr
    assert message in done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "never.sqlite").exists()


def test_wallet_new_and_address(tmp_path: Path) -> None:
    key = tmp_path / "miner.key"
    made = run("wallet", "new", "--out", str(key))
    assert made.returncode == 0 and "address 0x" in made.stdout
    shown = run("wallet", "address", "--key-file", str(key))
    assert shown.stdout.strip() in made.stdout
    again = run("wallet", "new", "--out", str(key))
    assert again.returncode == 2 and "already exists" in again.stderr


def test_miner_without_key_says_how_to_get_one() -> None:
    done = run("miner", "--models", "tiny-sd")
    assert done.returncode == 2 and "heurist wallet new" in done.stderr


def test_miner_refuses_models_it_cannot_fit(tmp_path: Path) -> None:
    key = tmp_path / "k"
    run("wallet", "new", "--out", str(key))
    done = run("miner", "--key-file", str(key), "--models", "sdxl", "--vram", "8",
               env={"HEURIST_BROKER_URL": f"embedded+sqlite:///{tmp_path}/b.sqlite"})
    assert done.returncode == 2 and "sdxl needs vram12" in done.stderr


def test_miner_refuses_a_tampered_model_before_loading(tmp_path: Path, shared_models_dir: Path) -> None:
    import shutil

    models = tmp_path / "models"
    shutil.copytree(shared_models_dir, models)
    weights = next((models / "tiny-sd" / "unet").glob("*.safetensors"))
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    key = tmp_path / "k"
    run("wallet", "new", "--out", str(key))
    done = run("miner", "--key-file", str(key), "--models", "tiny-sd", "--device", "cpu",
               env={"HEURIST_BROKER_URL": f"embedded+sqlite:///{tmp_path}/b.sqlite", "HEURIST_MODELS_DIR": str(models)})
    assert done.returncode == 2, done.stderr
    assert "sha256" in done.stderr and "unet" in done.stderr
    assert "Traceback" not in done.stderr


def test_miner_without_the_dispatch_address_says_where_to_get_it(tmp_path: Path, shared_models_dir: Path) -> None:
    """A miner that cannot check job signatures would obey anyone: it refuses to serve, naming the setting."""
    key = tmp_path / "k"
    run("wallet", "new", "--out", str(key))
    done = run("miner", "--key-file", str(key), "--models", "tiny-sd", "--device", "cpu",
               env={"HEURIST_BROKER_URL": f"embedded+sqlite:///{tmp_path}/b.sqlite",
                    "HEURIST_MODELS_DIR": str(shared_models_dir), "HEURIST_S3_ENDPOINT": "http://127.0.0.1:1"})
    assert done.returncode == 2, done.stderr
    assert "HEURIST_DISPATCH_ADDRESS is not set" in done.stderr and "add-miner" in done.stderr
    assert "Traceback" not in done.stderr


def test_printed_urls_hide_passwords() -> None:
    from heurist.cli.common import redacted

    assert redacted("postgresql+psycopg://u:secret@h/db") == "postgresql+psycopg://u:***@h/db"
    assert "secret" not in redacted("amqp://guest:secret@h:5672/v")


def test_points_on_an_empty_ledger_needs_no_storage(tmp_path: Path) -> None:
    done = run("points", env={"HEURIST_DATABASE_URL": f"sqlite:///{tmp_path}/l.sqlite"})
    assert done.returncode == 0, done.stderr
    assert "no miners yet" in done.stdout


@pytest.mark.parametrize(("args", "message"), [
    (["audit", "report", "--bogus"], "No such option: --bogus"),
    (["submit", "image"], "Missing argument"),
    (["demo", "--with-cheater", "--cheat", "nope"], "--cheat: unknown cheat 'nope'"),
])
def test_usage_errors_are_one_message_not_a_traceback(args: list[str], message: str) -> None:
    done = run(*args)
    assert done.returncode == 2 and message in done.stderr and "Traceback" not in done.stderr, done.stderr


def test_a_bad_setting_is_named_not_a_traceback(tmp_path: Path) -> None:
    done = run("points", env={"HEURIST_DATABASE_URL": f"sqlite:///{tmp_path}/l.sqlite",
                              "HEURIST_SETTLEMENT_CHAIN_ID": "abc"})
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert "HEURIST_SETTLEMENT_CHAIN_ID='abc': Input should be a valid integer" in done.stderr, done.stderr


@pytest.mark.parametrize("command", [["gateway", "--port", "1"], ["ledger"]])
def test_trusted_roles_without_s3_keys_stop_at_start(tmp_path: Path, command: list[str]) -> None:
    # No default keys: a gateway or ledger given an S3 endpoint but no keys names both settings and exits.
    env = {"HEURIST_S3_ENDPOINT": "http://127.0.0.1:1", "HEURIST_DATA_DIR": str(tmp_path),
           "HEURIST_BROKER_URL": "amqp://guest:guest@127.0.0.1:1//"}
    done = run(*command, env=env, timeout=60)
    assert done.returncode == 2, done.stderr
    assert "HEURIST_S3_ACCESS_KEY and HEURIST_S3_SECRET_KEY not set" in done.stderr
    assert "Traceback" not in done.stderr
