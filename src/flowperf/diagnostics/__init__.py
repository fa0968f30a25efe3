"""bench doctor: this host's findings, and the client ceiling measured on the mock server.

Owns: `doctor` (host checks), `ceiling` (the client's own throughput limit), `mockserver` (a deterministic
mock OpenAI server, also used by tests and benchmarks).
May import: config, errors, paths, engines, flows.
Must not import: cli, run, outputs, modes, workers, stress.
"""
