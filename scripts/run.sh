#!/usr/bin/env bash
# The main job: set up .venv if needed, then run the benchmark on the embedded default model.
#
#   NUM_FLOWS=25 MODE=standalone bash scripts/run.sh [extra `bench run` flags]
#
# NUM_FLOWS  workflows to run (default 25)
# MODE       standalone: the in-process vLLM engine (default)
#            server: a persistent local vLLM server, started on first use and reused by later runs
#            (see `bench serve status`, `bench serve stop --all`)
# Extra arguments are passed to `bench run` (e.g. --concurrency 8, --flow plan_draft_check).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh base

MODE=${MODE:-standalone}
case "$MODE" in
  standalone) engine=vllm ;;
  server) engine=server ;;
  *)
    echo "error: MODE=$MODE is not a mode (expected standalone or server)" >&2
    exit 2
    ;;
esac

exec .venv/bin/bench run --engine "$engine" --num-flows "${NUM_FLOWS:-25}" "$@"
