#!/usr/bin/env bash
# Every check of the shift-wise operator that needs a CUDA GPU, in one command, from the source tree with
# only torch and triton (pytest is used when installed). Sized for one H100/H200 in about 5 minutes
# (an estimate: no GPU has run it yet; each step has its own time limit and the script goes on after a
# failure). Writes benchmarks/gpu-<date>.md: the static estimates beside the measured times.
#   1. compile every configuration of every kernel (sm_80, sm_90) and estimate it: benchmarks/kernel_report.py
#   2. pytest -m gpu over all test files: the operator at the four SW-T stage shapes against the float64 oracle
#      (fp32 ieee and tf32x3 dots, both kernel families, every gradient; bf16 outputs within one rounding and
#      bf16 gradients), determinism at scale and bit-identical results in two processes (tests/test_ops_triton.py),
#      and every other GPU-marked test
#   3. timings at stages 1 and 3, forward and forward+backward: every Triton variant, the PyTorch strips,
#      dense 51x51 depthwise and SLaK-style strips (benchmarks/op_benchmark.py, with the estimates)
#   4. whole models (issue 16's GPU target): SW-T against the peers, interleaved, training step and deploy
#      inference, bf16 autocast and fp32, batch 64 (tools/benchmark.py)
#   5. mixed-precision classification: tools/train_cls.py fit, demo config, 16-mixed and bf16-mixed, 120 steps:
#      the loss scale and the non-finite loss / gradient counts
#   6. mixed-precision detection: tools/train_det.py --amp (float16, dynamic loss scale) on the smoke Mask R-CNN,
#      40 iterations: the loss scale, the steps the scaler skipped and the non-finite losses (AmpReportHook)
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
timeout 240 "$PY" benchmarks/kernel_report.py --jobs "$JOBS" --json "$WORK/report.json" --markdown "$WORK/report.md" \
    --summary-only --quiet > "$WORK/report.txt" 2>&1 || { status=1; echo "kernel report FAILED" | tee -a "$RES"; }
sed -n '/^stage /,$p' "$WORK/report.txt" | sed 's/^/    /' | tee -a "$RES"

step "2. pytest -m gpu (all test files; the operator's GPU checks are tests/test_ops_triton.py's)"
if "$PY" -c "import pytest" 2>/dev/null; then
    timeout 420 "$PY" -m pytest -q -p no:cacheprovider -m gpu --continue-on-collection-errors -o addopts="" tests \
        2>&1 | tail -25 | sed 's/^/    /' | tee -a "$RES"
    [[ ${PIPESTATUS[0]} -eq 0 ]] || status=1
else
    echo "pytest is not installed: the correctness and determinism checks did not run" | tee -a "$RES"
    status=1
fi

step "3. Timings, stages 1 and 3 (measured; est = static estimate of the kernel report, best sm_90 configuration)"
timeout 300 "$PY" benchmarks/op_benchmark.py --device cuda --stages 1,3 --dtype fp32,bf16 --tf32 --repeats 5 \
    --max-cell-seconds 1.5 --no-memory --deterministic --estimates "$WORK/report.json" --markdown 2>"$WORK/benchmark.log" \
    | tee -a "$RES" || status=1

step "4. Whole models: SW-T vs the peers, batch 64 (tools/benchmark.py; target: SW-T training >= UniRepLKNet-T)"
MODELS="shiftwise_tiny unireplknet_t slak_t convnext_t"
timeout 150 "$PY" tools/benchmark.py $MODELS --skip-missing --device cuda --batch-size 64 --amp bf16 --repeats 5 \
    --modes inference,train_step --title "GPU, bf16 autocast, batch 64" --no-progress \
    --markdown "$WORK/models.md" --csv "$WORK/models_bf16.csv" 2>"$WORK/models.log" || status=1
timeout 120 "$PY" tools/benchmark.py $MODELS --skip-missing --device cuda --batch-size 64 --repeats 5 \
    --modes train_step --structures train --title "GPU, fp32, batch 64" --no-progress \
    --markdown "$WORK/models.md" --csv "$WORK/models_fp32.csv" 2>>"$WORK/models.log" || status=1
cat "$WORK/models.md" 2>/dev/null | tee -a "$RES"

step "5. Mixed-precision classification: tools/train_cls.py fit on the demo config, 16-mixed and bf16-mixed"
# the CLI's own run (shift-wise operator on Triton under CUDA autocast, docs/operator.md "Mixed precision"),
# 120 steps with model.nonfinite_loss=skip: the GradScaler's loss scale (16-mixed) and the steps with
# non-finite losses or gradients (gradients after unscaling: the steps the scaler skipped)
for PREC in 16-mixed bf16-mixed; do
  timeout 300 "$PY" - "$PREC" gpu 120 "$WORK/mixed-$PREC" <<'PYEOF' 2>"$WORK/mixed-$PREC.log" | tee -a "$RES" || status=1
import math, sys, time
import torch
from lightning.pytorch.callbacks import Callback
from swtasks.cls.cli import main
prec, accel, steps, root = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
class Health(Callback):
    losses, bad_loss, bad_grad, scales = [], 0, 0, []
    def on_before_optimizer_step(self, trainer, pl_module, optimizer):  # after the scaler's unscale_
        Health.bad_grad += int(any(p.grad is not None and not torch.isfinite(p.grad).all()
                                   for p in pl_module.parameters()))
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        Health.bad_loss += int(loss is None or not math.isfinite(float(loss)))
        Health.losses += [] if loss is None else [float(loss)]
        scaler = getattr(trainer.precision_plugin, "scaler", None)
        Health.scales += [] if scaler is None else [scaler.get_scale()]
sys.modules["mixed_check"] = sys.modules[__name__]
t = time.time()
main(["fit", "--config", "configs/cls/demo.yaml", "--trainer.accelerator", accel, "--trainer.precision", prec,
      "--trainer.max_steps", str(steps), "--trainer.limit_val_batches", "2", "--trainer.logger", "false",
      "--trainer.enable_progress_bar", "false", "--trainer.default_root_dir", root,
      "--model.nonfinite_loss", "skip", "--trainer.callbacks+", "mixed_check.Health"])
h = Health
scale = (f"loss scale first {h.scales[0]:g}, last {h.scales[-1]:g}, min {min(h.scales):g}" if h.scales
         else "no loss scale (no GradScaler)")
print(f"- {prec}: {len(h.losses)} finite losses, {h.bad_loss} non-finite, {h.bad_grad} steps with non-finite "
      f"gradients; first/last loss {h.losses[0]:.3f}/{h.losses[-1]:.3f}; {scale}; {time.time() - t:.0f} s")
PYEOF
done

step "6. Mixed-precision detection: tools/train_det.py --amp, smoke Mask R-CNN, 40 iterations"
"$PY" -m swtasks.mm.testing coco "$WORK/tiny_coco" > /dev/null 2>&1
timeout 300 "$PY" tools/train_det.py configs/det/mask-rcnn_shiftwise-atto_fpn_2iter_tiny-coco.py --amp \
    --data-root "$WORK/tiny_coco" --work-dir "$WORK/det-amp" --cfg-options train_cfg.max_iters=40 \
    default_hooks.checkpoint.interval=40 > "$WORK/det-amp.log" 2>&1 || status=1
grep -h -e "--amp:" -e "amp: " "$WORK/det-amp.log" | sed 's/^.*- INFO - //; s/^/    /' | tee -a "$RES"

echo | tee -a "$RES"
echo "Wall time: $(( $(date +%s) - t0 )) s; status: $([[ $status -eq 0 ]] && echo OK || echo FAILED)" | tee -a "$RES"
cp "$RES" "$WORK/" 2>/dev/null
exit $status
