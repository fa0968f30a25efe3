"""`bench serve start|status|urls|stop|logs`: persistent local vLLM servers, started once and reused by
`bench run --engine server`; the work is in `flowperf.engines.server`.
"""

from __future__ import annotations

import json
import time
from typing import Annotated

import typer

from flowperf.cli.common import (
    config_from_flags,
    echo_line,
    err_console,
    out_console,
    print_error,
    show_help_without_command,
)
from flowperf.cli.options import (
    ENGINE,
    MODEL,
    ConfigFileOption,
    ConfigFlags,
    with_options,
    without,
)
from flowperf.engines.base import EngineError
from flowperf.errors import EXIT_ENGINE_FAILED
from flowperf.outputs.tables import TableSpec, print_table
from flowperf.run.timing import TimingLog


@with_options(MODEL, without(ENGINE, "--pin-harness"))  # a server: not in process
def serve_start(
    config_file: ConfigFileOption = None,
    *,
    flags: ConfigFlags,
    replicas: Annotated[
        int, typer.Option("--replicas", min=1, help="Servers of this configuration, started as a set.")
    ] = 1,
    gpus_per_replica: Annotated[
        int, typer.Option("--gpus-per-replica", min=1, help="GPUs pinned to each (CUDA_VISIBLE_DEVICES).")
    ] = 1,
) -> None:
    """Start a vLLM server on 127.0.0.1 for this model and engine configuration, or reuse a running one;
    with --replicas N, a set of N, each on its own GPUs (`bench serve urls` prints their addresses)."""
    from flowperf.engines.server import ServerRegistry
    from flowperf.run.benchmark import resolve_model

    config = config_from_flags(flags | {"engine.kind": "server"}, config_file)
    resolved = resolve_model(config, TimingLog(echo_line))
    assert resolved.path is not None
    started = time.perf_counter()
    with err_console.status("starting the vLLM server (waiting for /health) ..."):
        try:
            records, reused = ServerRegistry().start(
                config.engine,
                resolved.path,
                replicas=replicas,
                gpus_per_replica=gpus_per_replica,
                port=config.engine.server_port,
                max_servers=config.engine.max_servers,
                start_timeout_s=config.engine.server_start_timeout_s,
            )
        except EngineError as error:
            print_error(str(error))
            raise typer.Exit(EXIT_ENGINE_FAILED) from None
    TimingLog(echo_line).emit("server_start_ms", (time.perf_counter() - started) * 1000.0, reused=reused)
    for record in records:
        out_console.print(
            f"server {record.id} {'already running' if reused else 'ready'} at {record.base_url} "
            f"(pid {record.pid}, model {record.model}, log {record.log_path}{record.placement})"
        )


def serve_status(
    as_json: Annotated[bool, typer.Option("--json", help="Print the servers as JSON.")] = False,
) -> None:
    """List the servers flowperf is keeping alive, with their health."""
    from flowperf.engines.server import ServerRegistry, healthy

    servers = ServerRegistry().servers()
    rows = [record.model_dump() | {"healthy": healthy(record)} for record in servers]
    if as_json:
        out_console.print_json(json.dumps(rows))
        return
    if not servers:
        out_console.print("no flowperf server is running")
        return
    header = ("id", "set", "pid", "address", "healthy", "up", "last used", "model")
    now = time.time()
    cells = []
    for row, record in zip(rows, servers, strict=True):
        cells.append(
            (
                row["id"],
                record.set_slot or "-",
                str(row["pid"]),
                f"{row['host']}:{row['port']}",
                "yes" if row["healthy"] else ("starting" if not row["ready"] else "NO"),
                f"{(now - row['started_at']) / 60:.0f} min",
                f"{(now - row['last_used_at']) / 60:.0f} min ago",
                row["model"],
            )
        )
    print_table(out_console, TableSpec("", header, cells, left=("id", "set", "address", "healthy", "model")))


def serve_urls(
    set_id: Annotated[str | None, typer.Argument(help="Replica set id. Default: the only one.")] = None,
) -> None:
    """Print the base URLs of a replica set (`bench serve start --replicas N`), one a line."""
    from flowperf.engines.server import ServerRegistry

    for url in ServerRegistry().set_urls(set_id):
        print(url)


def serve_stop(
    server_id: Annotated[str | None, typer.Argument(help="Server id (see `bench serve status`).")] = None,
    everything: Annotated[bool, typer.Option("--all", help="Stop every flowperf server.")] = False,
) -> None:
    """Stop a server (the only one, or the one named), or all of them."""
    from flowperf.engines.server import ServerRegistry

    stopped = ServerRegistry().stop(server_id, everything=everything)
    for record in stopped:
        out_console.print(f"stopped server {record.id} (pid {record.pid}, port {record.port})")
    if not stopped:
        out_console.print("no flowperf server is running")


def serve_logs(
    server_id: Annotated[
        str | None, typer.Argument(help="Server id. Default: the most recently used.")
    ] = None,
    lines: Annotated[int, typer.Option("--lines", "-n", min=1, help="How many lines from the end.")] = 50,
) -> None:
    """Print the end of a server's log."""
    from flowperf.engines.server import ServerRegistry, log_tail

    record = ServerRegistry().find(server_id)
    print(log_tail(record.log_path, lines))


def register(app: typer.Typer) -> None:
    serve_app = typer.Typer(
        help="Persistent local vLLM servers: started once, reused by `bench run --engine server` across runs."
    )
    serve_app.callback(invoke_without_command=True)(show_help_without_command)
    for name, command in (
        ("start", serve_start),
        ("status", serve_status),
        ("urls", serve_urls),
        ("stop", serve_stop),
        ("logs", serve_logs),
    ):
        serve_app.command(name)(command)
    app.add_typer(serve_app, name="serve")
