"""docker/: the compose files validate (`docker-compose config`, no engine needed), every service's command is a
real `heurist` command with options it accepts, every HEURIST_* variable is a Settings field, the miner gets no
trusted secret, and every long-running service restarts and has a health check (the workers' reads their
liveness file). Also the systemd units of docs/operators.md: `systemd-analyze verify` passes them and each
ExecStart is a `heurist` command whose options exist."""

from __future__ import annotations

import configparser
import os
import re
import shutil
import subprocess
import sys
import time
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
RESTARTING = {"always", "unless-stopped", "on-failure"}
WORKERS = {"ledger", "auditor", "miner"}  # Celery workers: no HTTP, so their health is a liveness file
OPERATORS = ROOT / "docs" / "operators.md"
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


def _heurist_help(path: list[str], options: dict[str, str | None], where: str) -> str:
    """``heurist <path> <options> --help``: exits 0 and lists every option (a typo fails here, not in production)."""
    shown = CliRunner().invoke(app, [*path, *[a for kv in options.items() for a in kv if a], "--help"],
                               env={"COLUMNS": "200", "TERMINAL_WIDTH": "200"})
    assert shown.exit_code == 0, f"{where}: heurist {' '.join(path)}: {shown.output}"
    for option in options:
        assert option in shown.output, f"{where}: heurist {' '.join(path)} has no {option}"
    return shown.output


def test_every_long_running_service_restarts_and_has_a_health_check(resolved: dict[str, dict[str, Any]]) -> None:
    for file, config in resolved.items():
        services = config["services"]
        conditions = {(dep, cond.get("condition")) for svc in services.values()
                      for dep, cond in (svc.get("depends_on") or {}).items()}
        assert {c for _, c in conditions} <= {"service_healthy", "service_completed_successfully"}, file
        for name, svc in services.items():
            if svc.get("restart") == "no":  # a one-shot step (migrate, broker setup) that others wait for
                assert (name, "service_completed_successfully") in conditions, f"{file}: {name} runs once for nobody"
                continue
            assert svc.get("restart") in RESTARTING, f"{file}: {name} has no restart policy"
            check = svc.get("healthcheck") or {}
            assert check.get("test") and not check.get("disable"), f"{file}: {name} has no health check"
            assert check["test"][0] in ("CMD", "CMD-SHELL") and check.get("interval"), f"{file}: {name}"
            if name in WORKERS:
                assert check["test"] == ["CMD", "python", "-m", "heurist.liveness"], f"{file}: {name}"
                assert svc["environment"]["HEURIST_LIVENESS_FILE"], f"{file}: {name} touches no liveness file"
        for name, _ in conditions:
            assert name in services, f"{file}: depends on unknown {name}"
    assert {"ledger", "auditor", "miner"} <= set(resolved["compose.yaml"]["services"])


def test_the_workers_health_check_command_reads_the_liveness_file(tmp_path: Path) -> None:
    """What the workers' health check runs, on this machine: fresh passes, stale or missing fails, naming why."""
    alive = tmp_path / "heurist.alive"
    env = {k: v for k, v in os.environ.items() if not k.startswith("HEURIST_")}
    env["HEURIST_LIVENESS_FILE"] = str(alive)

    def check() -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "heurist.liveness"], env=env, capture_output=True, text=True,
                              timeout=60)

    missing = check()
    assert missing.returncode == 1 and "no liveness file" in missing.stderr
    alive.touch()
    assert check().returncode == 0
    old = time.time() - 61
    os.utime(alive, (old, old))
    stale = check()
    assert stale.returncode == 1 and re.search(r"is 6[1-9]s old \(> 60s\)", stale.stderr)  # 61 s, + a slow start


def _units() -> dict[str, str]:
    """The systemd units in docs/operators.md: ```ini blocks whose first line names /etc/systemd/system/…"""
    units = {}
    for block in re.findall(r"```ini\n(.*?)```", OPERATORS.read_text(), re.S):
        first = block.splitlines()[0]
        if first.startswith("# /etc/systemd/system/"):
            units[first.rsplit("/", 1)[1]] = block
    return units


def _parse(text: str) -> configparser.RawConfigParser:
    unit = configparser.RawConfigParser(strict=False, delimiters=("=",), comment_prefixes=("#",))
    unit.optionxform = str  # type: ignore[assignment,method-assign]  # systemd keys are case-sensitive
    unit.read_string(text)
    return unit


def test_the_systemd_units_restart_stop_warmly_and_run_real_heurist_commands() -> None:
    units = _units()
    assert {"heurist-miner.service", "heurist-ledger.service", "heurist-auditor.service"} <= set(units)
    for name, text in units.items():
        unit = _parse(text)
        service = unit["Service"]
        assert service["Restart"] == "always" and int(service["RestartSec"]) >= 1, name
        assert unit["Unit"]["StartLimitIntervalSec"] == "0", f"{name}: systemd gives up after 5 quick restarts"
        assert service["KillSignal"] == "SIGTERM" and service["KillMode"] == "mixed", name
        stop = service["TimeoutStopSec"]
        stop_s = int(stop[:-3]) * 60 if stop.endswith("min") else int(stop)
        assert stop_s >= 120, f"{name}: TimeoutStopSec {stop} cuts a warm shutdown short"
        assert service["EnvironmentFile"].startswith("/etc/heurist/") and service["User"] == "heurist", name
        for hardening in ("NoNewPrivileges", "ProtectHome", "PrivateTmp", "RestrictSUIDSGID"):
            assert service[hardening] == "yes", f"{name}: {hardening}"
        assert service["ProtectSystem"] == "strict", name
        assert unit["Install"]["WantedBy"] == "multi-user.target", name
        exe, *argv = service["ExecStart"].split()
        assert exe == "/opt/heurist/bin/heurist", name
        path, options = _split(argv)
        assert path[0] == name.removeprefix("heurist-").removesuffix(".service"), name
        _heurist_help(path, options, name)
        if "--models" in options:
            assert set(str(options["--models"]).split(",")) <= set(load_catalog(None)), name


def test_systemd_analyze_verifies_the_units(tmp_path: Path) -> None:
    exe = shutil.which("systemd-analyze")
    if exe is None:
        pytest.skip("systemd-analyze is not installed")
    heurist = Path(sys.executable).with_name("heurist")  # the units' /opt/heurist/bin/heurist, here
    for name, text in _units().items():
        unit = tmp_path / name
        unit.write_text(text.replace("/opt/heurist/bin/heurist", str(heurist)))
        done = subprocess.run([exe, "verify", str(unit)], capture_output=True, text=True, timeout=60)
        problems = [line for line in (done.stdout + done.stderr).splitlines()
                    if str(unit) in line or "Unknown" in line or "rror" in line]
        assert done.returncode == 0 and not problems, f"{name}: {done.stdout}{done.stderr}"
