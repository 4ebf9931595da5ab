"""The operator-development tools in benchmarks/ run as scripts from the source tree, from any directory (as the
GPU machine runs them: torch, numpy and triton, the repository not installed). The kernel report is exercised by
tests/test_ops_kernels_compile.py; these are plumbing checks (tiny sizes, one repeat), not measurements."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _script(name: str, *args: str, cwd: Path) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "PYTHONPATH")}
    env["OMP_NUM_THREADS"] = "1"
    res = subprocess.run([sys.executable, str(ROOT / "benchmarks" / name), *args], cwd=cwd, env=env,
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    return res.stdout


def test_op_benchmark_prints_every_row_at_a_stage(tmp_path):
    out = _script("op_benchmark.py", "--device", "cpu", "--smoke", "--stages", "4", "--repeats", "1", "--warmup", "0",
                  "--no-memory", cwd=tmp_path)
    for row in ("reference", "torch", "torch-deploy", "dense KxK", "SLaK"):
        assert f" {row} " in out, out


def test_layer_benchmark_prints_the_four_stages_of_sw_t(tmp_path):
    out = _script("layer_benchmark.py", "--device", "cpu", "--batch", "1", "--repeats", "1", cwd=tmp_path)
    rows = [line for line in out.splitlines() if line.startswith("| ") and line[2].isdigit()]
    assert [r.split("|")[1:4] for r in rows] == [
        [" 80 ", " 51 ", " 56x56 "], [" 160 ", " 49 ", " 28x28 "], [" 320 ", " 47 ", " 14x14 "], [" 640 ", " 13 ", " 7x7 "]
    ]
    assert all(float(r.split("|")[7]) < 1e-5 for r in rows)  # training and deploy forms agree
