#!/usr/bin/env bash
# Every check of the shift-wise operator that needs a CUDA GPU, in one command, from the source tree with
# only torch and triton (pytest is used when installed). Sized for one H100/H200 in about 5 minutes
# (an estimate: no GPU has run it yet; each step has its own time limit and the script goes on after a
# failure). Writes benchmarks/gpu-<date>.md: the static estimates beside the measured times.
#   1. compile every configuration of every kernel (sm_80, sm_90) and estimate it: tools/kernel_report.py
#   2. correctness at the four SW-T stage shapes: fp32 (ieee to 1e-5, tf32x3), bf16 (one rounding), both variants
#   3. determinism: deterministic mode gives bit-identical outputs and weight gradients in two processes
#   4. timings at stages 1 and 3, forward and forward+backward: every Triton variant, the PyTorch strips,
#      dense 51x51 depthwise and SLaK-style strips (tools/benchmark_op.py, with the estimates)
#   5. whole models (issue 16's GPU target): SW-T against the peers, interleaved, training step and deploy
#      inference, bf16 autocast and fp32, batch 64 (tools/benchmark.py)
#   6. pytest -m gpu over all test files
# Usage: bash scripts/gpu_checks.sh            (PYTHON=... to choose the interpreter)
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export OMP_WAIT_POLICY=PASSIVE
unset TRITON_INTERPRET
PY=${PYTHON:-python}
STAMP=$(date -u +%Y-%m-%d-%H%M)
WORK=${OUT:-gpu-results}
mkdir -p "$WORK" benchmarks
RES="benchmarks/gpu-$STAMP.md"
JOBS=$(nproc 2>/dev/null || echo 4)
status=0
step() { echo; echo "## $1" | tee -a "$RES"; echo | tee -a "$RES"; }
t0=$(date +%s)

{
  echo "# GPU checks of the shift-wise operator - $STAMP (UTC)"
  echo
  echo 'Command: `bash scripts/gpu_checks.sh`'
  echo
  "$PY" - <<'PYEOF'
import torch, triton
print("- torch", torch.__version__, "/ triton", triton.__version__, "/ CUDA", torch.version.cuda)
print("- device:", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "NO CUDA DEVICE")
PYEOF
} | tee "$RES"

step "1. Static report: every configuration compiled for sm_80 and sm_90 (estimates, H100 model)"
timeout 240 "$PY" tools/kernel_report.py --jobs "$JOBS" --json "$WORK/report.json" --markdown "$WORK/report.md" \
    --summary-only --quiet > "$WORK/report.txt" 2>&1 || { status=1; echo "kernel report FAILED" | tee -a "$RES"; }
sed -n '/^stage /,$p' "$WORK/report.txt" | sed 's/^/    /' | tee -a "$RES"

step "2. Correctness at the four stage shapes (oracle: the float64 PyTorch path on this GPU)"
timeout 240 "$PY" - <<'PYEOF' 2>&1 | tee -a "$RES" || status=1
import sys
from swtasks.analysis.gpu_checks import check_stage
ok = True
for stage in (1, 2, 3, 4):
    for dtype, variant, prec in (("fp32", "tc", "ieee"), ("fp32", "tc", "tf32x3"), ("fp32", "direct", "ieee"),
                                 ("bf16", "tc", "ieee"), ("bf16", "direct", "ieee")):
        try:
            good, line = check_stage(stage, dtype, variant, prec)
        except Exception as exc:  # report and go on
            good, line = False, f"stage {stage} {dtype} {variant} {prec}: ERROR {type(exc).__name__}: {exc}"
        ok &= good
        print("-", line, flush=True)
sys.exit(0 if ok else 1)
PYEOF
[[ ${PIPESTATUS[0]} -eq 0 ]] || status=1

step "3. Determinism across processes (deterministic=True)"
for args in "1,'bf16','tc'" "1,'fp32','tc'" "3,'bf16','tc'" "1,'fp32','direct'"; do
    a=$(timeout 120 "$PY" -c "from swtasks.analysis.gpu_checks import digest; print(digest($args))" 2>&1 | tail -1)
    b=$(timeout 120 "$PY" -c "from swtasks.analysis.gpu_checks import digest; print(digest($args))" 2>&1 | tail -1)
    if [[ "$a" == "$b" && ${#a} -eq 64 ]]; then verdict=identical; else verdict="DIFFERENT ($a / $b)"; status=1; fi
    echo "- ($args): two processes $verdict" | tee -a "$RES"
done

step "4. Timings, stages 1 and 3 (measured; est = static estimate of the kernel report, best sm_90 configuration)"
timeout 300 "$PY" tools/benchmark_op.py --device cuda --stages 1,3 --dtype fp32,bf16 --tf32 --repeats 5 \
    --max-cell-seconds 1.5 --no-memory --deterministic --estimates "$WORK/report.json" --markdown 2>"$WORK/benchmark.log" \
    | tee -a "$RES" || status=1

step "5. Whole models: SW-T vs the peers, batch 64 (tools/benchmark.py; target: SW-T training >= UniRepLKNet-T)"
MODELS="shiftwise_tiny unireplknet_t slak_t convnext_t"
timeout 150 "$PY" tools/benchmark.py $MODELS --skip-missing --device cuda --batch-size 64 --amp bf16 --repeats 5 \
    --modes inference,train_step --title "GPU, bf16 autocast, batch 64" --no-progress \
    --markdown "$WORK/models.md" --csv "$WORK/models_bf16.csv" 2>"$WORK/models.log" || status=1
timeout 120 "$PY" tools/benchmark.py $MODELS --skip-missing --device cuda --batch-size 64 --repeats 5 \
    --modes train_step --structures train --title "GPU, fp32, batch 64" --no-progress \
    --markdown "$WORK/models.md" --csv "$WORK/models_fp32.csv" 2>>"$WORK/models.log" || status=1
cat "$WORK/models.md" 2>/dev/null | tee -a "$RES"

step "6. pytest -m gpu (all test files)"
if "$PY" -c "import pytest" 2>/dev/null; then
    timeout 300 "$PY" -m pytest -q -p no:cacheprovider -m gpu --continue-on-collection-errors -o addopts="" tests \
        2>&1 | tail -25 | sed 's/^/    /' | tee -a "$RES"
    [[ ${PIPESTATUS[0]} -eq 0 ]] || status=1
else
    echo "pytest not installed: steps 2 and 3 are the GPU checks" | tee -a "$RES"
fi

echo | tee -a "$RES"
echo "Wall time: $(( $(date +%s) - t0 )) s; status: $([[ $status -eq 0 ]] && echo OK || echo FAILED)" | tee -a "$RES"
cp "$RES" "$WORK/" 2>/dev/null
exit $status
