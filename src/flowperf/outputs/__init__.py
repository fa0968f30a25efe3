"""What a person reads: terminal and HTML reports, plots, comparisons of runs.

Owns: `report` (terminal and HTML), `plots`, `compare` (runs and sweeps side by side), the HTML templates.
A new output format goes here, reading runs through rundir/.
May import: config, errors, stats, rundir, run (the critical path), modes (a sweep's stored rows), cli
(options.html_path only).
Must not import: engines, workers, flows, diagnostics, stress.
"""
