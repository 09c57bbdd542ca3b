"""GPU discovery, one miner worker per GPU, and the derived identity of each GPU's worker.

Everything here runs on a CPU box: the parser on real nvidia-smi output, the per-GPU plan from the shipped
catalog, and the supervisor for real (two child miners on RabbitMQ, pinned through a GPU inventory file,
running on the CPU). Tests marked ``gpu`` need CUDA and run on a miner with GPUs.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from heurist.access import broker_access
from heurist.catalog import load_catalog
from heurist.errors import ConfigError
from heurist.identity import Wallet, recover_signer
from heurist.processes import die_with_parent
from heurist.settings import Settings
from workers.miner.gpus import Gpu, discover_gpus, parse_nvidia_smi, probe_with_torch, select_gpus
from workers.miner.supervisor import child_env, plan_gpus, supervised_gpus

# `nvidia-smi --query-gpu=index,name,memory.total,uuid --format=csv,noheader,nounits` on real boxes.
MIXED_BOX = """\
0, NVIDIA GeForce RTX 3070, 8192, GPU-6b5c3a1e-0f6d-9a0e-3c1b-2f6c2c8e1d10
1, NVIDIA GeForce RTX 4090, 24564, GPU-3f0b1a8e-9d0c-2c43-5a1e-6f2b8c9d7e11
2, NVIDIA H100 80GB HBM3, 81559, GPU-a1b2c3d4-e5f6-7081-92a3-b4c5d6e7f812
"""
EIGHT_A100 = "\n".join(f"{i}, NVIDIA A100-SXM4-80GB, 81920, GPU-0000000{i}-aaaa-bbbb-cccc-dddddddddddd"
                       for i in range(8)) + "\n"


def test_parser_reads_several_gpus_of_mixed_sizes() -> None:
    gpus, warnings = parse_nvidia_smi(MIXED_BOX)
    assert warnings == []
    assert [(g.index, g.name, g.memory_mib) for g in gpus] == [
        (0, "NVIDIA GeForce RTX 3070", 8192), (1, "NVIDIA GeForce RTX 4090", 24564),
        (2, "NVIDIA H100 80GB HBM3", 81559)]
    assert [g.vram_gb for g in gpus] == [8.0, 24.0, 79.6]
    assert [g.nominal_vram_gb for g in gpus] == [8, 24, 80]  # an H100 reaches its own tier
    assert gpus[2].visible_id == "GPU-a1b2c3d4-e5f6-7081-92a3-b4c5d6e7f812"
    eight, _ = parse_nvidia_smi(EIGHT_A100)
    assert [g.index for g in eight] == list(range(8)) and {g.nominal_vram_gb for g in eight} == {80}


def test_parser_skips_malformed_lines_with_a_warning_naming_them() -> None:
    text = ("0, Tesla T4, 15360, GPU-11111111-2222-3333-4444-555555555555\n"
            "1, NVIDIA A10, [N/A], GPU-21111111-2222-3333-4444-555555555555\n"
            "No devices were found\n"
            "x, NVIDIA L4, 23034, GPU-31111111-2222-3333-4444-555555555555\n"
            "\n"
            "3, NVIDIA L4, 23034, [N/A]\n"
            "3, NVIDIA L4, 23034, [N/A]\n")
    gpus, warnings = parse_nvidia_smi(text)
    assert [(g.index, g.nominal_vram_gb, g.uuid, g.visible_id) for g in gpus] == [
        (0, 15, "GPU-11111111-2222-3333-4444-555555555555", "GPU-11111111-2222-3333-4444-555555555555"),
        (3, 22, None, "3")]  # no UUID: pinned by PCI index
    assert len(warnings) == 4
    assert "line 2" in warnings[0] and "memory.total '[N/A]'" in warnings[0]
    assert "line 3" in warnings[1] and "expected 4" in warnings[1]
    assert "line 4" in warnings[2] and "index 'x'" in warnings[2]
    assert "index 3 twice" in warnings[3]


def test_select_gpus_by_index_or_uuid() -> None:
    gpus, _ = parse_nvidia_smi(MIXED_BOX)
    assert select_gpus(gpus, None) == gpus and select_gpus(gpus, "all") == gpus
    assert [g.index for g in select_gpus(gpus, "0,2")] == [0, 2]
    assert [g.index for g in select_gpus(gpus, "GPU-3f0b1a8e-9d0c-2c43-5a1e-6f2b8c9d7e11")] == [1]
    with pytest.raises(ConfigError, match=r"--gpus 0,5: no GPU 5 here; GPUs found: 0 \(NVIDIA GeForce RTX 3070\)"):
        select_gpus(gpus, "0,5")


def test_each_gpu_serves_the_catalog_models_that_fit_its_own_vram() -> None:
    catalog = load_catalog(None)
    gpus = [Gpu(0, "RTX 3070", 8192), Gpu(1, "RTX 4090", 24564), Gpu(2, "H100", 81559), Gpu(3, "GTX 1060", 6144)]
    plans = plan_gpus(catalog, list(catalog), gpus)
    served = {p.gpu.index: {m.id for m in p.models} for p in plans}
    for plan in plans:  # exactly the catalog's models whose tier is at most the GPU's nominal VRAM
        assert served[plan.gpu.index] == {m.id for m in catalog.values() if m.vram.gb <= plan.gpu.nominal_vram_gb}
    assert {"sd15", "tiny-sd", "smollm2-135m"} <= served[0] and not {"sdxl", "mixtral-8x7b"} & served[0]
    assert {"sd15", "sdxl", "mixtral-8x7b"} <= served[1] <= served[2]
    assert served[3] == set() and any("sd15 needs vram8 (8 GB); this device has 6 GB" in r for r in plans[3].refused)
    assert plans[1].queues == [m.queue for m in plans[1].models] and "vram24.mixtral-8x7b" in plans[1].queues


def test_derived_keys_are_deterministic_distinct_and_index_zero_is_the_key() -> None:
    key = "0x" + "11" * 32
    operator, again = Wallet.from_key(key), Wallet.from_key(key)
    derived = [operator.derive(i) for i in range(8)]
    assert derived[0] is operator  # a one-GPU box keeps its address
    assert [w.address for w in derived] == [again.derive(i).address for i in range(8)]
    assert len({w.address for w in derived}) == 8 and len({w.key_hex for w in derived}) == 8
    # Pinned: changing the derivation would silently move every multi-GPU miner to new addresses.
    assert derived[1].address == PINNED_GPU1_ADDRESS
    assert recover_signer(b"hello", derived[3].sign(b"hello")) == derived[3].address
    assert Wallet.from_key("0x" + "22" * 32).derive(1).address != derived[1].address
    with pytest.raises(ConfigError, match="worker index"):
        operator.derive(-1)


PINNED_GPU1_ADDRESS = "0x76caaffB2A8AF72dA2a4119c0d9a2690bb7490d8"  # HMAC-SHA256(0x11*32, domain || 1)


def test_wallet_addresses_lists_each_gpu_workers_address(tmp_path: Path) -> None:
    key = tmp_path / "operator.key"
    operator = Wallet.create()
    operator.save(key)
    done = subprocess.run([sys.executable, "-m", "heurist.cli.main", "wallet", "addresses", "--key-file", str(key),
                           "--gpus", "3", "--json"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    rows = json.loads(done.stdout.strip().splitlines()[-1])
    assert rows == [{"gpu": i, "address": operator.derive(i).address} for i in range(3)]
    assert rows[0]["address"] == operator.address


def test_discovery_on_this_machine_never_imports_torch_here() -> None:
    before = "torch" in sys.modules
    found = discover_gpus()
    assert ("torch" in sys.modules) == before
    probed = probe_with_torch()  # torch in a throwaway interpreter, the fallback without nvidia-smi
    if not found.gpus:
        assert probed.gpus == [] and probed.source == "torch"
    else:
        assert len(probed.gpus) == len(found.gpus)


def test_discovery_runs_nvidia_smi_and_falls_back_when_it_fails(tmp_path: Path) -> None:
    smi = tmp_path / "nvidia-smi"
    smi.write_text(f"#!/bin/sh\ntest \"$1\" = --query-gpu=index,name,memory.total,uuid || exit 3\ncat <<'EOF'\n"
                   f"{MIXED_BOX}EOF\n")
    smi.chmod(0o755)
    found = discover_gpus(nvidia_smi=str(smi))
    assert found.source == "nvidia-smi" and [g.index for g in found.gpus] == [0, 1, 2]
    broken = tmp_path / "broken-smi"
    broken.write_text("#!/bin/sh\necho 'NVIDIA-SMI has failed because it could not communicate with the driver' >&2\n"
                      "exit 9\n")
    broken.chmod(0o755)
    assert discover_gpus(nvidia_smi=str(broken)).source in ("torch", "none")


def test_supervisor_is_chosen_only_with_several_gpus_or_when_asked(tmp_path: Path) -> None:
    from rich.console import Console

    quiet = Console(file=open(os.devnull, "w"))  # noqa: SIM115
    inventory = tmp_path / "gpus.csv"
    inventory.write_text(MIXED_BOX)
    assert supervised_gpus("cpu", None, None, None, quiet) is None  # --device: one worker, as always
    if not discover_gpus().gpus:
        assert supervised_gpus(None, None, None, None, quiet) is None  # CPU box: one in-process worker
        with pytest.raises(ConfigError, match="no GPU found"):
            supervised_gpus(None, "all", None, None, quiet)
    chosen = supervised_gpus(None, "1,2", inventory, None, quiet)
    assert chosen is not None and [g.index for g in chosen] == [1, 2]
    with pytest.raises(ConfigError, match="--gpus starts one worker per GPU and --device"):
        supervised_gpus("cuda:0", "0", None, None, quiet)
    with pytest.raises(ConfigError, match="drop --vram"):
        supervised_gpus(None, None, inventory, 24.0, quiet)
    env = child_env(Settings(torch_threads=None), chosen[0], threads=1, base={"PATH": "/bin"})
    assert env["CUDA_VISIBLE_DEVICES"] == chosen[0].uuid and env["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"
    assert env["HEURIST_TORCH_THREADS"] == "1"


def _consumers(rabbit_url: str, queue: str) -> int:
    """Consumers of ``queue`` as the broker counts them now (a passive declare changes nothing)."""
    from kombu import Connection

    with Connection(rabbit_url) as conn:
        return int(conn.default_channel.queue_declare(queue, passive=True).consumer_count)


def _session_members(sid: int) -> list[int]:
    """Live processes whose session is ``sid`` (each child leads its own): orphans would show up here."""
    members = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[3]) == sid and fields[0] != "Z":
                members.append(int(entry.name))
    return members


def _supervise_and_stop(tmp_path: Path, rabbit_url: str, models_dir: Path, gpu_args: list[str],
                        gpus: list[Gpu], device: str) -> None:
    """Start `heurist miner` as a supervisor, check each GPU's worker, Ctrl-C it, check nothing is left.
    (SIGTERM takes the same forwarding path; test_worker_shutdown stops a worker with either.)"""
    from heurist.access.topology import setup_broker
    from heurist.catalog import load_catalog

    trusted = Settings(_env_file=None, broker_url=rabbit_url)  # type: ignore[call-arg]
    setup_broker(trusted, load_catalog(None))  # miners declare nothing: the tier queues are the operator's
    key = tmp_path / "miner.key"
    operator = Wallet.create()
    operator.save(key)
    # The box's own restricted broker user (`heurist broker add-miner`), shared by its GPU workers.
    own = broker_access(trusted).add_miner(operator.address)
    env = {k: v for k, v in os.environ.items() if not k.startswith("HEURIST_")}
    env.update(HEURIST_BROKER_URL=own.broker_url, HEURIST_MODELS_DIR=str(models_dir),
               HEURIST_DATA_DIR=str(tmp_path / "data"), HEURIST_TORCH_THREADS="1", COLUMNS="300",
               HEURIST_DISPATCH_ADDRESS=Wallet.create().address, HEURIST_S3_ENDPOINT="http://127.0.0.1:1")
    supervisor = subprocess.Popen(
        [sys.executable, "-m", "heurist.cli.main", "miner", "--key-file", str(key), "--models", "tiny-sd",
         *gpu_args, "--loglevel", "INFO"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
        preexec_fn=die_with_parent(signal.SIGKILL, takes_ctrl_c=True))  # Ctrl-C as from a terminal
    out: list[str] = []
    err: list[str] = []
    readers = [threading.Thread(target=lambda s=s, sink=sink: sink.extend(iter(s.readline, "")), daemon=True)
               for s, sink in ((supervisor.stdout, out), (supervisor.stderr, err))]
    for reader in readers:
        reader.start()
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and sum(" ready." in line for line in err) < len(gpus):
            assert supervisor.poll() is None, "".join(out + err)
            time.sleep(0.2)
        assert sum(" ready." in line for line in err) == len(gpus), "".join(out + err)
        lines = {line.split()[0]: line for line in out if line.startswith("gpu")}
        pids = {label: int(line.rsplit("pid ", 1)[1]) for label, line in lines.items()}
        assert sorted(pids) == sorted(f"gpu{g.index}" for g in gpus)
        for gpu in gpus:
            pid = pids[f"gpu{gpu.index}"]
            environ = dict(item.split("=", 1) for item in
                           Path(f"/proc/{pid}/environ").read_text().split("\0") if "=" in item)
            argv = Path(f"/proc/{pid}/cmdline").read_text().split("\0")
            assert environ["CUDA_VISIBLE_DEVICES"] == gpu.visible_id and environ["HEURIST_TORCH_THREADS"] == "1"
            assert argv[argv.index("--vram") + 1] == str(gpu.nominal_vram_gb)
            assert argv[argv.index("--device") + 1] == device
            address = operator.derive(gpu.index).address
            assert f"miner {address}" in lines[f"gpu{gpu.index}"]
            hostname = f"miner-{operator.address.lower()}-vram8-gpu{gpu.index}-{address.lower()}@"
            assert any(hostname in line for line in err)
        assert _consumers(rabbit_url, "vram8.tiny-sd") == len(gpus)
        supervisor.send_signal(signal.SIGINT)  # each worker exits 130 ("interrupted"), a clean stop
        assert supervisor.wait(timeout=60) == 0, "".join(out + err)
        for reader in readers:
            reader.join(timeout=5)
        assert all(f"gpu{g.index} worker (pid" in "".join(out) for g in gpus)
        for pid in pids.values():
            assert _session_members(pid) == [], f"orphans of child {pid}"
    finally:
        if supervisor.poll() is None:
            os.killpg(supervisor.pid, signal.SIGKILL)
            supervisor.wait()


def test_supervisor_runs_one_pinned_worker_per_gpu_and_ctrl_c_stops_them_all(
        tmp_path: Path, rabbit_url: str, shared_models_dir: Path) -> None:
    inventory = tmp_path / "gpus.csv"  # the hidden testing option: these GPUs, workers on the CPU
    inventory.write_text("".join(MIXED_BOX.splitlines(keepends=True)[:2]))
    gpus, _ = parse_nvidia_smi(inventory.read_text())
    _supervise_and_stop(tmp_path, rabbit_url, shared_models_dir, ["--gpu-inventory", str(inventory)], gpus, "cpu")


def test_supervisor_skips_a_gpu_that_fits_nothing_and_reports_a_failed_worker(tmp_path: Path) -> None:
    inventory = tmp_path / "gpus.csv"  # sdxl (vram12) fits only the 24 GB card, and its files are not here
    inventory.write_text("".join(MIXED_BOX.splitlines(keepends=True)[:2]))
    key = tmp_path / "miner.key"
    Wallet.create().save(key)
    env = {k: v for k, v in os.environ.items() if not k.startswith("HEURIST_")}
    env.update(HEURIST_BROKER_URL=f"embedded+sqlite:///{tmp_path}/b.sqlite", HEURIST_MODELS_DIR=str(tmp_path / "m"),
               HEURIST_DATA_DIR=str(tmp_path / "data"), COLUMNS="300")
    done = subprocess.run([sys.executable, "-m", "heurist.cli.main", "miner", "--key-file", str(key), "--models",
                           "sdxl", "--gpu-inventory", str(inventory)], capture_output=True, text=True, timeout=120,
                          env=env)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "gpu0 NVIDIA GeForce RTX 3070 skipped: it fits none of the 1 requested models (sdxl needs vram12" \
        in done.stdout
    assert "[gpu1] error: model sdxl is not on this machine" in done.stderr
    assert "gpu1 worker (pid" in done.stdout and "exited with code 2" in done.stdout and "not restarted" in done.stdout


@pytest.mark.gpu
def test_supervisor_on_real_gpus(tmp_path: Path, rabbit_url: str, shared_models_dir: Path) -> None:
    gpus = [g for g in discover_gpus().gpus if g.nominal_vram_gb >= 8]  # tiny-sd's tier
    if not gpus:
        pytest.skip("no GPU with 8 GB here")
    _supervise_and_stop(tmp_path, rabbit_url, shared_models_dir, ["--gpus", "all"], gpus, "cuda:0")


@pytest.mark.gpu
def test_nvidia_smi_and_torch_agree_on_this_boxs_gpus() -> None:
    found, probed = discover_gpus(), probe_with_torch()
    if not probed.gpus:
        pytest.skip("torch sees no CUDA device here")
    assert [(g.name, g.nominal_vram_gb) for g in found.gpus] == [(g.name, g.nominal_vram_gb) for g in probed.gpus]


@pytest.mark.gpu
def test_each_child_environment_sees_exactly_its_own_gpu() -> None:
    gpus = discover_gpus().gpus
    if not gpus:
        pytest.skip("no GPU here")
    for gpu in gpus:
        env = child_env(Settings(), gpu, threads=1)
        done = subprocess.run([sys.executable, "-c", "import torch; p = torch.cuda.get_device_properties(0); "
                               "print(torch.cuda.device_count(), p.total_memory // 2**20, p.name)"],
                              env=env, capture_output=True, text=True, timeout=120, check=True)
        count, memory_mib, name = done.stdout.strip().split(" ", 2)
        assert count == "1" and name == gpu.name and abs(int(memory_mib) - gpu.memory_mib) <= 64
