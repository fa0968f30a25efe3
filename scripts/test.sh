#!/usr/bin/env bash
# The tests: set up .venv with test dependencies if needed, lint, then the whole suite on the real engine.
#   bash scripts/test.sh [pytest arguments]
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh test

.venv/bin/ruff check .
.venv/bin/ruff format --check .
# pytest exits 5 when no tests ran; with `set -e` that fails the script, as it should.
exec .venv/bin/python -m pytest "$@"
