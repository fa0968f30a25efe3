"""What the CLI process may import before it starts an in-process vLLM engine.

vLLM's CPU worker, at start-up, scans every module in `sys.modules` and reads `vars()` of each module
attribute; llvmlite (numba's back end) has an attribute whose `__dict__` is not a dict, and the worker
dies with "'_lib_fn_wrapper' object has no attribute 'get'". So numba must stay off the import path of
`bench run`: the simulator loads it only when `bench stress` runs.
"""

from __future__ import annotations

import subprocess
import sys


def test_the_cli_does_not_import_numba_or_llvmlite() -> None:
    probe = (
        "import sys, flowperf.cli.main; print(sorted(m for m in ('numba', 'llvmlite') if m in sys.modules))"
    )
    completed = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert completed.stdout.strip() == "[]"
