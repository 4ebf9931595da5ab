"""ShiftWiseNet, the model registry, the backbone protocol's ShiftWiseNet specifics (what every registered model
must do is tests/test_model_protocol.py), deploy re-parameterisation, complexity and the reparameterize tool.
Small variants and small inputs only (the paper variants are counted, never run)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from helpers import REPO, assert_checkpointing_is_exact, randomize, tool

import swtasks
from swtasks.checkpoint import CheckpointMismatchError
from swtasks.layers.common import GRN, LayerNorm
from swtasks.models import (
    SHIFTWISE_ARCHS,
    ModelConfigError,
    ShiftWiseNet,
    create_model,
    get_data_config,
    list_models,
)

# Training-structure parameters with 1000 classes (tiny: the published count; the others derived).
PARAMS = {
    "shiftwise_atto": 4_240_580,
    "shiftwise_femto": 5_998_864,
    "shiftwise_pico": 10_427_600,
    "shiftwise_tiny": 31_790_260,
    "shiftwise_small": 57_312_892,
    "shiftwise_base": 100_250_380,
    "shiftwise_large": 221_808_628,
}


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.fixture(scope="module")
def atto():
    torch.manual_seed(0)
    return create_model("shiftwise_atto", num_classes=10)


# ------------------------------------------------------------------------------------------- registry


def test_top_level_api_and_listing():
    assert swtasks.create_model is create_model and swtasks.list_models is list_models
    names = list_models("shiftwise_*")
    assert set(PARAMS) <= set(names)
    assert list_models("shiftwise_t*") == ["shiftwise_tiny"]
    assert list_models("nothing_*") == []
    cfg = get_data_config("shiftwise_tiny")
    assert cfg["input_size"] == (3, 224, 224) and cfg["interpolation"] == "bicubic"
    assert cfg["crop_pct"] == pytest.approx(0.875) and len(cfg["mean"]) == len(cfg["std"]) == 3


def test_registry_errors(tmp_path):
    with pytest.raises(ValueError, match="shiftwise_tiny"):  # closest names are listed
        create_model("shiftwise_tin")
    with pytest.raises(ValueError, match="unknown override.*'dimz'.*did you mean 'dims'"):
        create_model("shiftwise_atto", dimz=(8, 16, 32, 64))
    with pytest.raises(TypeError, match="depths_x"):  # also a TypeError, like an unexpected keyword
        create_model("shiftwise_atto", depths_x=1)
    with pytest.raises(ModelConfigError, match="checkpoint_path"):
        create_model("shiftwise_atto", pretrained=True)
    with pytest.raises(ValueError, match="kernel_sizes must have 4 entries"):
        create_model("shiftwise_atto", kernel_sizes=(7, 7))
    with pytest.raises(FileNotFoundError):
        create_model("shiftwise_atto", checkpoint_path=tmp_path / "missing.pth")


def test_overrides_and_cfg():
    m = create_model("shiftwise_atto", num_classes=7, depths=(1, 1, 1, 1), dims=(16, 32, 64, 128),
                     kernel_sizes=5, n_path=1, n_rep=2, small_kernel=3, layer_scale_init_value=0.5)
    assert m.kernel_sizes == (5, 5, 5, 5) and m.head.out_features == 7
    lk = m.stages[0][0].large_kernel
    assert (lk.n_path, lk.n_rep, lk.kernel_size) == (1, 2, 5)
    assert torch.all(m.stages[0][0].gamma == 0.5)
    assert m.pretrained_cfg["num_classes"] == 7 and m.default_cfg is m.pretrained_cfg
    assert m.pretrained_cfg["architecture"] == "shiftwise_atto"


# ------------------------------------------------------------------------------------------- structure


def test_tiny_parameter_count_exact():
    model = create_model("shiftwise_tiny")  # built, never run
    assert n_params(model) == 31_790_260
    sd = model.state_dict()
    assert tuple(sd["stages.0.0.large_kernel.weight"].shape) == (2, 1020, 3, 3)
    assert tuple(sd["downsample_layers.0.0.weight"].shape) == (40, 3, 3, 3)
    assert tuple(sd["stages.0.0.act.1.gamma"].shape) == (1, 1, 1, 320)
    assert tuple(sd["stages.0.0.se.down.weight"].shape) == (20, 80, 1, 1)
    assert tuple(sd["stages.0.0.pwconv2.0.weight"].shape) == (80, 320)
    assert "stages.0.0.pwconv2.2.running_var" in sd and "stages.0.0.gamma" in sd
    assert tuple(sd["head.weight"].shape) == (1000, 640)


@pytest.mark.parametrize("name", ["shiftwise_small", "shiftwise_base", "shiftwise_large"])
def test_paper_variant_parameter_counts(name):
    # Blocks of a stage are identical, so a one-block-per-stage build counts the full model exactly.
    arch = SHIFTWISE_ARCHS[name[len("shiftwise_"):]]
    one = create_model(name, depths=(1, 1, 1, 1))
    per_block = [n_params(one.stages[i][0]) for i in range(4)]
    total = n_params(one) - sum(per_block) + sum(d * b for d, b in zip(arch["depths"], per_block))
    assert total == PARAMS[name]


@pytest.mark.parametrize("name", ["shiftwise_atto", "shiftwise_femto", "shiftwise_pico"])
def test_small_variants_count_and_shapes(name):
    torch.manual_seed(0)
    m = create_model(name, num_classes=1000)
    assert n_params(m) == PARAMS[name]
    m.eval()
    with torch.no_grad():
        out = m(torch.randn(1, 3, 32, 48))
    assert out.shape == (1, 1000) and torch.isfinite(out).all()


def test_forward_features_head_and_classifier(atto):
    x = torch.randn(2, 3, 64, 96)
    atto.eval()
    with torch.no_grad():
        f = atto.forward_features(x)
        assert f.shape == (2, 320, 2, 3)
        pre = atto.forward_head(f, pre_logits=True)
        logits = atto(x)
    assert pre.shape == (2, 320) and logits.shape == (2, 10)
    torch.testing.assert_close(atto.head(pre), logits)
    m = create_model("shiftwise_atto", num_classes=10, depths=(1, 1, 1, 1))
    m.reset_classifier(3)
    assert m.head.out_features == 3 and m.pretrained_cfg["num_classes"] == 3
    m.reset_classifier(0)
    with torch.no_grad():
        assert m.eval()(torch.randn(1, 3, 32, 32)).shape == (1, 320)


def test_features_only_shapes_strides_and_info():
    m = create_model("shiftwise_atto", features_only=True).eval()
    assert m.feature_info.channels() == [40, 80, 160, 320]
    assert m.feature_info.reduction() == [4, 8, 16, 32]
    assert [f["module"] for f in m.feature_info] == [f"stages.{i}" for i in range(4)]
    assert m.norm is None and m.head is None and isinstance(m.norm2, LayerNorm)
    x = torch.randn(1, 3, 64, 96)
    sub = create_model("shiftwise_atto", features_only=True, out_indices=(1, 3)).eval()
    assert sub.feature_info.reduction() == [8, 32] and not hasattr(sub, "norm0")
    with torch.no_grad():
        assert [o.shape[1] for o in sub(x)] == [80, 320]
    with pytest.raises(ValueError, match="out_indices"):
        create_model("shiftwise_atto", features_only=True, out_indices=(0, 4))


def test_bad_inputs(atto):
    with pytest.raises(ValueError, match=r"3 image channels.*\(1, 1, 64, 64\)"):
        atto(torch.randn(1, 1, 64, 64))
    with pytest.raises(ValueError, match=r"\(1, 3, 16, 64\).*stride 32"):
        atto(torch.randn(1, 3, 16, 64))
    with pytest.raises(ValueError, match=r"\(3, 64, 64\)"):
        atto(torch.randn(3, 64, 64))


def test_no_weight_decay_rule(atto):
    nwd = atto.no_weight_decay()
    names = dict(atto.named_parameters())
    assert "stages.0.0.gamma" in nwd and "stages.0.0.act.1.gamma" in nwd and "stages.0.0.act.1.beta" in nwd
    assert "stages.0.0.norm.weight" in nwd and "head.bias" in nwd and "downsample_layers.0.1.weight" in nwd
    assert "stages.0.0.large_kernel.bn_h.weight" in nwd
    for decayed in ("stages.0.0.large_kernel.weight", "stages.0.0.pwconv1.1.weight", "head.weight",
                    "downsample_layers.0.0.weight", "stages.0.0.se.down.weight"):
        assert decayed not in nwd
    assert all(names[n].dim() < 2 or isinstance(atto.get_submodule(n.rsplit(".", 1)[0]), GRN) for n in nwd)


def test_init():
    m = create_model("shiftwise_atto", depths=(1, 1, 1, 1))
    w = m.stages[2][0].pwconv1[1].weight
    assert abs(w.std().item() - 0.02) < 0.002 and torch.all(m.stages[2][0].pwconv1[1].bias == 0)
    assert abs(m.stages[2][0].large_kernel.weight.std().item() - 0.02) < 0.002
    assert torch.all(m.stages[0][0].gamma == 1e-6)
    dp = create_model("shiftwise_atto", drop_path_rate=0.3)
    rates = [b.drop_path.drop_prob for s in dp.stages for b in s]
    assert rates[0] == 0 and rates[-1] == pytest.approx(0.3) and rates == sorted(rates)


# ------------------------------------------------------------------------------------------- deploy


@pytest.mark.parametrize(
    "overrides",
    [dict(), dict(ghost_ratio=0.0, layer_scale_init_value=None, n_path=1, kernel_sizes=(5, 7, 9, 11))],
    ids=["atto", "no-ghost-no-ls"],
)
def test_deploy_equivalence(overrides):
    torch.manual_seed(0)
    m = randomize(create_model("shiftwise_atto", num_classes=10, depths=(1, 1, 2, 1), **overrides)).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ref = m(x)
        feats = m.forward_head(m.forward_features(x), pre_logits=True)
    before = n_params(m)
    assert m.reparameterize() is m and m.deploy
    if overrides.get("n_path", 2) >= 2:  # the deploy strips hold 2*R*nk*k*k weights: fewer only for 2+ paths
        assert n_params(m) < before
    sd = m.state_dict()
    assert not any(k.endswith(("large_kernel.weight", ".gamma", "act.1.beta")) or ".bn_" in k for k in sd
                   if not k.endswith("act.1.gamma"))
    with torch.no_grad():
        out = m(x)
        feats2 = m.forward_head(m.forward_features(x), pre_logits=True)
    assert ((out - ref).norm() / ref.norm()).item() <= 1e-4
    torch.testing.assert_close(feats2, feats, rtol=1e-4, atol=1e-5)
    m.reparameterize()  # idempotent
    # the deploy structure built directly loads the folded state dict strictly and computes the same
    d = create_model("shiftwise_atto", num_classes=10, depths=(1, 1, 2, 1), deploy=True, **overrides)
    d.load_state_dict(sd, strict=True)
    with torch.no_grad():
        torch.testing.assert_close(d.eval()(x), out)


def test_deploy_parameter_count_tiny_block():
    # one tiny stage-1 block: the deploy form drops the SW BNs (5R), GRN beta (4C), pwconv2 BN (C), gamma (C)
    # and keeps only the ghost channels' affine of the block BN (2C -> 2G)
    blk = create_model("shiftwise_tiny", depths=(1, 0, 0, 0)).stages[0][0]
    before = n_params(blk)
    randomize(blk).eval().reparameterize()
    C, R = 80, 60
    assert before - n_params(blk) == 5 * R + 4 * C + C + C + 2 * R


# ------------------------------------------------------------------------------------------- checkpointing


def test_grad_checkpointing_identical():
    """Outputs, gradients and BatchNorm statistics (updated once, not twice by the recomputation)."""
    assert_checkpointing_is_exact(
        lambda: randomize(create_model("shiftwise_atto", num_classes=5, depths=(1, 1, 2, 1), drop_path_rate=0.2)),
        torch.randn(2, 3, 64, 64))


# ------------------------------------------------------------------------------------------- checkpoints


def test_checkpoint_loading_and_errors(tmp_path):
    torch.manual_seed(0)
    src = randomize(create_model("shiftwise_atto", num_classes=10, depths=(1, 1, 1, 1)))
    wrapped = {"model": {f"module.{k}": v for k, v in src.state_dict().items()}, "epoch": 3}
    path = tmp_path / "ck.pth"
    torch.save(wrapped, path)
    dst = create_model("shiftwise_atto", num_classes=10, depths=(1, 1, 1, 1), checkpoint_path=path)
    for k, v in src.state_dict().items():
        assert torch.equal(dst.state_dict()[k], v), k
    # features_only ignores the classifier (and output norms of stages it does not return)
    fo = create_model("shiftwise_atto", depths=(1, 1, 1, 1), features_only=True, checkpoint_path=path)
    torch.save(fo.state_dict(), tmp_path / "fo.pth")
    sub = create_model("shiftwise_atto", depths=(1, 1, 1, 1), features_only=True, out_indices=(1, 3),
                       checkpoint_path=tmp_path / "fo.pth")
    assert torch.equal(sub.norm3.weight, fo.norm3.weight)
    # mis-shaped head, missing and unexpected keys are listed
    with pytest.raises(CheckpointMismatchError, match=r"(?s)mis-shaped.*head\.weight.*reset_classifier"):
        create_model("shiftwise_atto", num_classes=3, depths=(1, 1, 1, 1), checkpoint_path=path)
    sd = dict(src.state_dict())
    sd.pop("stages.0.0.se.up.bias")
    sd["stages.0.0.extra"] = torch.zeros(1)
    torch.save({"state_dict": sd}, path)
    with pytest.raises(CheckpointMismatchError, match=r"(?s)missing.*se\.up\.bias.*unexpected.*stages\.0\.0\.extra"):
        create_model("shiftwise_atto", num_classes=10, depths=(1, 1, 1, 1), checkpoint_path=path)
    # a deploy checkpoint into a training structure: the hint says deploy=True
    src.eval().reparameterize()
    torch.save(src.state_dict(), path)
    with pytest.raises(CheckpointMismatchError, match="deploy=True"):
        create_model("shiftwise_atto", num_classes=10, depths=(1, 1, 1, 1), checkpoint_path=path)
    create_model("shiftwise_atto", num_classes=10, depths=(1, 1, 1, 1), deploy=True, checkpoint_path=path)


# ------------------------------------------------------------------------------------------- tools


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def test_complexity_table():
    from swtasks.analysis.complexity import format_table, measure

    row = measure("shiftwise_atto", input_size=64, num_classes=10, deploy=True, depths=(1, 1, 1, 1))
    assert row.params > row.deploy_params > 0 and row.flops == 2 * row.macs > 0
    assert 0 < row.deploy_flops < row.flops  # the centre branch folds into the strips
    table = format_table([row])
    assert "| shiftwise_atto | 3x64x64 |" in table and "GMACs" in table


def test_reparameterize_tool_round_trip(tmp_path, capsys):
    torch.manual_seed(0)
    src = randomize(create_model("shiftwise_atto", num_classes=10, depths=(1, 1, 1, 1)))
    inp, out = tmp_path / "train.pth", tmp_path / "deploy.pth"
    torch.save({"state_dict": src.state_dict()}, inp)
    cmd = [sys.executable, str(REPO / "tools" / "reparameterize.py"), str(inp), str(out), "--model",
           "shiftwise_atto", "--num-classes", "10", "--set", "depths=(1, 1, 1, 1)"]
    res = subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=300)
    assert res.returncode == 0, res.stderr
    assert "relative error" in res.stdout and out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]  # no temp file left behind
    d = create_model("shiftwise_atto", num_classes=10, depths=(1, 1, 1, 1), deploy=True, checkpoint_path=out)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        ref = src.eval()(x)
        torch.testing.assert_close(d.eval()(x), ref, rtol=1e-4, atol=1e-4)
    # in-process for the error path: a deploy checkpoint cannot be re-parameterised again
    assert tool("reparameterize").main([str(out), str(tmp_path / "x.pth")] + cmd[4:]) == 2
    assert "deploy=True" in capsys.readouterr().err and not (tmp_path / "x.pth").exists()


def test_model_is_plain_pytorch():
    # the backbone import chain must not pull in lightning / mm (DESIGN.md layering)
    code = ("import sys, swtasks; swtasks.create_model('shiftwise_atto', depths=(1, 1, 1, 1)); "
            "print(','.join(m for m in ('lightning', 'mmdet', 'mmseg', 'mmengine') if m in sys.modules))")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=_env(), timeout=300)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == ""
    assert isinstance(create_model("shiftwise_atto", depths=(1, 1, 1, 1)), ShiftWiseNet)


@pytest.mark.gpu
def test_cuda_backend_matches_cpu_and_deploys():
    # CUDA picks the Triton op backend automatically; TF32 convolutions are disabled for the comparison.
    torch.manual_seed(0)
    m = randomize(create_model("shiftwise_atto", num_classes=10, depths=(1, 1, 2, 1))).eval()
    x = torch.randn(2, 3, 64, 64)
    tf32 = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    try:
        with torch.no_grad():
            ref = m(x)
            m.cuda()
            out = m(x.cuda()).cpu()
            m.reparameterize()
            dep = m(x.cuda()).cpu()
    finally:
        torch.backends.cudnn.allow_tf32 = tf32
    torch.testing.assert_close(out, ref, rtol=1e-3, atol=1e-3)
    assert ((dep - ref).norm() / ref.norm()).item() <= 1e-3


def test_layer_ids_follow_the_spec_rule():
    from swtasks.models.param_groups import default_num_layers, layer_id, stage_id

    model = swtasks.create_model("shiftwise_tiny", num_classes=10)
    ids = {n: layer_id(n, 12) for n, _ in model.named_parameters()}
    assert ids["downsample_layers.0.0.weight"] == 0
    assert ids["downsample_layers.1.0.weight"] == 2 and ids["downsample_layers.3.1.weight"] == 12
    assert {ids[n] for n in ids if n.startswith("stages.0.")} == {1}
    assert {ids[n] for n in ids if n.startswith("stages.2.")} == set(range(3, 9))  # 18 blocks, 3 per id
    assert {ids[n] for n in ids if n.startswith("stages.3.")} == {12}
    assert ids["head.weight"] is None and ids["norm.weight"] is None
    assert layer_id("stages10.0.x") is None and layer_id("xstages.0.0.w") is None
    assert stage_id("downsample_layers.2.0.weight") == 0 and stage_id("stages.3.0.gamma", 4) == 4
    assert default_num_layers((3, 3, 18, 3)) == 12 and default_num_layers((3, 3, 27, 3)) == 12
    assert default_num_layers((3, 3, 36, 3)) == 15
    assert default_num_layers(None, [n for n, _ in model.named_parameters()]) == 12
