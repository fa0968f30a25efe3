"""bench sweep: one run per load level, capacity within SLOs.

Owns: the level schedule (`levels`), each level's run and measurement (`run`, `measure`), the sweep's
stored rows (`store`) and its table (`report`).
May import: config, errors, stats, rundir, run, engines, outputs, cli (options.py's option groups),
sessions (whether a trace is a session trace).
Must not import: stress, diagnostics, workers.
"""
