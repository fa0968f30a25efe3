"""How the engine's child processes are born: quiet, and deaf to the terminal's Ctrl-C.

vLLM's engine core and its worker run in processes spawned while the engine starts, and they inherit two
things from the spawning thread that the harness controls here:

- File descriptors. vLLM logs to stdout (where [TIMING] lines go); pointing descriptors 1 and 2 at
  engine.log while the engine starts sends everything those processes ever print there, and the harness
  gets its terminal back as soon as the engine is up.
- The signal mask. A terminal's Ctrl-C goes to the whole foreground process group, and vLLM's processes
  exit on SIGINT, which would fail every in-flight step before the harness could stop gracefully.
  Spawning them with SIGINT blocked (a blocked mask survives fork and exec, and vLLM's own handlers do
  not unblock it) leaves the stop to the harness, which shuts the engine down itself (with SIGTERM).
  The harness still hears Ctrl-C meanwhile: a helper thread keeps SIGINT unblocked, the kernel delivers
  it there, and Python runs the handler in the main thread as usual. multiprocessing's resource tracker
  is started first because starting it *unblocks* SIGINT in the calling thread afterwards (it assumes
  nothing blocked it before), which would undo the block for every process spawned after it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from collections.abc import Iterator
from multiprocessing import resource_tracker
from pathlib import Path


@contextlib.contextmanager
def output_redirected_to(log_path: Path | None) -> Iterator[None]:
    """Redirect file descriptors 1 and 2 to `log_path` (appending) for the duration of the block."""
    if log_path is None:
        yield
        return
    sys.stdout.flush()
    sys.stderr.flush()
    saved_out, saved_err = os.dup(1), os.dup(2)
    try:
        with open(log_path, "ab") as log:
            os.dup2(log.fileno(), 1)
            os.dup2(log.fileno(), 2)
        yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved_out, 1)
        os.dup2(saved_err, 2)
        os.close(saved_out)
        os.close(saved_err)


@contextlib.contextmanager
def children_deaf_to_sigint() -> Iterator[None]:
    """Processes spawned from this (main) thread inside the block never receive SIGINT."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    resource_tracker.ensure_running()
    release = threading.Event()
    listener = threading.Thread(target=release.wait, name="sigint-listener", daemon=True)
    listener.start()
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)
        release.set()
        listener.join()
