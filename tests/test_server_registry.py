"""The persistent-server registry's rules, on stand-in servers (real processes, real locks, no vLLM):
what makes two servers interchangeable, one server for runs that ask at once, eviction that spares a
server a live run holds, and servers that outlive any signal to the run that started them."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

import fake_vllm_server
from fake_vllm_server import fake_arguments
from flowperf.config import EngineConfig
from flowperf.engines import server as server_module
from flowperf.engines.server import ServerRegistry, config_hash, is_our_server
from flowperf.errors import UserError
from helpers import ROOT

MODEL = Path("/models/tiny")


@pytest.fixture
def registry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(server_module, "server_arguments", fake_arguments)
    registry = ServerRegistry(home=tmp_path)
    yield registry
    registry.stop(None, everything=True)  # every stand-in these tests started, by its process group


def acquire(registry: ServerRegistry, max_model_len: int, max_servers: int = 3):
    return registry.acquire(
        EngineConfig(max_model_len=max_model_len),
        MODEL,
        port=None,
        max_servers=max_servers,
        start_timeout_s=30,
    )


def test_client_side_settings_are_not_part_of_what_a_server_is(tmp_path: Path) -> None:
    base = config_hash(EngineConfig(), tmp_path, on_gpu=False)
    client_only = EngineConfig(
        kind="server",
        api="chat",
        max_servers=7,
        connect_timeout_s=3,
        read_timeout_s=30,
        server_port=8123,
        server_start_timeout_s=60,
        api_key_env="SOME_KEY",
    )
    assert config_hash(client_only, tmp_path, on_gpu=False) == base
    for engine_setting in ({"max_model_len": 1024}, {"seed": 1}, {"kv_cache_gib": 0.5}, {"dtype": "float32"}):
        assert config_hash(EngineConfig(**engine_setting), tmp_path, on_gpu=False) != base, engine_setting
    assert config_hash(EngineConfig(), tmp_path / "other", on_gpu=False) != base


def test_runs_asking_at_once_share_one_new_server(registry: ServerRegistry) -> None:
    start = threading.Barrier(3)
    results: list[tuple] = []

    def run() -> None:
        start.wait()
        results.append(acquire(registry, 512))

    threads = [threading.Thread(target=run) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len({record.id for record, _ in results}) == 1
    assert sorted(reused for _, reused in results) == [False, True, True]
    assert len(registry.servers()) == 1


def hold_lease(registry: ServerRegistry, server_id: str) -> subprocess.Popen[str]:
    """Another live run: a process holding the lease on `server_id` until it is killed."""
    holder = subprocess.Popen(
        [
            sys.executable, "-c",
            "import sys, time; from pathlib import Path; from flowperf.locking import Lease; "
            "lease = Lease(Path(sys.argv[1])); print('held', flush=True); time.sleep(120)",
            str(registry.lease_path(server_id)),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    assert holder.stdout is not None and holder.stdout.readline() == "held\n"
    return holder


def test_eviction_never_stops_a_server_a_live_run_holds(registry: ServerRegistry) -> None:
    held, _ = acquire(registry, 512)
    idle, _ = acquire(registry, 1024)
    assert held.last_used_at < idle.last_used_at  # `held` is the least recently used
    holder = hold_lease(registry, held.id)
    try:
        third, _ = acquire(registry, 1536, max_servers=2)
        assert is_our_server(held) and not is_our_server(idle)  # the idle one went, though newer
        assert {r.id for r in registry.servers()} == {held.id, third.id}
        with pytest.raises(UserError, match=r"--max-servers 1: every running server is in use by a live run"):
            acquire(registry, 2048, max_servers=1)
        assert is_our_server(held)
    finally:
        holder.kill()
        holder.wait()
    # a run that died (even by SIGKILL) holds nothing: its server is idle again
    fourth, _ = acquire(registry, 2048, max_servers=1)
    assert [r.id for r in registry.servers()] == [fourth.id] and not is_our_server(held)


def test_a_run_that_ends_marks_its_server_most_recently_used(registry: ServerRegistry) -> None:
    first, _, lease = registry.lease(
        EngineConfig(max_model_len=512), MODEL, port=None, max_servers=3, start_timeout_s=30
    )
    second, _ = acquire(registry, 1024)
    registry.release(first, lease)
    acquire(registry, 1536, max_servers=2)  # evicts the least recently used: `second`, not `first`
    assert is_our_server(first) and not is_our_server(second)


KILLER = """
import os, sys
import fake_vllm_server
from pathlib import Path
from flowperf.config import EngineConfig
from flowperf.engines import server
import psutil
from flowperf.run.interrupts import kill_descendants
server.server_arguments = fake_vllm_server.fake_arguments
registry = server.ServerRegistry(home=Path(sys.argv[1]))
model = Path("/models/tiny")
record, _ = registry.acquire(EngineConfig(), model, port=None, max_servers=3, start_timeout_s=30)
print(record.pid, flush=True)
kill_descendants()  # what a second Ctrl-C does before os._exit
for child in psutil.Process().children(recursive=True):  # and what a tree kill (a supervisor) does
    child.kill()
os._exit(130)
"""


def test_a_started_server_survives_the_killing_of_the_run_s_descendants(
    registry: ServerRegistry, tmp_path: Path
) -> None:
    env = os.environ | {
        "PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")])
    }
    done = subprocess.run(
        [sys.executable, "-c", KILLER, str(tmp_path)], capture_output=True, text=True, env=env, timeout=60
    )
    assert done.returncode == 130, done.stderr
    pid = int(done.stdout)
    time.sleep(0.2)
    (record,) = registry.servers()  # alive and still ours: the registry's own check
    assert record.pid == pid and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE


def acquire_set(registry: ServerRegistry, replicas: int, gpus_per_replica: int = 1, **options):
    limits = {"port": None, "max_servers": 4, "start_timeout_s": 30} | options
    return registry.acquire_set(
        EngineConfig(max_model_len=512), MODEL, replicas=replicas, gpus_per_replica=gpus_per_replica, **limits
    )


def test_a_replica_set_starts_together_and_is_reused_as_a_set(registry: ServerRegistry) -> None:
    started = time.monotonic()
    members, reused = acquire_set(registry, 3)
    assert time.monotonic() - started < 3 * fake_vllm_server.START_DELAY_S  # their start-ups overlap
    assert not reused and [m.replica for m in members] == [0, 1, 2]
    assert len({m.port for m in members}) == 3 and len({m.replica_set for m in members}) == 1
    assert all(m.devices is None and m.ready for m in members)  # no GPU here: nothing to pin
    again, reused = acquire_set(registry, 3)
    assert reused and [m.id for m in again] == [m.id for m in members]
    assert registry.set_urls(None) == [m.base_url for m in members]
    lone, _ = acquire(registry, 512, max_servers=4)  # a plain run never takes a set's member
    assert lone.replica_set is None and lone.id not in {m.id for m in members}
    assert registry.set_urls(members[0].replica_set) == [m.base_url for m in members]
    with pytest.raises(UserError, match="no running replica set with id nope"):
        registry.set_urls("nope")


def test_a_set_restarts_only_its_missing_members(registry: ServerRegistry) -> None:
    members, _ = acquire_set(registry, 2)
    registry.stop(members[1].id)
    again, reused = acquire_set(registry, 2)
    assert not reused and again[0].id == members[0].id and again[1].id != members[1].id


def test_each_replica_sees_only_its_own_gpus(
    registry: ServerRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(server_module, "gpu_count", lambda: 4)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    members, _ = acquire_set(registry, 2, gpus_per_replica=2)
    assert [m.devices for m in members] == ["0,1", "2,3"]
    seen = [psutil.Process(m.pid).environ().get("CUDA_VISIBLE_DEVICES") for m in members]
    assert seen == ["0,1", "2,3"]
    assert "replica 1 of set" in members[1].placement and "on GPUs 2,3" in members[1].placement
    assert members[1].set_slot == f"{members[1].replica_set}/1 GPUs 2,3"


def test_replicas_follow_the_gpus_this_process_may_use(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5,6,7")
    assert server_module.replica_devices(2, 2, 4) == ["4,5", "6,7"]
    assert server_module.replica_devices(3, 1, 4) == ["4", "5", "6"]
    assert server_module.replica_devices(2, 1, 0) == [None, None]


@pytest.mark.parametrize(
    ("replicas", "gpus_per_replica", "gpus", "extra", "message"),
    [
        (3, 2, 4, {}, r"--replicas 3 x --gpus-per-replica 2: only 4 GPU\(s\) here"),
        (1, 2, 0, {}, "--gpus-per-replica 2: no GPU on this machine"),
        (2, 2, 4, {"tensor_parallel_size": 4}, r"--gpus-per-replica 2: the engine arguments use 4 GPU\(s\)"),
        (5, 1, 8, {}, "--replicas 5: more than --max-servers 4"),
    ],
)
def test_impossible_sets_are_refused_before_anything_starts(
    registry: ServerRegistry,
    monkeypatch: pytest.MonkeyPatch,
    replicas,
    gpus_per_replica,
    gpus,
    extra,
    message,
) -> None:
    monkeypatch.setattr(server_module, "gpu_count", lambda: gpus)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    with pytest.raises(UserError, match=message):
        registry.acquire_set(
            EngineConfig(extra_engine_args=extra), MODEL, replicas=replicas,
            gpus_per_replica=gpus_per_replica, port=None, max_servers=4, start_timeout_s=30,
        )  # fmt: skip
    assert registry.servers() == []


def test_gpus_per_replica_means_tensor_parallel_unless_the_engine_args_say_otherwise() -> None:
    assert server_module.replica_settings(EngineConfig(), 2).extra_engine_args == {"tensor_parallel_size": 2}
    pipelined = EngineConfig(extra_engine_args={"pipeline_parallel_size": 2})
    assert server_module.replica_settings(pipelined, 2) == pipelined
    assert server_module.replica_settings(EngineConfig(), 1) == EngineConfig()


def test_a_member_that_cannot_start_stops_the_ones_started_with_it(registry: ServerRegistry) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        with pytest.raises(UserError, match=f"--server-port {port}: 127.0.0.1:{port} is already in use"):
            acquire_set(registry, 2, port=port - 1)
    assert registry.servers() == []
    assert not any(
        server_module.SERVER_MODULE in " ".join(p.info["cmdline"] or [])
        and str(port - 1) in (p.info["cmdline"] or [])
        for p in psutil.process_iter(["cmdline"])
    )
