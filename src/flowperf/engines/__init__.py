"""Inference engines behind one protocol, so the runner never knows which one it drives.

Owns: the protocol (`base`), the in-process vLLM engine (`vllm_local`), the OpenAI HTTP client
(`openai_http`), the managed local server (`server`), stream timing (`streaming.StreamTimer`), the
engine's iteration log, vLLM's engine arguments (`engine_args`), the tiny model and model presets.
A new engine is a new module here implementing `base.Engine`.
May import: config, errors, paths, locking, rundir (durable writes).
Must not import: cli, run, outputs, modes, flows, workers, diagnostics, stress.
"""
