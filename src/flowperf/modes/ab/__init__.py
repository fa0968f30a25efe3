"""bench ab: two configurations interleaved in blocks on one engine.

Owns: the interleaved schedule and its runs (`run`), the paired statistics (`stats`), the verdict table
(`report`).
May import: config, errors, stats, rundir, run, engines, outputs, cli (options.py's option groups),
sessions (whether a trace is a session trace).
Must not import: stress, diagnostics, workers.
"""
