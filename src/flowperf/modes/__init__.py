"""Load modes built on the run core: one package per mode (`ab`, `sweep`); a new mode is a new package.

Owns: how a mode drives runs (run/benchmark) and judges them, and its own stored results.
May import: config, errors, stats, rundir, run, engines, outputs, cli (the option groups in options.py).
Must not import: stress, diagnostics, workers.
"""
