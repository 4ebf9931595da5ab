"""Every Triton kernel of the operator compiles for real GPUs (sm_80 and sm_90) on this machine.

`triton.compile` with a GPUTarget needs no GPU, and the cuobjdump inside the triton wheel reads the
cubin (benchmarks/kernel_report.py: operator-development tooling, outside the package). The report runs in
subprocesses without TRITON_INTERPRET
(the test session interprets kernels, which a compile cannot use). Covered: every kernel family and
pass (tensor-core forward, summed forward, input and weight gradients; the direct ones), at the
configuration deterministic mode pins, at stage shapes that exercise each code path (block tiles of
64 with vectorised loads and tensor-core column shifts, packed 7x7 planes with scalar loads, fp32 FMA
dots run in phases, 3xTF32, fp16), each for one or both architectures. The sweep over every
configuration the tuner can pick, every dtype and both architectures belongs to the tool
(`python benchmarks/kernel_report.py`, ~25 min on 2 shared cores), whose tables are in benchmarks/RESULTS.md.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

pytest.importorskip("triton")

ROOT = Path(__file__).resolve().parents[1]
CASES = [  # stages, dtypes, archs, kernels
    ("1", "bf16", "80,90", ""),
    ("4", "bf16", "90", "tc"),
    ("2", "fp32", "80", ""),
    ("3", "fp32-tf32x3", "90", ""),
    ("3", "fp16", "80", "tc"),
]
FAMILIES = {"tc_fwd", "tc_fwd_sum", "tc_dx", "tc_dw", "direct_fwd", "direct_fwd_sum", "direct_dx", "direct_dw"}


def _report(case, out: Path) -> list[dict]:
    stages, dtypes, archs, kernels = case
    path = out / f"report-{stages}-{dtypes}-{archs.replace(',', '_')}.json"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "kernel_report.py"), "--stages", stages, "--dtypes", dtypes,
           "--archs", archs, "--configs", "pinned", "--json", str(path), "--cache", str(out / "cache"), "--quiet",
           "--summary-only"] + (["--kernels", kernels] if kernels else [])
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1200)
    assert res.returncode == 0, res.stderr[-3000:]
    return json.loads(path.read_text())["records"]


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    out = tmp_path_factory.mktemp("kernel_report")
    with ThreadPoolExecutor(2) as pool:  # two compiler processes: the machine's two cores
        parts = list(pool.map(lambda c: _report(c, out), CASES))
    return [r for part in parts for r in part]


def test_every_kernel_family_is_compiled(records):
    assert {r["kernel"] for r in records} == FAMILIES
    assert {r["arch"] for r in records} == {"sm_80", "sm_90"}


def test_no_spills_and_fits(records):
    bad = [(r["kernel"], r["config"], r["dtype"], r["arch"], st["stage"], st["note"])
           for r in records for st in r["stages"] if st["spill_bytes"] or not st["fits"]]
    assert not bad, bad


def test_tensor_core_kernels_hold_tensor_core_instructions(records):
    for r in records:
        if r["kernel"].startswith("tc_") and r["dtype"] in ("bf16", "fp16", "fp32-tf32x3"):
            assert r["mma_instructions"] > 0, (r["kernel"], r["dtype"], r["arch"])
        if r["kernel"].startswith("direct_"):
            assert r["mma_instructions"] == 0 and r["ffma"] > 0, (r["kernel"], r["arch"])


def test_cost_model_matches_compiled_loops(records):
    missing = [(r["kernel"], r["dtype"], r["arch"], st["stage"]) for r in records for st in r["stages"]
               if st["estimated_us"] is None]
    assert not missing, f"the launch plan's loops differ from the SASS: {missing}"


def test_tensor_cores_estimated_faster_than_direct(records):
    """Issue 13: at every covered stage shape the tensor-core path beats the direct kernels it replaces."""
    best = {}
    for r in records:
        if r["arch"] != "sm_90" and any(x["arch"] == "sm_90" for x in records if x["dtype"] == r["dtype"]):
            continue
        for st in r["stages"]:
            key = (st["stage"], r["dtype"], r["arch"], st["pass"], r["kernel"].split("_")[0])
            best[key] = min(best.get(key, 1e30), st["estimated_us"])
    pairs = [(k, best[k], best[k[:4] + ("direct",)]) for k in best if k[4] == "tc" and k[:4] + ("direct",) in best]
    assert pairs
    slower = [p for p in pairs if p[1] >= p[2]]
    assert not slower, slower


def test_loop_matcher_follows_the_compiled_layout():
    """The plan's loops against compiled layouts (no compile needed): exact; the branches laid out in
    another order; one branch's constant-trip inner loops unrolled; a loop the plan lacks is no match."""
    spec = importlib.util.spec_from_file_location("kernel_report", ROOT / "benchmarks" / "kernel_report.py")
    kernel_report = sys.modules.setdefault(spec.name, importlib.util.module_from_spec(spec))  # dataclasses need it
    spec.loader.exec_module(kernel_report)
    _match_loops = kernel_report._match_loops
    from swtasks.ops.launch import LoopModel

    plan = (LoopModel(1, 7), LoopModel(2, 4), LoopModel(2, 4), LoopModel(1, 5), LoopModel(2, 3))

    def loops(depths):
        return [{"depth": d} for d in depths]

    assert _match_loops(loops([1, 2, 2, 1, 2]), plan) == [7, 4, 4, 5, 3]
    assert _match_loops(loops([1, 2, 1, 2, 2]), plan) == [5, 3, 7, 4, 4]
    assert _match_loops(loops([1, 1, 2]), plan) == [7, 5, 3]
    assert _match_loops(loops([1, 2, 1, 2]), plan) == [5, 3, 7, 4]  # ambiguous: the exact nesting first
    assert _match_loops(loops([1, 2, 1, 2, 2, 1]), plan) is None
