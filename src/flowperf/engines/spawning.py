"""Send the engine's start-up chatter to a log file instead of the user's terminal.

vLLM logs to stdout (where [TIMING] lines go) and its engine-core processes inherit the parent's file
descriptors when they are spawned. Pointing descriptors 1 and 2 at a log file while the engine starts
therefore sends everything the engine processes ever print to that file, while the harness gets its own
terminal back as soon as the engine is up.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
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
