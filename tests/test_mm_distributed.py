"""Detection and segmentation with more than one process on a CPU machine, and --amp without a GPU
(docs/detection-segmentation.md, "Distributed training" and "Mixed precision"; swtasks.mm.devices).

`torchrun --nproc_per_node 2 tools/train_{det,seg}.py SMOKE_CONFIG --launcher pytorch` on the tiny COCO /
ADE20K fixtures: gloo is chosen and printed, the two ranks hold the same weights after training (each rank saves
the state dict it trained through a test hook, tests/mm_rank_dump.py; compared with each other and with the one
checkpoint rank 0 wrote), SyncBN runs as all-reduce BatchNorm (the same running statistics on both ranks) and
--resume continues at the saved iteration (detection). --amp runs the smoke configs under bfloat16 autocast."""

from __future__ import annotations

import os
import os.path as osp
import subprocess
import sys

import pytest
import torch

import swtasks.mm  # noqa: F401  (registers the backbones; mmengine compatibility)

pytestmark = pytest.mark.mm

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
TESTS = osp.join(ROOT, "tests")
DET = osp.join(ROOT, "configs/det/mask-rcnn_shiftwise-atto_fpn_2iter_tiny-coco.py")
SEG = osp.join(ROOT, "configs/seg/upernet_shiftwise-atto_2iter_tiny-ade20k-64x64.py")
BN_BUFFERS = ("running_mean", "running_var", "num_batches_tracked")


def with_test_hooks(tmp_path, base: str, *hooks: str) -> str:
    """A user's config on top of a smoke config that also loads the test hooks."""
    config = tmp_path / f"{osp.splitext(osp.basename(base))[0]}_hooks.py"
    config.write_text(
        f"_base_ = {base!r}\n"
        "custom_imports = dict(imports=['swtasks.mm', 'mm_rank_dump'], allow_failed_imports=False)\n"
        f"custom_hooks = [{', '.join(f'dict(type={h!r})' for h in hooks)}]\n"
    )
    return str(config)


def torchrun(tool: str, config: str, work: str, data: str, *extra: str) -> str:
    from cls_helpers import free_port

    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
        osp.join(ROOT, "tools", tool), config, "--launcher", "pytorch", "--work-dir", work, "--data-root", data,
        "--cfg-options", "randomness.seed=0", *extra,
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([ROOT, TESTS, os.environ.get("PYTHONPATH", "")])}
    env.update(OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=400)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    tool_name = f"tools/{tool}"
    for rank in (0, 1):
        line = f"{tool_name}: distributed: launcher pytorch, backend gloo (the config's nccl needs GPUs), rank {rank} of 2"
        assert line in out, out[-3000:]
    return out


def rank_states(work: str) -> tuple[dict, dict]:
    return tuple(torch.load(osp.join(work, f"rank{r}_state.pth"), weights_only=True) for r in (0, 1))


def differing(a: dict, b: dict) -> list[str]:
    assert a.keys() == b.keys()
    return sorted(k for k in a if not torch.equal(a[k], b[k]))


def checkpoint(path: str) -> dict:
    ck = torch.load(path, map_location="cpu", weights_only=False)
    return ck


def test_detection_two_processes_on_cpu_same_weights_one_checkpoint_syncbn_and_resume(tmp_path):
    """Mask R-CNN, 2 processes x 2 images, `--cfg-options sync_bn=torch` (every BatchNorm synchronised): both
    ranks end with the same parameters and the same BatchNorm statistics, bit for bit, equal to the one
    checkpoint; --resume continues from iteration 2 to 3."""
    from swtasks.mm.testing import make_tiny_coco

    data = make_tiny_coco(str(tmp_path / "coco"))
    config = with_test_hooks(tmp_path, DET, "RankStateDump")
    work = str(tmp_path / "work")
    out = torchrun("train_det.py", config, work, data, "sync_bn=torch")
    assert "SyncBN on CPU: " in out and "SyncBatchNorm layer(s) run as all-reduce BatchNorm" in out
    r0, r1 = rank_states(work)
    assert differing(r0, r1) == []
    assert sorted(n for n in os.listdir(work) if n.endswith(".pth")) == ["iter_2.pth", "rank0_state.pth", "rank1_state.pth"]
    saved = checkpoint(osp.join(work, "iter_2.pth"))
    assert saved["meta"]["iter"] == 2 and differing(saved["state_dict"], r0) == []

    out = torchrun("train_det.py", config, work, data, "sync_bn=torch", "train_cfg.max_iters=3", "--resume")
    assert f"Auto resumed from the latest checkpoint {osp.join(work, 'iter_2.pth')}" in out, out[-3000:]
    assert "Iter(train) [3/3]" in out and "Iter(train) [1/3]" not in out, out[-3000:]
    r0, r1 = rank_states(work)
    assert differing(r0, r1) == []
    resumed = checkpoint(osp.join(work, "iter_3.pth"))
    assert resumed["meta"]["iter"] == 3 and differing(resumed["state_dict"], r0) == []
    assert differing(resumed["state_dict"], saved["state_dict"])  # it trained on


def test_segmentation_two_processes_on_cpu_same_weights_one_checkpoint(tmp_path):
    """UperNet, 2 processes: the heads' SyncBN (MMSegmentation's norm_cfg) runs as all-reduce BatchNorm, so
    their statistics are the same on both ranks; the backbone's plain BatchNorm keeps per-process statistics
    (as on GPUs with sync_bn None: rank 0's are saved), which shows that each rank saw its own images. Every
    parameter is the same on both ranks. (--resume under torchrun is the detection test's: both tools resume
    through the same swtasks.mm.cli and mmengine code; a second 2-process launch here would cost ~25 CPU-s.)"""
    from swtasks.mm.testing import make_tiny_ade20k

    data = make_tiny_ade20k(str(tmp_path / "ade"))
    config = with_test_hooks(tmp_path, SEG, "RankStateDump")
    work = str(tmp_path / "work")
    out = torchrun("train_seg.py", config, work, data)
    assert "SyncBatchNorm layer(s) run as all-reduce BatchNorm" in out
    r0, r1 = rank_states(work)
    diff = differing(r0, r1)
    assert diff and all(k.startswith("backbone.") and k.endswith(BN_BUFFERS) for k in diff), diff
    assert not [k for k in diff if k.startswith(("decode_head.", "auxiliary_head."))]
    assert sorted(n for n in os.listdir(work) if n.endswith(".pth")) == ["iter_2.pth", "rank0_state.pth", "rank1_state.pth"]
    saved = checkpoint(osp.join(work, "iter_2.pth"))
    assert saved["meta"]["iter"] == 2 and differing(saved["state_dict"], r0) == []


@pytest.mark.parametrize("task, base", [("det", DET), ("seg", SEG)])
def test_amp_without_a_gpu_is_bfloat16_autocast(task, base, tmp_path, monkeypatch):
    """--amp on a machine without CUDA: the smoke config trains 2 iterations with the backbone's convolutions
    computing in bfloat16 (the weights are float32: only autocast makes a bfloat16 output), finite losses, no loss
    scaling; the detector's heads with mmcv's NMS / RoIAlign (no bfloat16 CPU kernels) run in float32."""
    from mmengine.runner import Runner

    from swtasks.mm.cli import main
    from swtasks.mm.devices import AmpReportHook, CPUAutocastOptimWrapper
    from swtasks.mm.testing import make_tiny_ade20k, make_tiny_coco

    monkeypatch.syspath_prepend(TESTS)
    data = (make_tiny_coco if task == "det" else make_tiny_ade20k)(str(tmp_path / "data"))
    config = with_test_hooks(tmp_path, base, "ComputeDtypeProbe")

    runner: Runner = main(task, "train", [config, "--work-dir", str(tmp_path / "work"), "--data-root", data, "--amp"])
    assert isinstance(runner.optim_wrapper, CPUAutocastOptimWrapper)
    probe = next(h for h in runner.hooks if type(h).__name__ == "ComputeDtypeProbe")
    assert probe.dtypes and set(probe.dtypes) == {torch.bfloat16}, probe.dtypes
    report = next(h for h in runner.hooks if isinstance(h, AmpReportHook))
    assert report.nonfinite_losses == 0 and report.skipped == 0 and report._scale is None
    assert torch.isfinite(torch.tensor(runner.message_hub.get_scalar("train/loss").current()))
    assert all(p.dtype == torch.float32 for p in runner.model.parameters())  # the weights stay float32


def test_configure_per_machine():
    """Plumbing (the oracle is the rule as documented): what configure() sets with and without CUDA."""
    from mmengine.config import Config

    from swtasks.errors import UserError
    from swtasks.mm.devices import configure, init_process_group

    def cfg():
        return Config(dict(optim_wrapper=dict(type="OptimWrapper", optimizer=dict(type="SGD", lr=0.1)),
                           env_cfg=dict(dist_cfg=dict(backend="nccl"))))  # fmt: skip

    gpu = cfg()
    said = configure(gpu, "pytorch", True, cuda=True)
    assert gpu.env_cfg.dist_cfg.backend == "nccl" and "model_wrapper_cfg" not in gpu
    assert gpu.optim_wrapper.type == "AmpOptimWrapper" and gpu.optim_wrapper.loss_scale == "dynamic"
    assert "backend nccl" in said[0] and "float16 autocast on the GPU" in said[1]
    cpu = cfg()
    cpu.optim_wrapper.update(type="AmpOptimWrapper", loss_scale=512.0)  # a config written for GPUs
    said = configure(cpu, "pytorch", True, cuda=False)
    assert cpu.env_cfg.dist_cfg.backend == "gloo" and cpu.model_wrapper_cfg.type == "CPUDistributedDataParallel"
    assert cpu.optim_wrapper.type == "CPUAutocastOptimWrapper" and "loss_scale" not in cpu.optim_wrapper
    assert "backend gloo (the config's nccl needs GPUs)" in said[0] and "bfloat16" in said[1]
    assert configure(cfg(), "none", False, cuda=False) == []
    if not torch.cuda.is_available():
        slurm = cfg()
        slurm.launcher = "slurm"
        configure(slurm, "slurm", False)
        with pytest.raises(UserError, match="--launcher slurm without a GPU: on CPUs only --launcher pytorch"):
            init_process_group(slurm)
