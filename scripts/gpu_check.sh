#!/usr/bin/env bash
# The GPU check: every figure that needs a GPU, in under 9 minutes on one H100/H200, as JSON under $OUT.
#   OUT=/tmp/gpu bash scripts/gpu_check.sh            # on a CUDA machine (random weights: nothing is downloaded)
#   OUT=/tmp/gpu bash scripts/gpu_check.sh --smoke    # tiny sizes on CPU, seconds (the test suite runs this)
# Parts (benchmarks/gpu_check.py): latency (Qwen2.5-7B shape vs the paper's Table 7, compress at 120K),
# fqlora (one 4-bit FQLoRA step of the 7B shape), reuse (16 questions on one memory), bf16 (an RL step of a tiny
# bf16 policy at LR 1e-6: float32 master weights move every tensor, the save is bf16), then summary:
# $OUT/gpu_check.json and gpu_check.md. Each part runs in its own process under a time limit, so one slow
# part cannot take the others down; the latency part saves its JSON after every length, so a part cut short by
# its limit still reports the lengths it finished (status "partial: ..."). On a machine without package access, wheels in $MEMCOMP_WHEELS
# (default .whl/, e.g. bitsandbytes) are installed into a temporary folder first.
set -uo pipefail

cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
OUT="${OUT:-gpu_check_out}"
SMOKE=()
LIMITS=(240 170 90 40)   # seconds for latency, fqlora, reuse, bf16: at most 9 min in all, with the summary
if [ "${1:-}" = "--smoke" ]; then SMOKE=(--smoke); LIMITS=(240 240 240 240); fi
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1

WHEELS="${MEMCOMP_WHEELS:-.whl}"
if compgen -G "$WHEELS/*.whl" > /dev/null; then
  SITE="$(mktemp -d)"
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$SITE" "$WHEELS"/*.whl \
    && export PYTHONPATH="$PYTHONPATH:$SITE"
fi

status=0
for i in 0 1 2 3; do
  part=(latency fqlora reuse bf16)
  part="${part[$i]}"
  timeout "${LIMITS[$i]}" "$PYTHON" -m benchmarks.gpu_check --part "$part" --output_dir "$OUT" "${SMOKE[@]}" \
    || { echo "gpu_check: part $part failed or ran out of time (exit $?)" >&2; status=1; }
done
"$PYTHON" -m benchmarks.gpu_check --part summary --output_dir "$OUT" "${SMOKE[@]}" || status=1
exit $status
