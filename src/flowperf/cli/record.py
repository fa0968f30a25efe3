"""`bench record`: the command's flags, its ready line and its closing summary; the proxy is
`flowperf.sessions.record`.
"""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path
from typing import Annotated

import typer

from flowperf.cli.common import err_console, out_console, print_warning
from flowperf.errors import EXIT_INTERRUPTED, UserError


def parse_listen(listen: str) -> tuple[str, int]:
    host, _, port = listen.rpartition(":")
    if not host or not port.isdigit() or int(port) > 65535:
        raise UserError(f"--listen {listen}: expected HOST:PORT, e.g. 127.0.0.1:8001 (port 0: any free one)")
    return host, int(port)


async def _serve(settings) -> str:
    """Run the proxy until SIGINT or SIGTERM; return the summary line."""
    from flowperf.sessions.record import RecordingProxy

    proxy = RecordingProxy(settings, print_warning)
    url = await proxy.start()
    out_console.print(f"recording {settings.upstream} at {url} (point clients at {url}/v1) to {settings.out}")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for number in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(number, stop.set)
    try:
        await stop.wait()
    finally:
        await proxy.stop()
    return proxy.totals.line(settings.out)


def record(
    upstream: Annotated[
        str, typer.Option(help="The server to record, e.g. http://127.0.0.1:8000 (a trailing /v1 is fine).")
    ],
    out: Annotated[Path, typer.Option(help="The session trace to write (JSON Lines); must not exist.")],
    listen: Annotated[
        str, typer.Option(help="HOST:PORT to listen on; point the agent's base URL at http://HOST:PORT/v1.")
    ] = "127.0.0.1:8001",
    tokenizer: Annotated[
        Path | None,
        typer.Option(
            help="A local Hugging Face tokenizer for the hash ids (default: the upstream's /tokenize)."
        ),
    ] = None,
    keep_text: Annotated[
        bool,
        typer.Option("--keep-text", help="Also store prompts, messages and outputs."),
    ] = False,
    block_size: Annotated[int, typer.Option(min=1, help="Prompt tokens per KV-block hash id.")] = 64,
) -> int:
    """Record an agent's sessions: an OpenAI-compatible proxy that forwards every request unchanged and
    writes one session-trace line per answered chat/completions request (see README, "Recording your
    agent"). Stop it with Ctrl-C (exit 130 after a one-line summary)."""
    from flowperf.sessions.record import RecordSettings

    host, port = parse_listen(listen)
    settings = RecordSettings(
        upstream=upstream, out=out, host=host, port=port, tokenizer=tokenizer, keep_text=keep_text,
        block_size=block_size,
    )  # fmt: skip
    try:
        import uvloop
    except ImportError:
        line = asyncio.run(_serve(settings))
    else:
        line = uvloop.run(_serve(settings))
    err_console.print(line)
    return EXIT_INTERRUPTED
