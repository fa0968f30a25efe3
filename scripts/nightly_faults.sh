#!/usr/bin/env bash
# Nightly-style fault injection: many more seeded SIGKILL-then-resume trials than the test suite runs,
# against a managed server (seconds a trial) and on the default in-process engine (an engine start a trial).
#   TRIALS=100 INPROCESS_TRIALS=10 SEED=$(date +%s) bash scripts/nightly_faults.sh
# Each trial starts `bench run` (or `--resume`), SIGKILLs its process group at a random point, and checks
# the run directory; a final resume must leave every workflow exactly once with a valid summary.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh test
export FLOWPERF_KILL_TRIALS=${TRIALS:-100}
export FLOWPERF_INPROCESS_KILL_TRIALS=${INPROCESS_TRIALS:-10}
export FLOWPERF_KILL_SEED=${SEED:-20261122}
echo "fault injection: $FLOWPERF_KILL_TRIALS server + $FLOWPERF_INPROCESS_KILL_TRIALS in-process trials," \
  "seed $FLOWPERF_KILL_SEED" >&2
exec .venv/bin/python -m pytest tests/test_signals.py -k sigkill -q "$@"
