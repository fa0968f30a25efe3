"""One way to reach Ray for every command that uses it (`bench stress --executor ray`, client workers).

`connected(address, num_cpus)` joins the cluster at `address`, the one this process is already connected
to, or a local one started here; what it opened it closes again on exit.
"""

from __future__ import annotations

import importlib.util
import logging
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from flowperf.errors import UserError


def check_reachable(address: str) -> None:
    """Fail fast on a `host:port` nobody listens at; Ray itself would wait for minutes before giving up."""
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        return  # "auto", "ray://...", and other forms Ray resolves itself
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except OSError as error:
        raise UserError(f"--ray-address: nothing answers at {address} ({error.strerror or error})") from None


def check_available(address: str | None) -> None:
    """Before anything is written: Ray installed, and the cluster named (if any) answering."""
    if importlib.util.find_spec("ray") is None:
        raise UserError("--executor ray: Ray is not installed; pip install 'flowperf[ray]'")
    if address:
        check_reachable(address)


def import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise UserError("--executor ray: Ray is not installed; pip install 'flowperf[ray]'") from None
    return ray


@contextmanager
def connected(address: str | None, num_cpus: int) -> Iterator[Any]:
    """The `ray` module, connected; a local cluster gets `num_cpus` logical CPUs."""
    ray = import_ray()
    started_here = not ray.is_initialized()
    if started_here:
        options: dict[str, Any] = {
            "include_dashboard": False,
            "log_to_driver": False,
            "logging_level": logging.ERROR,  # not Ray's start-up chatter in the middle of a run's output
        }
        if address:
            check_reachable(address)
            ray.init(address=address, **options)
        else:
            ray.init(num_cpus=num_cpus, **options)
    try:
        yield ray
    finally:
        if started_here:
            ray.shutdown()
