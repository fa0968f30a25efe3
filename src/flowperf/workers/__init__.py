"""Client workers: the measured window's load sent from several processes (or Ray actors) at once.

`plan` shares the sessions out, `session` is what each worker runs, `processes` and `ray_actors` are the
two ways to host workers, `clock` aligns a worker's monotonic clock with the coordinator's, and `pool` is
the coordinator: it starts the workers, sets the one window start, and takes their records in.

May import: config, errors, engines, flows, run (the runner each worker runs), rundir.
Must not import: cli, outputs, modes, diagnostics, stress.
"""
