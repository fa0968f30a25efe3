#!/usr/bin/env bash
# The tests: set up .venv with test dependencies if needed, lint, then the whole suite on the real engine.
#   bash scripts/test.sh [pytest arguments]
#   bash scripts/test.sh --tier fast     # no engine, server or child process: under 2 minutes
#   bash scripts/test.sh --tier middle   # plus the tests on the one in-process engine: under 6 minutes
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh test

# The HTML report is tested in a real headless browser: Debian's Chromium, installed here when missing.
# Where it cannot be installed, that test is skipped with the reason shown.
# (The fast tier has no browser test, so it skips this.)
fast_tier=0
case " $* " in *" --tier fast "* | *" --tier=fast "*) fast_tier=1 ;; esac
if [ "$fast_tier" -eq 0 ] && ! command -v chromium >/dev/null 2>&1; then
  echo "[test] installing Debian's chromium for the HTML report test" >&2
  apt_get="apt-get"
  [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1 && apt_get="sudo -n apt-get"
  $apt_get install -y -qq chromium >/dev/null 2>&1 \
    || { $apt_get update -qq >/dev/null 2>&1 && $apt_get install -y -qq chromium >/dev/null 2>&1; } \
    || echo "[test] chromium could not be installed; the browser test will be skipped" >&2
fi

.venv/bin/ruff check .
.venv/bin/ruff format --check .
# pytest exits 5 when no tests ran; with `set -e` that fails the script, as it should.
exec .venv/bin/python -m pytest "$@"
