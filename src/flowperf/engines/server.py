"""Persistent local vLLM servers that `bench` starts once and reuses across runs.

A server is vLLM's OpenAI-compatible server for one model and engine configuration, bound to 127.0.0.1,
started in a session of its own (a terminal's Ctrl-C never reaches it), with its output in a log file.
Its pid, port, model and configuration hash go into a state file in the flowperf home, guarded by a file
lock; a later run asking for the same model and configuration reuses it and pays only a health check.
At most `max_servers` stay alive; starting one more stops the least recently used.

State is never trusted: a record whose pid is gone, or whose pid now belongs to some other program, is
dropped; flowperf only ever signals a process whose command line proves it is the server it started.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import psutil
from pydantic import BaseModel, ConfigDict, ValidationError

from flowperf.config import EngineConfig
from flowperf.durable import atomic_write_text
from flowperf.engines.base import EngineError, EngineInfo
from flowperf.engines.openai_http import HttpClientConfig, OpenAIHttpEngine
from flowperf.engines.vllm_local import engine_arguments
from flowperf.errors import UserError
from flowperf.locking import exclusive_lock
from flowperf.paths import flowperf_home

HOST = "127.0.0.1"
SERVER_MODULE = "vllm.entrypoints.openai.api_server"
STOP_GRACE_S = 15.0
HEALTH_POLL_S = 0.5

# Engine arguments that are flowperf's business in process but the server's own defaults over HTTP.
NOT_SERVER_FLAGS = {"disable_log_stats"}


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

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"


class ServerState(BaseModel):
    model_config = ConfigDict(extra="forbid")

    servers: list[ServerRecord] = []


def gpu_present() -> bool:
    """The same rule the set-up script uses to pick the engine build."""
    if not shutil.which("nvidia-smi"):
        return False
    done = subprocess.run(["nvidia-smi", "-L"], capture_output=True, timeout=10, check=False)
    return done.returncode == 0


def server_arguments(settings: EngineConfig, model_path: Path, port: int, on_gpu: bool) -> list[str]:
    """The vLLM server's command line for these engine settings (the in-process engine's mapping)."""
    arguments, _ = engine_arguments(settings, model_path, on_gpu)
    argv = [sys.executable, "-m", SERVER_MODULE, "--host", HOST, "--port", str(port)]
    for key, value in arguments.items():
        if key in NOT_SERVER_FLAGS:
            continue
        flag = "--" + key.replace("_", "-")
        if value is True:
            argv.append(flag)
        elif value is False:
            if key == "enable_prefix_caching":
                argv.append("--no-enable-prefix-caching")
        elif isinstance(value, dict | list):
            argv += [flag, json.dumps(value, sort_keys=True)]
        else:
            argv += [flag, str(value)]
    # usage with cached prompt tokens, and per-request queue/TTFT metrics in the final stream event
    argv += ["--enable-prompt-tokens-details", "--enable-per-request-metrics", "--disable-uvicorn-access-log"]
    return argv


def config_hash(settings: EngineConfig, model_path: Path) -> str:
    """What makes two servers interchangeable: the model and every engine setting."""
    document = {"model": str(model_path), "engine": settings.model_dump(mode="json", exclude={"kind"})}
    return hashlib.sha256(json.dumps(document, sort_keys=True).encode()).hexdigest()[:16]


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

    def acquire(
        self,
        settings: EngineConfig,
        model_path: Path,
        *,
        port: int | None,
        max_servers: int,
        start_timeout_s: float,
    ) -> tuple[ServerRecord, bool]:
        """A healthy server for these settings: a running one (reused=True) or a newly started one.

        A matching server another run is still starting is waited for rather than started twice.
        """
        wanted = config_hash(settings, model_path)
        with self._locked() as state:
            matching = [r for r in state.servers if r.config_hash == wanted and port in (None, r.port)]
        for record in matching:
            if healthy(record) or (not record.ready and self._wait_until_healthy(record, start_timeout_s)):
                self._update(record.id, last_used_at=time.time(), ready=True)
                return record, True
        record = self.start(
            settings, model_path, port=port, max_servers=max_servers, start_timeout_s=start_timeout_s
        )
        return record, False

    def start(
        self,
        settings: EngineConfig,
        model_path: Path,
        *,
        port: int | None,
        max_servers: int,
        start_timeout_s: float,
    ) -> ServerRecord:
        """Start a server and wait until /health answers; evicts the least recently used beyond the cap.

        The server is recorded (as not ready) the moment it is spawned, so that a run killed while it
        starts leaves no server nobody knows about: later runs wait for it, `bench serve stop` stops it.
        """
        if port is not None and not port_is_free(port):
            raise UserError(f"--server-port {port}: 127.0.0.1:{port} is already in use by another process")
        with self._locked() as state:
            while len(state.servers) >= max_servers:
                oldest = min(state.servers, key=lambda record: record.last_used_at)
                stop_server(oldest)
                state.servers.remove(oldest)
        chosen = port if port is not None else free_port()
        server_id = uuid.uuid4().hex[:8]
        log_path = self.directory / f"{server_id}.log"
        argv = server_arguments(settings, model_path, chosen, gpu_present())
        env = os.environ | {"VLLM_SERVER_DEV_MODE": "1"}  # enables POST /reset_prefix_cache on loopback
        with open(log_path, "ab") as log:
            process = subprocess.Popen(
                argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                start_new_session=True,
            )
        now = time.time()
        record = ServerRecord(
            id=server_id,
            pid=process.pid,
            host=HOST,
            port=chosen,
            model=str(model_path),
            config_hash=config_hash(settings, model_path),
            argv=argv,
            log_path=str(log_path),
            started_at=now,
            last_used_at=now,
            ready=False,
        )
        with self._locked() as state:
            state.servers.append(record)
        if not self._wait_until_healthy(record, start_timeout_s, process):
            stop_server(record)
            with self._locked() as state:
                state.servers = [stored for stored in state.servers if stored.id != record.id]
            if process.poll() is not None:
                raise EngineError(
                    f"the vLLM server exited during start-up (code {process.returncode}); "
                    f"last lines of {record.log_path}:\n{log_tail(record.log_path)}"
                )
            raise EngineError(
                f"the vLLM server did not become healthy within {start_timeout_s:g} s "
                f"(log: {record.log_path})"
            )
        self._update(record.id, ready=True)
        record.ready = True
        return record

    def _update(self, server_id: str, **fields: Any) -> None:
        """Set `fields` on the stored record of `server_id`, if it is still recorded."""
        with self._locked() as state:
            for stored in state.servers:
                if stored.id == server_id:
                    for name, value in fields.items():
                        setattr(stored, name, value)

    @staticmethod
    def _wait_until_healthy(
        record: ServerRecord, timeout_s: float, process: subprocess.Popen[bytes] | None = None
    ) -> bool:
        """Poll /health until it answers (True), or the server dies or the time is up (False)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            alive = process.poll() is None if process is not None else is_our_server(record)
            if not alive:
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

    async def start(self) -> None:
        if self.started:
            return
        self.record, self.reused = await asyncio.to_thread(
            self.registry.acquire,
            self.engine_settings,
            self.model_path,
            port=self.port,
            max_servers=self.max_servers,
            start_timeout_s=self.start_timeout_s,
        )
        self.settings = replace(self.settings, base_url=self.record.base_url)
        await super().start()

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
