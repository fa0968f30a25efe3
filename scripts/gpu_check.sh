#!/usr/bin/env bash
# GPU verification, from a fresh clone on a machine with an NVIDIA GPU and access to PyPI:
#
#   bash scripts/gpu_check.sh
#
# Installs the CUDA build of vLLM (scripts/setup.sh; ENGINE_PKG overrides), runs `bench doctor`, then the
# tiny model and one model preset each with CUDA graphs on (capture sizes $SIZES) and off
# (--no-cuda-graphs), and checks in every run directory: the CUDA-graph mode really in effect and the
# capture sizes (config.json's engine info), NVML GPU samples in metrics.jsonl, every workflow ok. Prints
# the decode speed-up from CUDA graphs (p50 TPOT eager / graphs) per model. Exits 1 on any mismatch
# (including graphs that do not speed decode up), 2 where there is no GPU. About 5 minutes after set-up.
#
#   PRESET=qwen2.5-0.5b  SIZES=1,2,4,8  NUM_FLOWS=8  MAX_TOKENS=64  OUT=runs/gpu-check-<time>
#   bash scripts/gpu_check.sh --check RUN_DIR graphs|eager   # the checks alone, on one run directory
set -euo pipefail
cd "$(dirname "$0")/.."

PRESET=${PRESET:-qwen2.5-0.5b}
SIZES=${SIZES:-1,2,4,8}
NUM_FLOWS=${NUM_FLOWS:-8}
MAX_TOKENS=${MAX_TOKENS:-64}
OUT=${OUT:-runs/gpu-check-$(date +%Y%m%d-%H%M%S)}

# One run directory against what its mode promises; prints `tpot_p50_ms=X` last; exit 1 on a mismatch.
check_run() {
  local python=python3
  [ -x .venv/bin/python ] && python=.venv/bin/python
  "$python" - "$1" "$2" "$SIZES" <<'PY'
import json, sys
from pathlib import Path

run_dir, mode, sizes = Path(sys.argv[1]), sys.argv[2], [int(s) for s in sys.argv[3].split(",")]
problems = []
def read(name):
    try:
        return json.loads((run_dir / name).read_text())
    except (OSError, ValueError) as error:
        problems.append(f"{name} unreadable ({error})")
        return {}
engine = read("config.json").get("engine") or {}
summary = read("summary.json")
details = engine.get("details") or {}
graph_mode, captured = engine.get("cuda_graph_mode"), details.get("cudagraph_capture_sizes")
if engine.get("device") != "cuda":
    problems.append(f"device is {engine.get('device')!r}, not 'cuda'")
if mode == "graphs":
    if graph_mode in (None, "none"):
        problems.append(f"CUDA graphs asked for but the mode in effect is {graph_mode!r}")
    if captured != sizes:
        problems.append(f"capture sizes {captured} in effect, {sizes} asked for")
    if details.get("enforce_eager") is not False:
        problems.append(f"enforce_eager is {details.get('enforce_eager')!r} with CUDA graphs on")
else:
    if graph_mode != "none" or captured or details.get("enforce_eager") is not True:
        problems.append(f"--no-cuda-graphs but mode {graph_mode!r}, sizes {captured}, "
                        f"enforce_eager {details.get('enforce_eager')!r}")
try:
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
except (OSError, ValueError) as error:
    lines = []
    problems.append(f"metrics.jsonl unreadable ({error})")
gpu_samples = sum(1 for line in lines if line.get("type") == "sample" and line.get("gpus"))
if not gpu_samples:
    info = [line.get("reason") for line in lines if line.get("type") == "gpu_info"]
    problems.append(f"no NVML GPU samples in metrics.jsonl (gpu_info: {info})")
counts = summary.get("counts") or {}
if summary.get("status") != "complete" or counts.get("workflows_failed", 1) or not counts.get("workflows_ok"):
    problems.append(f"run {summary.get('status')!r}, {counts.get('workflows_failed')} workflow(s) failed")
tpot = ((summary.get("latency") or {}).get("tpot_ms") or {}).get("p50")
for problem in problems:
    print(f"MISMATCH {run_dir}: {problem}")
print(f"{'ok' if not problems else 'FAILED'} {run_dir}: mode={graph_mode} capture_sizes={captured} "
      f"nvml_samples={gpu_samples} tpot_p50_ms={tpot}")
sys.exit(1 if problems or tpot is None else 0)
PY
}

if [ "${1:-}" = "--check" ]; then
  [ $# -eq 3 ] || { echo "usage: $0 --check RUN_DIR graphs|eager" >&2; exit 2; }
  check_run "$2" "$3"
  exit $?
fi

if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L; then
  echo "gpu_check: no NVIDIA GPU here (nvidia-smi -L failed); nothing to check" >&2
  exit 2
fi
# The CUDA build of the vLLM version flowperf is written and tested against (the CPU build's version).
export ENGINE_PKG=${ENGINE_PKG:-vllm==0.32.0}
source scripts/setup.sh base
mkdir -p "$OUT"
failed=0
summary="$OUT/gpu_check.txt"
: >"$summary"

.venv/bin/bench doctor --json >"$OUT/doctor.json" || failed=1
.venv/bin/python - "$OUT/doctor.json" "$PRESET" <<'PY' | tee -a "$summary" || failed=1
import json, sys
doctor = json.load(open(sys.argv[1]))
for key in ("vllm", "torch", "device", "cuda graphs", "nvml", "gpus", "nvidia driver", f"preset {sys.argv[2]}"):
    print(f"doctor {key}: {doctor.get(key)}")
bad = doctor.get("device") != "cuda" or not str(doctor.get("nvml", "")).endswith("GPU(s)")
print("MISMATCH doctor: no CUDA device or no NVML" if bad else "ok doctor")
sys.exit(1 if bad else 0)
PY

for model in tiny "$PRESET"; do
  model_args=()
  [ "$model" != tiny ] && model_args=(--model-preset "$model")
  declare -A tpot=()
  for mode in graphs eager; do
    mode_args=(--cuda-graph-sizes "$SIZES")
    [ "$mode" = eager ] && mode_args=(--no-cuda-graphs)
    echo "[gpu_check] $model, CUDA graphs: $mode" >&2
    timeout 300 .venv/bin/bench run "${model_args[@]}" "${mode_args[@]}" -n "$NUM_FLOWS" \
      --max-tokens "$MAX_TOKENS" --max-model-len 4096 --warmup 1 --out "$OUT" --run-id "$model-$mode" \
      --no-progress >"$OUT/$model-$mode.out" 2>&1 || echo "MISMATCH bench run $model $mode failed" | tee -a "$summary"
    line=$(check_run "$OUT/$model-$mode" "$mode" | tee -a "$summary") || failed=1
    tpot[$mode]=$(printf '%s\n' "$line" | sed -n 's/.*tpot_p50_ms=\([0-9.]*\)$/\1/p' | tail -n 1)
  done
  if [ -n "${tpot[graphs]}" ] && [ -n "${tpot[eager]}" ]; then
    verdict=$(awk -v g="${tpot[graphs]}" -v e="${tpot[eager]}" \
      'BEGIN { s = e / g; printf "%.2fx (p50 TPOT %.3f ms eager, %.3f ms graphs)", s, e, g; exit !(s > 1) }') \
      || { failed=1; verdict="$verdict: NO speed-up (MISMATCH)"; }
    echo "decode speed-up from CUDA graphs, $model: $verdict" | tee -a "$summary"
  else
    failed=1
    echo "MISMATCH $model: no TPOT to compare" | tee -a "$summary"
  fi
  unset tpot
done
grep -q MISMATCH "$summary" && failed=1
echo "[gpu_check] $([ $failed -eq 0 ] && echo passed || echo FAILED); results in $OUT (summary: $summary)" >&2
exit $failed
