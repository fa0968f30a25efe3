#!/usr/bin/env bash
# The main job: set up .venv if needed, then run the benchmark on the embedded default model.
#
#   NUM_FLOWS=25 MODE=standalone bash scripts/run.sh [extra `bench run` flags]
#
# NUM_FLOWS  workflows to run (default 25)
# MODE       standalone: the in-process vLLM engine (default)
# Extra arguments are passed to `bench run` (e.g. --concurrency 8, --flow plan_draft_check).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh base

MODE=${MODE:-standalone}
case "$MODE" in
  standalone) ;;
  *)
    echo "error: MODE=$MODE is not supported yet (available: standalone)" >&2
    exit 2
    ;;
esac

exec .venv/bin/bench run --num-flows "${NUM_FLOWS:-25}" "$@"
