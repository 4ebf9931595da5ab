#!/usr/bin/env bash
# Every check that needs a CUDA GPU, in one command, from the source tree (only torch and triton are
# needed; pytest is used when installed). Results go to $OUT (default ./gpu-results):
#   gpu_tests.txt     the compiled-kernel tests (tests/test_ops_triton.py -m gpu) or a fallback check
#   benchmark_op.md   the operator benchmark (markdown section for benchmarks/RESULTS.md)
#   benchmark_models.md, benchmark_models_*.csv   the whole-model benchmark (tools/benchmark.py)
# Usage: bash scripts/gpu_checks.sh [--quick]    (--quick: stage 1 only, fewer repeats)
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu-results}
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
unset TRITON_INTERPRET
PY=${PYTHON:-python}

"$PY" - <<'EOF' | tee "$OUT/environment.txt"
import torch, triton
print("torch", torch.__version__, "triton", triton.__version__, "cuda", torch.version.cuda)
print("device", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "NO CUDA DEVICE")
EOF

status=0
if "$PY" -c "import pytest" 2>/dev/null; then
    "$PY" -m pytest -q -p no:cacheprovider tests/test_ops_triton.py tests/test_layers_shiftwise.py -m gpu \
        -o addopts="" 2>&1 | tee "$OUT/gpu_tests.txt" || status=1
else
    echo "pytest missing: running the compiled-kernel agreement check only" | tee "$OUT/gpu_tests.txt"
    "$PY" - <<'EOF' 2>&1 | tee -a "$OUT/gpu_tests.txt" || status=1
import torch
from swtasks.ops.cross_conv import cross_conv
torch.manual_seed(0)
for C, HW, K in [(60, 56, 51), (122, 28, 49), (246, 14, 47), (492, 7, 13)]:
    L = 3 * -(-K // 3)
    x = torch.randn(4, C, HW, HW, device="cuda", requires_grad=True)
    ws = [torch.randn(C, 3, L, device="cuda", requires_grad=True),
          torch.randn(C, L, 3, device="cuda", requires_grad=True),
          torch.randn(C, 3, 3, device="cuda", requires_grad=True)]
    res = {}
    for b in ("torch", "triton"):
        with torch.backends.cudnn.flags(allow_tf32=False):
            outs = cross_conv(x, *ws, big_kernel=K, backend=b)
            g = torch.autograd.grad(sum(o.square().sum() for o in outs), [x, *ws])
        res[b] = [o.detach() for o in outs] + list(g)
    err = max(((a - c).abs().max() / c.abs().max().clamp_min(1e-12)).item()
              for a, c in zip(res["triton"], res["torch"]))
    print(f"C={C} HW={HW} K={K}: max relative difference triton vs torch {err:.2e}")
    assert err < 1e-4, err
print("OK")
EOF
fi

if [[ "${1:-}" == "--quick" ]]; then
    "$PY" tools/benchmark_op.py --device cuda --stages 1 --repeats 5 --markdown | tee "$OUT/benchmark_op.md"
else
    "$PY" tools/benchmark_op.py --device cuda --tf32 --markdown | tee "$OUT/benchmark_op.md"
fi

# Whole models (docs/analysis.md): SW-T against the peers registered in this checkout, interleaved, training
# and deploy structures, batch 64, bf16 autocast and fp32 training steps (issue 16's GPU target: SW-T's
# training throughput >= UniRepLKNet-T's). Names not registered are skipped; torchvision's ConvNeXt-T is the
# reference when convnext_t is not there yet.
MODELS="shiftwise_tiny unireplknet_t slak_t convnext_t torchvision:convnext_tiny"
REPEATS=$([[ "${1:-}" == "--quick" ]] && echo 5 || echo 15)
"$PY" tools/benchmark.py $MODELS --skip-missing --device cuda --batch-size 64 --amp bf16 --repeats "$REPEATS" \
    --modes inference,train_step --title "GPU, bf16 autocast, batch 64" --no-progress \
    --markdown "$OUT/benchmark_models.md" --csv "$OUT/benchmark_models_bf16.csv" || status=1
"$PY" tools/benchmark.py $MODELS --skip-missing --device cuda --batch-size 64 --repeats "$REPEATS" \
    --modes train_step --structures train --title "GPU, fp32, batch 64" --no-progress \
    --markdown "$OUT/benchmark_models.md" --csv "$OUT/benchmark_models_fp32.csv" || status=1
exit $status
