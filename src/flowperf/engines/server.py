"""Persistent local vLLM servers that `bench` starts once and reuses across runs.

A server is vLLM's OpenAI-compatible server for one model and engine configuration, bound to 127.0.0.1,
started in a session of its own and as no descendant of the run that started it (no signal to a
benchmark reaches it), with its output in a log file. Its pid, port, model and configuration hash (of its
command line: client-side settings are not part of it) go into a state file in the flowperf home,
guarded by a file lock; a later run asking for the same model and configuration reuses it and pays only
a health check. A run holds a lease (a shared flock) on its server while it uses it. At most
`max_servers` stay alive; starting one more stops the least recently used one that no live run holds.

State is never trusted: a record whose pid is gone, or whose pid now belongs to some other program, is
dropped; flowperf only ever signals a process whose command line proves it is the server it started.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import httpx
import psutil
from pydantic import BaseModel, ConfigDict, ValidationError

from flowperf.config import EngineConfig
from flowperf.engines.base import EngineError, EngineInfo
from flowperf.engines.openai_http import HttpClientConfig, OpenAIHttpEngine
from flowperf.engines.vllm_local import engine_arguments
from flowperf.errors import UserError
from flowperf.locking import Lease, exclusive_lock, unused
from flowperf.paths import flowperf_home
from flowperf.rundir.durable import atomic_write_text

HOST = "127.0.0.1"
SERVER_MODULE = "vllm.entrypoints.openai.api_server"
STOP_GRACE_S = 15.0
HEALTH_POLL_S = 0.5

# Engine arguments that are flowperf's business in process but the server's own defaults over HTTP.
NOT_SERVER_FLAGS = {"disable_log_stats"}
# Engine arguments whose product is the number of GPUs one vLLM server uses.
PARALLEL_SIZES = ("tensor_parallel_size", "pipeline_parallel_size", "data_parallel_size")


class ServerRecord(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str
    pid: int
    host: str
    port: int
    model: str
    config_hash: str
    argv: list[str]
    log_path: str
    started_at: float
    last_used_at: float
    ready: bool = True
    replica_set: str | None = None  # the set `bench serve start --replicas` started it in
    replica: int | None = None
    devices: str | None = None  # its CUDA_VISIBLE_DEVICES

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def set_slot(self) -> str:
        """`SET/REPLICA` (and its GPUs) for a member of a replica set, as `bench serve status` shows it."""
        if self.replica_set is None:
            return ""
        return f"{self.replica_set}/{self.replica}" + (f" GPUs {self.devices}" if self.devices else "")

    @property
    def placement(self) -> str:
        """`, replica I of set S on GPUs D` for a member of a replica set; empty for a lone server."""
        if self.replica_set is None:
            return ""
        gpus = f" on GPUs {self.devices}" if self.devices is not None else ""
        return f", replica {self.replica} of set {self.replica_set}{gpus}"


class ServerState(BaseModel):
    model_config = ConfigDict(extra="forbid")

    servers: list[ServerRecord] = []


def gpu_present() -> bool:
    """The same rule the set-up script uses to pick the engine build."""
    return gpu_count() > 0


def gpu_count() -> int:
    """GPUs `nvidia-smi -L` lists (0 without a working nvidia-smi)."""
    if not shutil.which("nvidia-smi"):
        return 0
    done = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=10, check=False)
    return sum(line.startswith("GPU ") for line in done.stdout.splitlines()) if done.returncode == 0 else 0


def server_flag(key: str, value: Any) -> list[str]:
    """One engine argument as `vllm serve` takes it: vLLM builds its command line from the same
    dataclass, so `tensor_parallel_size=2` is `--tensor-parallel-size 2`, a bool is `--x`/`--no-x`, a
    list is its items one after another, and a config object (compilation_config) is JSON."""
    flag = "--" + key.replace("_", "-")
    if value is None:
        return []
    if isinstance(value, bool):
        return [flag if value else "--no-" + flag[2:]]
    if isinstance(value, list):
        if not value:
            raise UserError(f"--engine-arg {key}=[]: vllm serve cannot take an empty list")
        return [flag, *(json.dumps(item) if isinstance(item, dict | list) else str(item) for item in value)]
    if isinstance(value, dict):
        return [flag, json.dumps(value, sort_keys=True)]
    return [flag, str(value)]


def server_arguments(settings: EngineConfig, model_path: Path, port: int, on_gpu: bool) -> list[str]:
    """The vLLM server's command line for these engine settings (the in-process engine's mapping)."""
    arguments, _ = engine_arguments(settings, model_path, on_gpu)
    argv = [sys.executable, "-m", SERVER_MODULE, "--host", HOST, "--port", str(port)]
    for key, value in arguments.items():
        if key not in NOT_SERVER_FLAGS:
            argv += server_flag(key, value)
    # usage with cached prompt tokens, and per-request queue/TTFT metrics in the final stream event
    argv += ["--enable-prompt-tokens-details", "--enable-per-request-metrics", "--disable-uvicorn-access-log"]
    return argv


def config_hash(settings: EngineConfig, model_path: Path, on_gpu: bool) -> str:
    """What makes two servers interchangeable: the command line that starts one, but for its port.

    Client-side settings (API, timeouts, the cap on servers, the port asked for) change nothing the server
    does, so two runs that differ only there share one server instead of starting a second.
    """
    argv = server_arguments(settings, model_path, 0, on_gpu)
    at = argv.index("--port")
    del argv[at : at + 2]
    return hashlib.sha256(json.dumps(argv).encode()).hexdigest()[:16]


LAUNCHER = """
import subprocess, sys
with open(sys.argv[1], "ab") as log:
    server = subprocess.Popen(
        sys.argv[2:], stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
    )
print(server.pid)
"""


def spawn_detached(argv: list[str], log_path: Path, env: dict[str, str]) -> int:
    """Start `argv` in a session of its own, as no descendant of this process; returns its pid.

    A launcher (itself in a new session, so no terminal signal reaches it) starts the server and exits, so
    the server is re-parented away from this process: a benchmark's second Ctrl-C, which kills every
    descendant, or a supervisor that kills the benchmark's process tree, never reaches a server that is
    meant to outlive the run. Only `stop_server` ends it.
    """
    done = subprocess.run(
        [sys.executable, "-c", LAUNCHER, str(log_path), *argv],
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        start_new_session=True,
        timeout=60,
        check=False,
    )
    if done.returncode != 0 or not done.stdout.strip().isdigit():
        raise EngineError(f"could not start the vLLM server: {done.stderr.strip()[-2000:] or 'no output'}")
    return int(done.stdout.strip())


def is_our_server(record: ServerRecord) -> bool:
    """True only if `record.pid` is alive and is the vLLM server flowperf started on that port."""
    try:
        process = psutil.Process(record.pid)
        if process.status() == psutil.STATUS_ZOMBIE:
            return False
        command = process.cmdline()
    except psutil.Error:
        return False
    return SERVER_MODULE in command and "--port" in command and str(record.port) in command


def port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((HOST, port))
        except OSError:
            return False
    return True


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((HOST, 0))
        return int(probe.getsockname()[1])


def healthy(record: ServerRecord, timeout_s: float = 2.0) -> bool:
    try:
        return httpx.get(f"{record.base_url}/health", timeout=timeout_s).status_code == 200
    except httpx.HTTPError:
        return False


def log_tail(path: str, lines: int = 20) -> str:
    try:
        return "\n".join(Path(path).read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


class ServerRegistry:
    """The state file of flowperf's servers, and the only code that starts or stops them."""

    def __init__(self, home: Path | None = None) -> None:
        self.directory = (home or flowperf_home()) / "servers"
        self.state_path = self.directory / "state.json"

    @contextlib.contextmanager
    def _locked(self) -> Iterator[ServerState]:
        """Read-modify-write of the state under an exclusive lock; stale records are dropped on read."""
        with exclusive_lock(self.directory / ".lock"):
            state = self._read()
            for record in state.servers:
                if not is_our_server(record):
                    self.lease_path(record.id).unlink(missing_ok=True)
            state.servers = [record for record in state.servers if is_our_server(record)]
            yield state
            atomic_write_text(self.state_path, state.model_dump_json(indent=2) + "\n")

    def _read(self) -> ServerState:
        try:
            return ServerState.model_validate_json(self.state_path.read_text(encoding="utf-8"))
        except (OSError, ValueError, ValidationError):
            return ServerState()  # missing or damaged: only costs reuse; servers it named are found stale

    def servers(self) -> list[ServerRecord]:
        with self._locked() as state:
            return list(state.servers)

    def lease_path(self, server_id: str) -> Path:
        return self.directory / f"{server_id}.lease"

    def start(
        self,
        settings: EngineConfig,
        model_path: Path,
        *,
        replicas: int,
        gpus_per_replica: int,
        port: int | None,
        max_servers: int,
        start_timeout_s: float,
    ) -> tuple[list[ServerRecord], bool]:
        """`bench serve start`: one server that later runs reuse, or a replica set."""
        if replicas == 1 and gpus_per_replica == 1:
            record, reused = self.acquire(
                settings, model_path, port=port, max_servers=max_servers, start_timeout_s=start_timeout_s
            )
            return [record], reused
        return self.acquire_set(
            settings, model_path, replicas=replicas, gpus_per_replica=gpus_per_replica, port=port,
            max_servers=max_servers, start_timeout_s=start_timeout_s,
        )  # fmt: skip

    def acquire(
        self,
        settings: EngineConfig,
        model_path: Path,
        *,
        port: int | None,
        max_servers: int,
        start_timeout_s: float,
    ) -> tuple[ServerRecord, bool]:
        """A healthy server for these settings, left running for later runs (`bench serve start`)."""
        record, reused, lease = self.lease(
            settings, model_path, port=port, max_servers=max_servers, start_timeout_s=start_timeout_s
        )
        lease.release()
        return record, reused

    def lease(
        self,
        settings: EngineConfig,
        model_path: Path,
        *,
        port: int | None,
        max_servers: int,
        start_timeout_s: float,
    ) -> tuple[ServerRecord, bool, Lease]:
        """A healthy server for these settings, a running one (reused=True) or one started now, with a
        lease that keeps any other run from evicting it until released.

        Choosing, evicting, spawning and recording the new server (as not ready) happen under one hold of
        the state lock, and so does taking the lease: a second run asking for the same settings meanwhile
        finds that server and waits for it rather than starting another. Waiting for /health (tens of
        seconds) happens outside the lock, so other configurations and `serve status` never queue on it.
        """
        on_gpu = gpu_present()
        wanted = config_hash(settings, model_path, on_gpu)
        tried: set[str] = set()
        while True:
            with self._locked() as state:
                record = next(
                    (
                        r
                        for r in state.servers
                        if r.config_hash == wanted
                        and port in (None, r.port)
                        and r.id not in tried
                        and r.replica_set is None
                    ),
                    None,
                )
                spawned = record is None
                if record is None:
                    record = self._spawn(state, settings, model_path, port, max_servers, on_gpu)
                lease = Lease(self.lease_path(record.id))
            if self._answers(record, spawned, start_timeout_s):
                self._update(record.id, last_used_at=time.time(), ready=True)
                return record.model_copy(update={"ready": True}), not spawned, lease
            lease.release()
            if spawned:
                self._abandon(record, start_timeout_s)
            tried.add(record.id)

    def _answers(self, record: ServerRecord, spawned: bool, start_timeout_s: float) -> bool:
        """A ready server must answer now; one starting (ours or another run's) gets the start timeout."""
        if record.ready and not spawned:
            return healthy(record)
        return self._wait_until_healthy(record, start_timeout_s)

    def _spawn(
        self,
        state: ServerState,
        settings: EngineConfig,
        model_path: Path,
        port: int | None,
        max_servers: int,
        on_gpu: bool,
        replica: Replica | None = None,
    ) -> ServerRecord:
        """Start a server and record it as not ready (the caller holds the state lock), so that a run
        killed while it starts leaves no server nobody knows about: later runs wait for it, `bench serve
        stop` stops it. Evicts the least recently used idle server beyond the cap first. A replica sees
        only its own GPUs."""
        if port is not None and not port_is_free(port):
            raise UserError(f"--server-port {port}: 127.0.0.1:{port} is already in use by another process")
        self._evict(state, max_servers)
        chosen = port if port is not None else free_port()
        server_id = uuid.uuid4().hex[:8]
        log_path = self.directory / f"{server_id}.log"
        argv = server_arguments(settings, model_path, chosen, on_gpu)
        env = os.environ | {"VLLM_SERVER_DEV_MODE": "1"}  # enables POST /reset_prefix_cache on loopback
        if replica is not None and replica.devices is not None:
            env |= {"CUDA_VISIBLE_DEVICES": replica.devices}
        now = time.time()
        record = ServerRecord(
            id=server_id,
            pid=spawn_detached(argv, log_path, env),
            host=HOST,
            port=chosen,
            model=str(model_path),
            config_hash=config_hash(settings, model_path, on_gpu),
            argv=argv,
            log_path=str(log_path),
            started_at=now,
            last_used_at=now,
            ready=False,
            replica_set=None if replica is None else replica.set_id,
            replica=None if replica is None else replica.index,
            devices=None if replica is None else replica.devices,
        )
        state.servers.append(record)
        return record

    def acquire_set(
        self,
        settings: EngineConfig,
        model_path: Path,
        *,
        replicas: int,
        gpus_per_replica: int,
        port: int | None,
        max_servers: int,
        start_timeout_s: float,
    ) -> tuple[list[ServerRecord], bool]:
        """N healthy servers of one configuration, each on its own GPUs, left running as a set
        (`bench serve start --replicas N`); reused=True when the whole set was running already.

        Missing members are spawned under one hold of the state lock (each with a lease, so starting
        one never evicts another) and then start up side by side; the wait for their health is
        parallel, outside the lock. A member that fails is stopped and named; the healthy ones stay."""
        if replicas > max_servers:
            raise UserError(f"--replicas {replicas}: more than --max-servers {max_servers}; raise it")
        gpus = gpu_count()
        settings = replica_settings(settings, gpus_per_replica)
        devices = replica_devices(replicas, gpus_per_replica, gpus)
        wanted = config_hash(settings, model_path, gpus > 0)
        set_id = hashlib.sha256(f"{wanted} {replicas} {gpus_per_replica}".encode()).hexdigest()[:8]
        leases: list[Lease] = []
        try:
            with self._locked() as state:
                members = {r.replica: r for r in state.servers if r.replica_set == set_id}
                leases += [Lease(self.lease_path(record.id)) for record in members.values()]
                spawned = self._spawn_members(
                    state, settings, model_path, [Replica(set_id, i, devices[i]) for i in range(replicas)],
                    members, leases, port=port, max_servers=max_servers, on_gpu=gpus > 0,
                )  # fmt: skip
            ordered = [members[index] for index in range(replicas)]
            return self._await_set(ordered, spawned, start_timeout_s), not spawned
        finally:
            for lease in leases:
                lease.release()

    def _spawn_members(
        self, state: ServerState, settings: EngineConfig, model_path: Path, replicas: list[Replica],
        members: dict[int | None, ServerRecord], leases: list[Lease], *, port: int | None, max_servers: int,
        on_gpu: bool,
    ) -> list[str]:  # fmt: skip
        """Spawn the set's missing members into `members`, each leased at once; their ids. If one cannot
        start, the ones started here are stopped again (the state is not written then) and it raises."""
        spawned: list[ServerRecord] = []
        try:
            for replica in replicas:
                if replica.index in members:
                    continue
                member_port = None if port is None else port + replica.index
                record = self._spawn(state, settings, model_path, member_port, max_servers, on_gpu, replica)
                members[replica.index] = record
                leases.append(Lease(self.lease_path(record.id)))
                spawned.append(record)
        except BaseException:
            for record in spawned:
                stop_server(record)
            raise
        return [record.id for record in spawned]

    def _await_set(
        self, members: list[ServerRecord], spawned: list[str], start_timeout_s: float
    ) -> list[ServerRecord]:
        """Every member healthy (their start-ups in parallel), or the failed ones stopped and raised."""
        with ThreadPoolExecutor(max_workers=len(members)) as pool:
            answers = list(pool.map(lambda r: self._answers(r, r.id in spawned, start_timeout_s), members))
        failed = [record for record, ok in zip(members, answers, strict=True) if not ok]
        for record in failed:
            stop_server(record)
        with self._locked() as state:
            state.servers = [r for r in state.servers if r.id not in {f.id for f in failed}]
            for stored in state.servers:
                if stored.id in {m.id for m in members}:
                    stored.ready, stored.last_used_at = True, time.time()
        if failed:
            where = "; ".join(f"replica {r.replica}: {r.log_path}" for r in failed)
            raise EngineError(
                f"{len(failed)} of {len(members)} replicas did not become healthy within "
                f"{start_timeout_s:g} s (or exited during start-up): see {where}"
            )
        return [record.model_copy(update={"ready": True}) for record in members]

    def set_urls(self, set_id: str | None) -> list[str]:
        """The base URLs of a replica set (the only one when none is named), in replica order."""
        servers = self.servers()
        sets = sorted({r.replica_set for r in servers if r.replica_set is not None})
        if set_id is None and len(sets) != 1:
            raise UserError(
                "no replica set is running (start one with `bench serve start --replicas N`)"
                if not sets
                else f"several replica sets are running ({', '.join(sets)}): name one"
            )
        chosen = set_id or sets[0]
        members = sorted((r for r in servers if r.replica_set == chosen), key=lambda r: r.replica or 0)
        if not members:
            raise UserError(f"no running replica set with id {chosen} (see `bench serve status`)")
        return [record.base_url for record in members]

    def _evict(self, state: ServerState, max_servers: int) -> None:
        """Stop least recently used servers until one more fits under the cap; a server a live run holds
        a lease on is never stopped (if every one is, the run is refused rather than the cap exceeded)."""
        while len(state.servers) >= max_servers:
            for record in sorted(state.servers, key=lambda stored: stored.last_used_at):
                with unused(self.lease_path(record.id)) as idle:
                    if idle:
                        stop_server(record)
                        state.servers.remove(record)
                        self.lease_path(record.id).unlink(missing_ok=True)
                        break
            else:
                busy = ", ".join(record.id for record in state.servers)
                raise UserError(
                    f"--max-servers {max_servers}: every running server is in use by a live run ({busy}); "
                    "raise --max-servers or wait for one of those runs to end"
                )

    def _abandon(self, record: ServerRecord, start_timeout_s: float) -> None:
        """Stop and forget a server this process started that never became healthy; raise why."""
        stop_server(record)
        with self._locked() as state:
            state.servers = [stored for stored in state.servers if stored.id != record.id]
        raise EngineError(
            f"the vLLM server did not become healthy within {start_timeout_s:g} s "
            f"(or exited during start-up); last lines of {record.log_path}:\n{log_tail(record.log_path)}"
        )

    def release(self, record: ServerRecord, lease: Lease) -> None:
        """The end of a run's use of a server: it is now idle, and most recently used."""
        self._update(record.id, last_used_at=time.time())
        lease.release()

    def _update(self, server_id: str, **fields: Any) -> None:
        """Set `fields` on the stored record of `server_id`, if it is still recorded."""
        with self._locked() as state:
            for stored in state.servers:
                if stored.id == server_id:
                    for name, value in fields.items():
                        setattr(stored, name, value)

    @staticmethod
    def _wait_until_healthy(record: ServerRecord, timeout_s: float) -> bool:
        """Poll /health until it answers (True), or the server dies or the time is up (False)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not is_our_server(record):
                return False
            if healthy(record, timeout_s=HEALTH_POLL_S):
                return True
            time.sleep(HEALTH_POLL_S)
        return False

    def stop(self, server_id: str | None, *, everything: bool = False) -> list[ServerRecord]:
        """Stop one server (by id, or the only one) or all of them; returns what was stopped."""
        with self._locked() as state:
            if everything:
                chosen = list(state.servers)
            elif server_id is not None:
                chosen = [record for record in state.servers if record.id == server_id]
                if not chosen:
                    raise UserError(
                        f"no running flowperf server with id {server_id} (see `bench serve status`)"
                    )
            elif len(state.servers) == 1:
                chosen = list(state.servers)
            elif not state.servers:
                chosen = []
            else:
                raise UserError("several servers are running: name one by id, or use --all")
            for record in chosen:
                stop_server(record)
                state.servers.remove(record)
                self.lease_path(record.id).unlink(missing_ok=True)
        return chosen

    def find(self, server_id: str | None) -> ServerRecord:
        servers = self.servers()
        if server_id is None:
            if not servers:
                raise UserError("no flowperf server is running (start one with `bench serve start`)")
            return max(servers, key=lambda record: record.last_used_at)
        for record in servers:
            if record.id == server_id:
                return record
        raise UserError(f"no running flowperf server with id {server_id} (see `bench serve status`)")


@dataclass(frozen=True)
class Replica:
    """One member of a replica set: which set, which member, and the GPUs it may see (None: all/CPU)."""

    set_id: str
    index: int
    devices: str | None


def replica_settings(settings: EngineConfig, gpus_per_replica: int) -> EngineConfig:
    """The settings each replica runs: K GPUs per replica means tensor parallelism over K unless the
    engine arguments set the parallel sizes themselves, whose product must then be K."""
    extra = settings.extra_engine_args
    given = {key: extra[key] for key in PARALLEL_SIZES if key in extra}
    if not given:
        if gpus_per_replica == 1:
            return settings
        return settings.model_copy(
            update={"extra_engine_args": extra | {"tensor_parallel_size": gpus_per_replica}}
        )
    product = math.prod(int(value) for value in given.values())
    if product != gpus_per_replica:
        sizes = " x ".join(f"{key}={value}" for key, value in given.items())
        raise UserError(
            f"--gpus-per-replica {gpus_per_replica}: the engine arguments use {product} GPU(s) ({sizes})"
        )
    return settings


def replica_devices(replicas: int, gpus_per_replica: int, gpus: int) -> list[str | None]:
    """Each replica's CUDA_VISIBLE_DEVICES: consecutive groups of the GPUs this process may use (those
    CUDA_VISIBLE_DEVICES already names, if set); on a machine without GPUs, nothing to pin."""
    if gpus == 0:
        if gpus_per_replica > 1:
            raise UserError(f"--gpus-per-replica {gpus_per_replica}: no GPU on this machine")
        return [None] * replicas
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    ids = (
        [part.strip() for part in visible.split(",") if part.strip()]
        if visible
        else list(map(str, range(gpus)))
    )
    if replicas * gpus_per_replica > len(ids):
        raise UserError(
            f"--replicas {replicas} x --gpus-per-replica {gpus_per_replica}: only {len(ids)} GPU(s) here"
        )
    return [",".join(ids[i * gpus_per_replica : (i + 1) * gpus_per_replica]) for i in range(replicas)]


def stop_server(record: ServerRecord) -> None:
    """SIGTERM the server's process group, SIGKILL it after a grace period; only if it is provably ours."""
    if not is_our_server(record):
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(record.pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE_S
    while time.monotonic() < deadline and is_our_server(record):
        time.sleep(0.2)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(record.pid, signal.SIGKILL)
    with contextlib.suppress(psutil.Error, ChildProcessError):
        psutil.Process(record.pid).wait(timeout=5)


class ManagedServerEngine(OpenAIHttpEngine):
    """The OpenAI engine pointed at a flowperf-managed server, started on first use and then reused."""

    engine_name = "server"

    def __init__(
        self,
        settings: EngineConfig,
        model_path: Path,
        http: HttpClientConfig,
        *,
        port: int | None,
        max_servers: int,
        start_timeout_s: float,
        registry: ServerRegistry | None = None,
    ) -> None:
        super().__init__(http)
        self.engine_settings = settings
        self.model_path = model_path
        self.port = port
        self.max_servers = max_servers
        self.start_timeout_s = start_timeout_s
        self.registry = registry or ServerRegistry()
        self.record: ServerRecord | None = None
        self._lease: Lease | None = None

    async def start(self) -> None:
        if self.started:
            return
        self.record, self.reused, self._lease = await asyncio.to_thread(
            self.registry.lease,
            self.engine_settings,
            self.model_path,
            port=self.port,
            max_servers=self.max_servers,
            start_timeout_s=self.start_timeout_s,
        )
        self.settings = replace(self.settings, base_url=self.record.base_url)
        await super().start()

    async def shutdown(self) -> None:
        """Close the client and release the lease; the server itself stays up for the next run."""
        await super().shutdown()
        lease, self._lease = self._lease, None
        if lease is not None and self.record is not None:
            await asyncio.to_thread(self.registry.release, self.record, lease)

    def info(self) -> EngineInfo:
        base = super().info()
        if self.record is None:
            return base
        server = {
            "server_id": self.record.id,
            "server_pid": self.record.pid,
            "server_log": self.record.log_path,
        }
        return replace(base, details=base.details | server)
