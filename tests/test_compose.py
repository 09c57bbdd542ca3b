"""docker/: the compose files validate (`docker-compose config`, no engine needed), every service's command is a
real `heurist` command with options it accepts, every HEURIST_* variable is a Settings field, and the miner
gets no trusted secret."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from heurist.catalog import load_catalog
from heurist.cli.main import app
from heurist.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
DOCKER = ROOT / "docker"
COMPOSE_FILES = ("compose.yaml", "compose.miner.yaml")
OUR_IMAGES = {"heurist:local": "Dockerfile", "heurist-miner:local": "Dockerfile.miner"}
TRUSTED_ONLY = {"HEURIST_DATABASE_URL", "HEURIST_S3_ACCESS_KEY", "HEURIST_S3_SECRET_KEY", "HEURIST_BROKER_ADMIN_URL",
                "HEURIST_DISPATCH_KEY"}


def _docker_compose() -> str:
    exe = shutil.which("docker-compose")
    if exe is None:
        reason = "docker-compose is not installed (`apt-get install -y docker-compose`, or `make services`)"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    return exe


def _env_file(tmp_path: Path, example: str) -> Path:
    """The example env file with every empty secret filled in, as an operator would."""
    lines = []
    for line in (DOCKER / example).read_text().splitlines():
        name, eq, value = line.partition("=")
        filled = not line.startswith("#") and eq and not value
        lines.append(f"{name}=test-{name.lower()}" if filled else line)
    path = tmp_path / f"{example}.env"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def resolved(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    """`docker-compose config` of each compose file: validated, interpolated, anchors expanded."""
    exe = _docker_compose()
    tmp = tmp_path_factory.mktemp("compose")
    out: dict[str, dict[str, Any]] = {}
    for name, example in (("compose.yaml", ".env.example"), ("compose.miner.yaml", "miner.env.example")):
        env = {k: v for k, v in os.environ.items() if not k.startswith(("HEURIST_", "COMPOSE_"))}
        done = subprocess.run([exe, "--env-file", str(_env_file(tmp, example)), "-f", str(DOCKER / name), "config"],
                              capture_output=True, text=True, env=env, timeout=60)
        assert done.returncode == 0, f"{name}: {done.stderr}"
        out[name] = yaml.safe_load(done.stdout)
    return out


def _heurist_services(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {name: svc for name, svc in config["services"].items() if svc.get("image") in OUR_IMAGES}


def _split(argv: list[str]) -> tuple[list[str], dict[str, str | None]]:
    """``["db", "upgrade"]`` and ``{"--port": "8000"}`` from a command line (every option here takes a value
    unless followed by another option or nothing)."""
    path = []
    while argv and not argv[0].startswith("-"):
        path.append(argv.pop(0))
    options: dict[str, str | None] = {}
    while argv:
        flag = argv.pop(0)
        assert flag.startswith("--"), f"unexpected argument {flag!r} after options"
        options[flag] = argv.pop(0) if argv and not argv[0].startswith("-") else None
    return path, options


def test_compose_files_validate(resolved: dict[str, dict[str, Any]]) -> None:
    services = set(resolved["compose.yaml"]["services"])
    assert {"rabbitmq", "postgres", "s3", "migrate", "ledger", "auditor", "gateway", "exporter", "flower",
            "miner"} <= services
    for config in resolved.values():
        miner = config["services"]["miner"]
        (device,) = miner["deploy"]["resources"]["reservations"]["devices"]
        assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]


def test_every_service_command_is_a_heurist_command_it_accepts(resolved: dict[str, dict[str, Any]]) -> None:
    for dockerfile in OUR_IMAGES.values():
        text = (DOCKER / dockerfile).read_text()
        assert 'ENTRYPOINT ["heurist"]' in text, dockerfile
        for source in re.findall(r"^COPY (.+) \S+$", text, re.M):
            for part in source.split():
                assert (ROOT / part).exists(), f"{dockerfile} copies {part}, which is not in the repository"
    catalog = load_catalog(None)
    runner = CliRunner()
    checked = 0
    for config in resolved.values():
        for name, svc in _heurist_services(config).items():
            path, options = _split(list(svc["command"]))
            shown = runner.invoke(app, [*path, *[a for kv in options.items() for a in kv if a], "--help"],
                                  env={"COLUMNS": "200", "TERMINAL_WIDTH": "200"})
            assert shown.exit_code == 0, f"{name}: heurist {' '.join(path)}: {shown.output}"
            for option, value in options.items():
                assert option in shown.output, f"{name}: heurist {' '.join(path)} has no {option}"
                if option == "--models":
                    assert set(value.split(",")) <= set(catalog), f"{name}: unknown model in {value}"  # type: ignore[union-attr]
            checked += 1
    assert checked >= 8


def test_every_heurist_variable_is_a_setting_and_miners_get_no_secret(resolved: dict[str, dict[str, Any]]) -> None:
    fields = {f"HEURIST_{name.upper()}" for name in Settings.model_fields}
    for config in resolved.values():
        for name, svc in config["services"].items():
            used = {k for k in svc.get("environment", {}) if k.startswith("HEURIST_")}
            assert used <= fields, f"{name}: not a setting: {sorted(used - fields)}"
        miner_env = set(config["services"]["miner"]["environment"])
        assert not miner_env & TRUSTED_ONLY, f"the miner must not hold {sorted(miner_env & TRUSTED_ONLY)}"
        assert "HEURIST_BROKER_URL" in miner_env
        assert {"HEURIST_DISPATCH_ADDRESS", "HEURIST_S3_ENDPOINT"} <= miner_env  # a miner refuses to start without
    flower = resolved["compose.yaml"]["services"]["flower"]["environment"]
    assert flower["HEURIST_FLOWER_PASSWORD"] and "HEURIST_DATABASE_URL" not in flower


def test_compose_refuses_to_run_without_the_secrets(tmp_path: Path) -> None:
    exe = _docker_compose()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HEURIST_", "COMPOSE_"))}
    empty = tmp_path / "empty.env"
    empty.write_text("")
    done = subprocess.run([exe, "--env-file", str(empty), "-f", str(DOCKER / "compose.yaml"), "config"],
                          capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode != 0
    assert "PASSWORD in docker/.env" in done.stderr or "S3_SECRET_KEY in docker/.env" in done.stderr
