"""The run directory contract: records, durable writes, reading back, summaries.

Owns: every record kind (`records`), the store and its file names, durable appends, reading a run back
(`rundata`), the summary and its schema, live summaries, SLO verdicts. Everything else reads and writes
a run directory through this package, so it is the bottom of the stack.
May import: errors, stats.
Must not import: config, cli, run, outputs, modes, engines, flows, workers, diagnostics, stress.
"""
