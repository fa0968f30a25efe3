"""Agent sessions: the session-trace format, importers of other trace formats, trace statistics, the
recording proxy, and the workflow source that replays sessions.

Owns: `format` (the flowperf-sessions JSON Lines format, read and written), `importers/` (one module per
foreign format), `stats` (trace figures as pure functions), `shipped` (the synthetic samples by name).
May import: errors, validation, stats, paths, config, rundir, engines, flows, stress (its trace loaders).
Must not import: cli, run, outputs, modes, workers, diagnostics.
"""
