"""Where flowperf keeps state that outlives a run: built models, server state. `FLOWPERF_HOME` overrides."""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs


def flowperf_home() -> Path:
    """The user cache directory for flowperf (created on demand by whoever writes into it)."""
    override = os.environ.get("FLOWPERF_HOME")
    if override:
        return Path(override).expanduser()
    return Path(platformdirs.user_cache_dir("flowperf", appauthor=False))
