"""`heurist bench models` and `heurist bench audit`: real models timed, coefficients written into a catalog copy.

Timings are noisy on a shared 2-core box, so only what holds by construction is asserted: the reference
against itself is exactly 1.0, a byte-identical twin lands within 2x, a re-render costs about a render.
Timing runs use one torch thread: two threads on a busy 2-core machine slow down erratically.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from datetime import date
from importlib import resources
from pathlib import Path
from typing import Any

import pytest

from heurist.bench.models import Timing, conclude
from heurist.catalog import load_catalog
from heurist.catalog.loader import parse_catalog_text
from heurist.catalog.lock import read_lock, record_hashes
from heurist.catalog.schema import Benchmark
from heurist.catalog.writer import CatalogUpdate, apply_updates
from heurist.errors import CatalogError

HEURIST = [sys.executable, "-m", "heurist.cli.main"]
SHIPPED = resources.files("heurist.catalog").joinpath("models.toml").read_text()
BENCHMARK_BLOCK = re.compile(r"\n\[\[models\.[a-z0-9.-]+\.benchmarks\]\]\n(?:[^\n]+\n)*")


def heurist(*args: str, env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("HEURIST_")}
    return subprocess.run([*HEURIST, *args], capture_output=True, text=True, timeout=timeout,
                          env={**base, "COLUMNS": "200", **env})


def last_json(done: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


@pytest.fixture
def env(tmp_path: Path, shared_models_dir: Path) -> dict[str, str]:
    return {"HEURIST_DATA_DIR": str(tmp_path / "data"), "HEURIST_MODELS_DIR": str(shared_models_dir)}


@pytest.fixture(scope="module")
def first_run(tmp_path_factory: pytest.TempPathFactory, shared_models_dir: Path) -> tuple[dict[str, Any], Path]:
    """tiny-sd timed once on a box without sd15, written to a new catalog file."""
    out = tmp_path_factory.mktemp("bench") / "catalog.toml"
    done = heurist("bench", "models", "--models", "tiny-sd", "--json", "--output", str(out), "--repeat", "1",
                   "--threads", "1", env={"HEURIST_MODELS_DIR": str(shared_models_dir),
                                          "HEURIST_DATA_DIR": str(out.parent / "data")})
    return last_json(done), out


@pytest.mark.slow  # a real benchmark run: 20-30 s each (`make test-slow`)
def test_without_the_family_reference_the_stated_coefficient_stays(first_run: tuple[dict[str, Any], Path]) -> None:
    result, out = first_run
    tiny = result["models"]["tiny-sd"]
    assert result["device_kind"] == "cpu" and result["device"].startswith("cpu: ") and "x1 threads" in result["device"]
    assert result["written"] is True and result["catalog"] == str(out.resolve())
    assert tiny["seconds_per_unit"] > 0 and tiny["units"] == 64 * 64 / 512**2
    assert tiny["coefficient_measured"] is False and tiny["family_reference_seconds_per_unit"] is None
    assert "sd15 not on this machine" in tiny["note"] and "0.01" in tiny["note"]
    spec = load_catalog(out)["tiny-sd"]
    shipped = load_catalog()["tiny-sd"]
    assert spec.coefficient == shipped.coefficient and spec.coefficient_source == shipped.coefficient_source
    [bench] = spec.benchmarks
    assert bench.date == date.today().isoformat() and bench.device_kind == "cpu" and bench.device == result["device"]
    assert bench.seconds_per_unit == tiny["seconds_per_unit"] and bench.family_reference == "sd15"
    assert spec.benchmark_for("cpu") == bench and spec.benchmark_for("cuda") is None


@pytest.mark.slow  # a real benchmark run: 20-30 s each (`make test-slow`)
def test_written_catalog_keeps_the_shipped_text_and_comments(first_run: tuple[dict[str, Any], Path]) -> None:
    written = first_run[1].read_text()
    assert "# The public model catalog" in written and "[units]" in written
    assert BENCHMARK_BLOCK.sub("", written).rstrip() == SHIPPED.rstrip()  # only the benchmark entry was added


@pytest.mark.slow  # a real benchmark run: 20-30 s each (`make test-slow`)
def test_a_second_run_on_the_same_device_replaces_its_entry(first_run: tuple[dict[str, Any], Path],
                                                            tmp_path: Path, env: dict[str, str]) -> None:
    catalog = tmp_path / "in-use.toml"
    shutil.copy(first_run[1], catalog)
    # no --output: the catalog in use (HEURIST_CATALOG_PATH) is updated in place
    again = last_json(heurist("bench", "models", "--models", "tiny-sd", "--json", "--repeat", "1", "--threads", "1",
                              env=env | {"HEURIST_CATALOG_PATH": str(catalog)}))
    assert again["catalog"] == str(catalog.resolve())
    [bench] = load_catalog(catalog)["tiny-sd"].benchmarks
    assert bench.device == first_run[0]["device"]
    assert bench.seconds_per_unit == again["models"]["tiny-sd"]["seconds_per_unit"]


def twin_catalog(directory: Path) -> Path:
    """The shipped catalog with tiny-sd as the image unit and tiny-sd-b, a byte-identical copy of tiny-sd.

    Both reference jobs are 10 steps (half the shipped default) to keep the test short.
    """
    text = SHIPPED.replace('image_reference = "sd15"', 'image_reference = "tiny-sd"')
    text = text.replace("default_height = 64, max_steps = 50, default_steps = 20",
                        "default_height = 64, max_steps = 50, default_steps = 10")
    assert "default_steps = 10" in text
    entry = text[text.index("[models.tiny-sd]"):].split("\n\n")[0]
    path = directory / "twin.toml"
    path.write_text(text.rstrip("\n") + "\n\n" + entry.replace("[models.tiny-sd]", "[models.tiny-sd-b]") + "\n")
    return path


def twin_models_dir(directory: Path, shared_models_dir: Path) -> Path:
    hashes = read_lock(shared_models_dir)["tiny-sd"]
    for model_id in ("tiny-sd", "tiny-sd-b"):
        shutil.copytree(shared_models_dir / "tiny-sd", directory / model_id)
        record_hashes(directory, model_id, hashes)
    return directory


@pytest.mark.slow  # a real benchmark run: 20-30 s each (`make test-slow`)
def test_coefficients_are_measured_against_the_reference_in_the_same_run(tmp_path: Path,
                                                                         shared_models_dir: Path) -> None:
    catalog = twin_catalog(tmp_path)
    assert load_catalog(catalog).units.image_reference == "tiny-sd"
    out = tmp_path / "out" / "catalog.toml"
    env = {"HEURIST_CATALOG_PATH": str(catalog), "HEURIST_DATA_DIR": str(tmp_path / "data"),
           "HEURIST_MODELS_DIR": str(twin_models_dir(tmp_path / "models", shared_models_dir))}
    result = last_json(heurist("bench", "models", "--models", "tiny-sd,tiny-sd-b", "--json", "--output", str(out),
                               "--repeat", "3", "--threads", "1", env=env))
    ref, twin = result["models"]["tiny-sd"], result["models"]["tiny-sd-b"]
    assert ref["units"] == twin["units"] == 64 * 64 / 512**2 * 10 / 20
    assert ref["coefficient"] == 1.0 and ref["coefficient_measured"] is True
    assert ref["family_reference_seconds_per_unit"] == ref["seconds_per_unit"]
    assert twin["coefficient_measured"] is True and 0.5 <= twin["coefficient"] <= 2.0, twin
    assert twin["family_reference_seconds_per_unit"] == ref["seconds_per_unit"]
    written = load_catalog(out)
    assert written["tiny-sd"].coefficient == 1.0 and written["tiny-sd-b"].coefficient == twin["coefficient"]
    assert written["tiny-sd-b"].coefficient_source.startswith("heurist bench models on cpu: ")
    assert written["tiny-sd-b"].benchmarks[0].family_reference == "tiny-sd"
    assert load_catalog(catalog)["tiny-sd-b"].benchmarks == []  # the catalog in use was copied, not edited


@pytest.mark.slow  # a real benchmark run: 20-30 s each (`make test-slow`)
def test_bench_audit_images_cost_about_a_render(env: dict[str, str]) -> None:
    result = last_json(heurist("bench", "audit", "--models", "tiny-sd", "--json", "--repeat", "1", "--threads", "1",
                               env=env))
    tiny = result["models"]["tiny-sd"]
    assert tiny["kind"] == "image" and tiny["generate_s"] > 0 and tiny["audit_s"] > 0 and tiny["replay_passed"]
    assert result["audit_cost_ratio"]["image"] == tiny["audit_cost_ratio"] > 0.5
    assert result["audit_cost_ratio"]["text"] is None


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--models", "sd3"], "unknown model 'sd3'"),
        (["--models", "tiny-sd", "--output", "{tmp}/a-file/catalog.toml"], "cannot write the catalog"),
        (["--models", "tiny-sd", "--output", "{package}/catalog/bench.toml"], "inside the installed heurist package"),
        (["--models", "sd15", "--dry-run"], "sd15 is not on this machine"),
    ],
)
def test_bench_models_errors_are_one_clear_line(tmp_path: Path, env: dict[str, str], args: list[str],
                                                message: str) -> None:
    (tmp_path / "a-file").write_text("not a directory")
    package = Path(resources.files("heurist").joinpath("__init__.py")).parent  # type: ignore[arg-type]
    args = [a.format(tmp=tmp_path, package=package) for a in args]
    done = heurist("bench", "models", *args, env=env | {"HF_HOME": str(tmp_path / "hf")})
    assert done.returncode == 2, done.stderr[-2000:]
    assert message in done.stderr and "Traceback" not in done.stderr
    assert not (package / "catalog" / "bench.toml").exists()


def cpu_bench(seconds_per_unit: float, measured: bool) -> Benchmark:
    return Benchmark(device="cpu: test x1 threads", device_kind="cpu", date="2026-01-02",
                     seconds_per_unit=seconds_per_unit, reference_job="64x64, 20 steps", family_reference="sd15",
                     family_reference_seconds_per_unit=1.0 if measured else None)


def test_apply_updates_replaces_per_device_and_round_trips() -> None:
    cuda = cpu_bench(0.5, True).model_copy(update={"device": "cuda: NVIDIA A100 80GB", "device_kind": "cuda"})
    first = apply_updates(SHIPPED, [CatalogUpdate("sdxl", cpu_bench(40.0, True), 3.1, "run 1"),
                                    CatalogUpdate("sdxl", cuda)], "test.toml")
    second = apply_updates(first, [CatalogUpdate("sdxl", cpu_bench(30.0, True), 3.2, "run 2")], "test.toml")
    sdxl = parse_catalog_text(second, "test.toml")["sdxl"]
    assert [b.device for b in sdxl.benchmarks] == ["cpu: test x1 threads", "cuda: NVIDIA A100 80GB"]
    assert sdxl.benchmarks[0].seconds_per_unit == 30.0 and sdxl.benchmarks[0].note == ""
    assert (sdxl.coefficient, sdxl.coefficient_source) == (3.2, "run 2")
    assert sdxl.benchmark_for("cuda") == cuda and sdxl.benchmark_for("cpu") == sdxl.benchmarks[0]
    assert apply_updates(second, [CatalogUpdate("sdxl", cpu_bench(30.0, True), 3.2, "run 2")], "t") == second
    with pytest.raises(CatalogError, match=r"no \[models.sd3\] table"):
        apply_updates(SHIPPED, [CatalogUpdate("sd3", cpu_bench(1.0, False))], "test.toml")


def test_a_cpu_run_keeps_a_coefficient_measured_on_cuda() -> None:
    gpu = cpu_bench(0.2, True).model_copy(update={"device": "cuda: NVIDIA L4", "device_kind": "cuda"})
    text = apply_updates(SHIPPED, [CatalogUpdate("sdxl", gpu, 3.4, "heurist bench models on cuda: NVIDIA L4")], "t")
    catalog = parse_catalog_text(text, "t")
    timings = {"sdxl": Timing("sdxl", "1024x1024, 30 steps", 6.0, (60.0,)),
               "sd15": Timing("sd15", "512x512, 20 steps", 1.0, (2.0,))}
    run = {r.timing.model_id: r for r in conclude(catalog, timings, "cpu: test x1 threads", "cpu", "2026-01-02",
                                                  1).results}
    assert run["sd15"].coefficient == 1.0 and run["sd15"].coefficient_measured
    assert run["sdxl"].coefficient == 3.4 and not run["sdxl"].coefficient_measured
    assert "cuda: NVIDIA L4" in run["sdxl"].benchmark.note
    kept = run["sdxl"].benchmark
    assert kept.seconds_per_unit == 10.0 and kept.family_reference_seconds_per_unit == 2.0
    on_cuda = {r.timing.model_id: r for r in conclude(catalog, timings, "cuda: NVIDIA L4", "cuda", "2026-01-02",
                                                      1).results}
    assert on_cuda["sdxl"].coefficient == 5.0 and on_cuda["sdxl"].coefficient_measured


@pytest.mark.parametrize(
    ("units", "message"),
    [
        ('image_reference = "smollm2-135m"', "image_reference = 'smollm2-135m' must name one of this catalog's image"),
        ('text_reference = "llama-70b"', "text_reference = 'llama-70b' must name one of this catalog's text"),
        ('pixels = "sd15"', "field 'pixels'"),
    ],
)
def test_units_must_name_catalog_models_of_their_kind(units: str, message: str) -> None:
    text = SHIPPED.replace('image_reference = "sd15"\ntext_reference = "mixtral-8x7b"', units)
    with pytest.raises(CatalogError, match=re.escape(message)):
        parse_catalog_text(text, "test.toml")


def test_units_default_to_sd15_and_mixtral_and_need_not_be_present() -> None:
    without_units = re.sub(r"\[units\]\n(?:[^\n]+\n)+", "", SHIPPED)
    assert parse_catalog_text(without_units, "t").units == load_catalog().units
    assert (load_catalog().units.image_reference, load_catalog().units.text_reference) == ("sd15", "mixtral-8x7b")
    only_tiny = "[models.tiny-sd]" + without_units.split("[models.tiny-sd]")[1]
    assert list(parse_catalog_text(only_tiny, "t")) == ["tiny-sd"]


@pytest.mark.slow
def test_smollm2_seconds_per_unit_and_text_audit_cost(tmp_path: Path, env: dict[str, str]) -> None:
    out = tmp_path / "catalog.toml"
    bench = last_json(heurist("bench", "models", "--models", "smollm2-135m", "--json", "--output", str(out),
                              "--repeat", "1", "--threads", "1", env=env))
    smol = bench["models"]["smollm2-135m"]
    print(f"\nsmollm2-135m: {smol['seconds_per_unit']} s/unit ({smol['reference_job']})")
    assert smol["seconds_per_unit"] > 0 and not smol["coefficient_measured"]
    assert "mixtral-8x7b not on this machine" in smol["note"]
    assert load_catalog(out)["smollm2-135m"].benchmarks[0].seconds_per_unit == smol["seconds_per_unit"]
    audit = last_json(heurist("bench", "audit", "--models", "smollm2-135m", "--json", "--repeat", "1",
                              "--threads", "1", env=env))
    print(f"text audit_cost_ratio: {audit['audit_cost_ratio']['text']}")
    assert audit["models"]["smollm2-135m"]["replay_passed"]
    assert 0 < audit["audit_cost_ratio"]["text"] < 0.5
