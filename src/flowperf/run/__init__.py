"""The run core: prepare, execute and finalize one measured run.

Owns: `benchmark` (prepare/execute/finalize), the runner and its sinks, workflow state, the critical path,
interrupts, the resource monitor, timing lines and deferred work.
May import: config, errors, paths, stats, rundir, engines, flows, workers, diagnostics (the ceiling check).
Must not import: cli, outputs, modes, stress.
"""
