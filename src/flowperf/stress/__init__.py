"""Cluster stress simulator: how many GPUs a traffic pattern needs at a latency SLA, and what batching buys.

The simulator replays request arrivals against N identical GPUs under a batching policy and a linear
service-time model, fast enough to sweep millions of requests across schedulers and cluster sizes in seconds.

Owns: the simulator, its workloads and traces, calibration from real runs and validation against them,
and `bench stress` (`stress/cli.py`). Loaded only when `bench stress` runs (numba must stay off the path of
`bench run`).
May import: errors, stats, rundir (to read real runs), workers (ray_cluster, the shared Ray connection),
outputs (tables, to print them as every command does).
Must not import: cli, run, modes, engines, flows, diagnostics, config.
"""
