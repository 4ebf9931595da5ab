"""ShiftWiseNet as an MMDetection / MMSegmentation backbone: construction, weights, freezing, lr decay, errors.

No Runner here (see test_mm_det.py / test_mm_seg.py); models are the test-sized 'atto' variant on 32x32 inputs.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from helpers import randomize

pytestmark = pytest.mark.mm

import swtasks.mm  # noqa: E402  (registers the backbones)
from swtasks.mm import LayerDecayOptimWrapperConstructor, ShiftWiseNet  # noqa: E402


def _registries():
    from mmdet.registry import MODELS as DET
    from mmseg.registry import MODELS as SEG

    return DET, SEG


def _cls_model(seed=0, **kw):
    import swtasks

    torch.manual_seed(seed)
    model = swtasks.create_model("shiftwise_atto", num_classes=10, layer_scale_init_value=1.0, **kw)
    return randomize(model, seed)  # non-trivial statistics, layer scales and GRN: loads and folds really tested


def _lightning_ckpt(model, path, ema=None):
    """A classification checkpoint as swtasks.cls writes it: Lightning's dict with 'state_dict' holding
    'backbone.*' (the LightningModule's network), optionally 'ema.module.*', and metric states."""
    sd = {f"backbone.{k}": v for k, v in model.state_dict().items()}
    if ema is not None:
        sd.update({f"ema.module.{k}": v for k, v in ema.state_dict().items()})
        sd["ema.num_updates"] = torch.tensor(7)
    sd["metrics.val.top1.correct"] = torch.tensor(3.0)
    torch.save(
        {
            "epoch": 3,
            "global_step": 12,
            "pytorch-lightning_version": "2.6.6",
            "state_dict": sd,
            "hyper_parameters": {"backbone": "shiftwise_atto", "num_classes": 10},
        },
        path,
    )
    return str(path)


def test_registered_in_both_frameworks_and_builds():
    det, seg = _registries()
    for registry in (det, seg):
        assert registry.get("ShiftWiseNet") is ShiftWiseNet
        bb = registry.build(dict(type="ShiftWiseNet", arch="atto", out_indices=(1, 3)))
        outs = bb(torch.randn(2, 3, 32, 32))
        assert isinstance(outs, tuple) and [o.shape for o in outs] == [(2, 80, 4, 4), (2, 320, 1, 1)]
        assert bb.out_channels == [80, 320]
    assert set(swtasks.mm.registered_frameworks()) == {"mmdet", "mmseg"}
    # every wrapper registered builds at least one variant of its family (no types that build nothing)
    from swtasks.mm.backbone import BACKBONES

    for cls in BACKBONES:
        assert cls.__name__ in swtasks.mm.registered_backbones() and cls.available_archs()
        assert det.get(cls.__name__) is cls and seg.get(cls.__name__) is cls
    assert "ShiftWiseNet" in swtasks.mm.registered_backbones()


def test_state_dict_names_mirror_the_network_and_plain_bn():
    bb = ShiftWiseNet(arch="atto")
    keys = list(bb.state_dict())
    assert keys[0].startswith("downsample_layers.0.")
    assert any(k.startswith("stages.2.5.") for k in keys)
    assert {f"norm{i}.weight" for i in range(4)} <= set(keys)
    assert not any(k.startswith(("head.", "norm.")) for k in keys)
    bns = [m for m in bb.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert bns and all(type(m) is nn.BatchNorm2d for m in bns)  # SyncBN only by the Runner's conversion
    # parameters of the wrapper ARE the network's
    assert bb.net.stages[0][0].norm.weight is bb.stages[0][0].norm.weight


def test_syncbn_by_mmengine_conversion_then_deploy():
    """What the Runner does for `sync_bn='torch'` in a distributed run: every BatchNorm (the operator's own
    included) becomes SyncBatchNorm through the wrapper, the maps are unchanged, and the converted backbone
    still re-parameterises exactly."""
    from mmengine.model import convert_sync_batchnorm, revert_sync_batchnorm

    bb = ShiftWiseNet(arch="atto", out_indices=(2, 3)).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        before = [o.clone() for o in bb(x)]
    n_bn = sum(isinstance(m, nn.BatchNorm2d) for m in bb.modules())
    sync = convert_sync_batchnorm(bb, implementation="torch").eval()
    assert sum(isinstance(m, nn.SyncBatchNorm) for m in sync.modules()) == n_bn > 0
    assert sum(isinstance(m, nn.SyncBatchNorm) for m in sync.net.modules()) == n_bn  # the same modules
    with torch.no_grad():
        for a, b in zip(before, sync(x)):
            torch.testing.assert_close(a, b)
        sync.reparameterize()
        for a, b in zip(before, sync(x)):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    assert not any(isinstance(m, nn.SyncBatchNorm) for m in revert_sync_batchnorm(sync).modules())


def test_arch_dict_and_layer_scale_and_drop_path():
    bb = ShiftWiseNet(
        arch=dict(base="atto", depths=(1, 1, 2, 1), dims=(16, 32, 64, 128), kernel_sizes=(7, 7, 5, 5)),
        layer_scale_init_value=1.0,
        drop_path_rate=0.2,
        out_indices=(0, 1, 2, 3),
    )
    assert bb.depths == [1, 1, 2, 1] and bb.out_channels == [16, 32, 64, 128]
    assert torch.all(bb.stages[0][0].gamma == 1.0)
    assert bb.stages[3][0].drop_path.drop_prob == pytest.approx(0.2)
    assert [o.shape[1] for o in bb(torch.randn(2, 3, 32, 32))] == [16, 32, 64, 128]


def test_classification_checkpoint_loads_through_init_cfg_with_prefix(tmp_path):
    """A Lightning .ckpt of swtasks.cls ('backbone.*'), an exported plain backbone, a 'module.model.*' file and
    a Lightning module holding the network as 'model.backbone.*' all load with prefix='backbone.' into the
    same maps; prefix='ema.module.' picks the EMA weights of the same .ckpt."""
    cls, ema = _cls_model(), _cls_model(seed=5)
    ckpt = _lightning_ckpt(cls, tmp_path / "cls.ckpt", ema=ema)
    exported = tmp_path / "exported.pth"
    torch.save({k: v for k, v in cls.state_dict().items() if not k.startswith(("head.", "norm."))}, exported)
    wrapped = tmp_path / "wrapped.pth"
    torch.save({"state_dict": {f"module.model.{k}": v for k, v in cls.state_dict().items()}}, wrapped)
    # a Lightning module holding the network as `model.backbone` (prefix found behind 'model.')
    nested = tmp_path / "nested.ckpt"
    torch.save({"state_dict": {f"model.backbone.{k}": v for k, v in cls.state_dict().items()}}, nested)
    det, _ = _registries()
    x = torch.randn(2, 3, 32, 32)
    results = []
    for path, prefix, source in (
        (ckpt, "backbone.", cls),
        (str(exported), "backbone.", cls),
        (str(wrapped), "backbone.", cls),
        (str(nested), "backbone.", cls),
        (ckpt, "ema.module.", ema),
    ):
        torch.manual_seed(123)
        bb = det.build(
            dict(
                type="ShiftWiseNet",
                arch="atto",
                init_cfg=dict(type="Pretrained", checkpoint=path, prefix=prefix),
            )
        )
        w = bb.stages[2][3].pwconv1[1].weight
        before = w.detach().clone()
        bb.init_weights()
        assert not torch.equal(before, w), "weights did not change from their random init"
        ref = source.state_dict()
        for name, t in bb.state_dict().items():
            if name in ref:
                assert torch.equal(t, ref[name]), (path, prefix, name)
        bb.eval()
        results.append([o.detach() for o in bb(x)])
    for maps in results[1:4]:
        for a, b in zip(results[0], maps):
            torch.testing.assert_close(a, b)
    assert not torch.allclose(results[0][-1], results[4][-1])  # the EMA weights are other weights


def test_backbone_exported_by_swtasks_cls_loads_through_init_cfg(tmp_path):
    """The files written by tools/export_backbone.py (swtasks.cls.backbone_weights): raw, EMA and re-parameterised
    exports load with prefix='backbone.' (the last into a deploy=True backbone), computing the maps of the
    backbone loaded from the Lightning checkpoint itself."""
    from swtasks.cls.backbone_weights import export_backbone

    cls, ema = _cls_model(seed=3), _cls_model(seed=4)
    ckpt = _lightning_ckpt(cls, tmp_path / "last.ckpt", ema=ema)
    x = torch.randn(1, 3, 32, 32)

    def maps(path, deploy=False):
        torch.manual_seed(99)
        bb = ShiftWiseNet(
            arch="atto",
            deploy=deploy,
            init_cfg=dict(type="Pretrained", checkpoint=str(path), prefix="backbone."),
        )
        # conv, linear and shift-wise kernels and GRN gamma come from the file (GRN beta is zero both ways)
        weights = {k: p for k, p in bb.named_parameters() if p.dim() >= 2 and not k.endswith(".beta")}
        before = {k: p.detach().clone() for k, p in weights.items()}
        bb.init_weights()
        kept = [k for k, p in weights.items() if not k.startswith("norm") and torch.equal(p, before[k])]
        assert not kept, f"{path}: weights not loaded (still at their random init): {kept[:5]}"
        with torch.no_grad():
            return [o for o in bb.eval()(x)]

    reference = maps(ckpt)
    for kw in (dict(), dict(drop_head=True)):
        out = tmp_path / f"raw{len(kw)}.pth"
        meta = export_backbone(ckpt, out, **kw)
        assert meta["key_prefix"] == "backbone."
        for a, b in zip(reference, maps(out)):
            torch.testing.assert_close(a, b)
    export_backbone(ckpt, tmp_path / "ema.pth", ema=True)
    for a, b in zip(maps(tmp_path / "ema.pth"), reference):
        assert not torch.allclose(a, b)
    export_backbone(ckpt, tmp_path / "deploy.pth", reparameterize=True)
    for a, b in zip(reference, maps(tmp_path / "deploy.pth", deploy=True)):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_reference_layout_checkpoint_is_converted_while_loading(tmp_path):
    """A checkpoint in the reference implementation's layout (large_kernel.LoRAs.*, the published file's
    layout) is converted on the fly: the backbone ends up with the converter's tensors."""
    from helpers import SMALL, convert_shiftwise_official, random_reference

    src = {k: v.float() for k, v in random_reference(seed=3).state_dict().items()}
    path = tmp_path / "reference.pth"
    torch.save({"model": src, "epoch": 299}, path)
    bb = ShiftWiseNet(
        arch=dict(base="atto", **SMALL),
        init_cfg=dict(type="Pretrained", checkpoint=str(path), prefix="backbone."),
    )
    bb.init_weights()
    expected = convert_shiftwise_official(src, arch="atto", **SMALL, features_only=True)
    got = bb.state_dict()
    shared = [k for k in got if k in expected]
    assert len(shared) > 50 and all(torch.equal(got[k], expected[k]) for k in shared)


def test_detector_checkpoint_with_backbone_prefix_and_deploy_load(tmp_path):
    """A dense-task checkpoint ('backbone.*' next to neck keys) loads; a deploy backbone re-parameterises
    a training-form checkpoint while loading and computes the same maps."""
    cls = _cls_model(seed=1)
    sd = {f"backbone.{k}": v for k, v in cls.state_dict().items() if not k.startswith(("head.", "norm."))}
    sd["neck.lateral_convs.0.conv.weight"] = torch.zeros(8, 40, 1, 1)
    path = tmp_path / "det.pth"
    torch.save({"state_dict": sd, "meta": {"epoch": 1}}, path)
    train = ShiftWiseNet(
        arch="atto", init_cfg=dict(type="Pretrained", checkpoint=str(path), prefix="backbone.")
    )
    train.init_weights()
    deploy = ShiftWiseNet(
        arch="atto", deploy=True, init_cfg=dict(type="Pretrained", checkpoint=str(path), prefix="backbone.")
    )
    deploy.init_weights()
    assert not any(k.endswith("large_kernel.weight") for k in deploy.state_dict())
    train.eval()
    deploy.eval()
    x = torch.randn(2, 3, 32, 32)
    for a, b in zip(train(x), deploy(x)):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_frozen_stages_freeze_what_they_say():
    bb = ShiftWiseNet(arch="atto", frozen_stages=2)
    bb.train()
    frozen = [bb.downsample_layers[0], bb.stages[0], bb.downsample_layers[1], bb.stages[1]]
    trainable = [bb.downsample_layers[2], bb.stages[2], bb.downsample_layers[3], bb.stages[3], bb.norm0]
    for m in frozen:
        assert all(not p.requires_grad for p in m.parameters())
        assert all(not sub.training for sub in m.modules())
    for m in trainable:
        assert all(p.requires_grad for p in m.parameters())
        assert all(sub.training for sub in m.modules())
    # frozen BN statistics stay put in a training forward; the others move
    frozen_bn, live_bn = bb.stages[1][0].norm, bb.stages[2][0].norm
    f0, l0 = frozen_bn.running_mean.clone(), live_bn.running_mean.clone()
    bb(torch.randn(2, 3, 32, 32))
    assert torch.equal(frozen_bn.running_mean, f0) and not torch.equal(live_bn.running_mean, l0)
    # and no gradient reaches them
    sum(o.sum() for o in bb(torch.randn(2, 3, 32, 32))).backward()
    assert all(p.grad is None for m in frozen for p in m.parameters())
    assert bb.stages[2][0].pwconv1[1].weight.grad is not None
    # frozen_stages=0: the stem only
    stem_only = ShiftWiseNet(arch="atto", frozen_stages=0)
    assert not any(p.requires_grad for p in stem_only.downsample_layers[0].parameters())
    assert all(p.requires_grad for p in stem_only.stages[0].parameters())


def test_norm_eval_keeps_bn_statistics_fixed():
    bb = ShiftWiseNet(arch="atto", norm_eval=True)
    bb.train()
    bns = [m for m in bb.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert bns and all(not m.training for m in bns)
    assert bb.training and bb.stages[0][0].drop_path.training  # everything else trains
    before = [m.running_mean.clone() for m in bns]
    bb(torch.randn(2, 3, 32, 32))
    assert all(torch.equal(a, m.running_mean) for a, m in zip(before, bns))
    # without norm_eval they move
    free = ShiftWiseNet(arch="atto").train()
    m = free.stages[0][0].norm
    rm = m.running_mean.clone()
    free(torch.randn(2, 3, 32, 32))
    assert not torch.equal(rm, m.running_mean)


def test_with_cp_gives_the_same_gradients():
    torch.manual_seed(0)
    a = ShiftWiseNet(arch="atto", with_cp=True)
    b = ShiftWiseNet(arch="atto")
    b.load_state_dict(a.state_dict())
    x = torch.randn(2, 3, 32, 32)
    for m in (a, b):
        m.train()
        sum(o.square().sum() for o in m(x)).backward()
    ga = a.stages[2][1].pwconv1[1].weight.grad
    torch.testing.assert_close(ga, b.stages[2][1].pwconv1[1].weight.grad, rtol=1e-4, atol=1e-5)


def test_sparse_keeps_the_loaded_zero_pattern(tmp_path):
    from swtasks.sparse import shiftwise_layers

    cls = _cls_model(seed=2)
    with torch.no_grad():
        for layer in shiftwise_layers(cls).values():
            layer.weight[:, ::3] = 0  # every third small kernel pruned in every path
    path = tmp_path / "sparse.pth"
    torch.save({"model": cls.state_dict()}, path)  # the ConvNeXt-style container of the converter
    bb = ShiftWiseNet(arch="atto", sparse=True, init_cfg=dict(type="Pretrained", checkpoint=str(path)))
    bb.init_weights()
    layers = shiftwise_layers(bb)
    assert layers and all(m.kernel_mask is not None for m in layers.values())
    opt = torch.optim.SGD(bb.parameters(), lr=0.5)
    bb.train()
    sum(o.sum() for o in bb(torch.randn(2, 3, 32, 32))).backward()
    opt.step()
    for m in layers.values():
        assert torch.all(m.weight[:, ::3] == 0)
        assert m.weight[:, 1::3].abs().sum() > 0


def test_layer_decay_constructor_ids_scales_and_weight_decay():
    from mmengine.optim import build_optim_wrapper
    from mmengine.registry import init_default_scope

    class Toy(nn.Module):
        def __init__(self):
            super().__init__()
            self.backbone = ShiftWiseNet(arch="atto", frozen_stages=0)
            self.neck = nn.Conv2d(8, 8, 1)

    model = Toy()
    for scope in ("mmdet", "mmseg"):  # found from both frameworks' scopes
        init_default_scope(scope)
        wrapper = build_optim_wrapper(
            model,
            dict(
                type="OptimWrapper",
                constructor="LayerDecayOptimWrapperConstructor",
                optimizer=dict(type="AdamW", lr=1e-3, weight_decay=0.05),
                paramwise_cfg=dict(decay_rate=0.5, num_layers=6),
            ),
        )
        where = {}
        for g in wrapper.optimizer.param_groups:
            for n in g["param_names"]:
                where[n] = (g["lr"], g["weight_decay"])
        lr = lambda layer_id: 1e-3 * 0.5 ** (6 + 1 - layer_id)  # noqa: E731
        assert "backbone.downsample_layers.0.0.weight" not in where  # frozen stem: not optimised
        assert where["backbone.stages.0.0.pwconv1.1.weight"] == (pytest.approx(lr(1)), 0.05)
        assert where["backbone.downsample_layers.1.0.weight"][0] == pytest.approx(lr(2))
        assert where["backbone.downsample_layers.2.0.weight"][0] == pytest.approx(lr(3))
        assert where["backbone.stages.2.5.pwconv1.1.weight"][0] == pytest.approx(lr(3 + 5 // 3))
        assert where["backbone.stages.3.1.se.down.weight"][0] == pytest.approx(lr(6))
        assert where["backbone.downsample_layers.3.0.weight"][0] == pytest.approx(lr(6))
        assert where["backbone.norm0.weight"] == (pytest.approx(1e-3), 0.0)
        assert where["neck.weight"] == (pytest.approx(1e-3), 0.05)
        for n in (
            "backbone.stages.1.0.gamma",
            "backbone.stages.1.0.act.1.gamma",
            "backbone.stages.1.0.act.1.beta",
            "backbone.stages.1.0.norm.weight",
            "backbone.stages.1.0.se.up.bias",
        ):
            assert where[n][1] == 0.0, n
        assert where["backbone.stages.1.0.large_kernel.weight"][1] == 0.05
    with pytest.raises(ValueError, match="decay_rate"):
        LayerDecayOptimWrapperConstructor(dict(optimizer=dict(type="AdamW", lr=1e-3)), dict(decay_rate=1.5))
    with pytest.raises(ValueError, match="decay_type"):
        LayerDecayOptimWrapperConstructor(
            dict(optimizer=dict(type="AdamW", lr=1e-3)), dict(decay_type="blockwise")
        )


# ---------------------------------------------------------------------------------------------- bad input


def test_unknown_arch_names_the_value():
    det, _ = _registries()
    with pytest.raises(ValueError, match=r"unknown arch 'huge'.*'tiny'"):
        det.build(dict(type="ShiftWiseNet", arch="huge"))
    with pytest.raises(ValueError, match="foo"):
        ShiftWiseNet(arch=dict(base="atto", foo=3))


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        (dict(out_indices=(0, 4)), r"out_indices value 4 is out of range"),
        (dict(out_indices=(1, 1)), r"out_indices has duplicates"),
        (dict(out_indices=()), r"out_indices must be a non-empty"),
        (dict(frozen_stages=5), r"frozen_stages must be in \[-1, 4\], got 5"),
        (dict(drop_path_rate=1.5), r"drop_path_rate must be in \[0, 1\), got 1.5"),
        (dict(sparse=True, deploy=True), r"sparse=True"),
        (dict(norm_eval="yes"), r"norm_eval must be True or False, got 'yes'"),
    ],
)
def test_bad_arguments_name_key_and_value(kwargs, pattern):
    with pytest.raises((ValueError, TypeError), match=pattern):
        ShiftWiseNet(arch="atto", **kwargs)


def test_checkpoint_that_does_not_fit_names_the_keys(tmp_path):
    from swtasks.checkpoint import CheckpointMismatchError

    # a different width: every mis-shaped key is named with both shapes
    atto = _cls_model().state_dict()
    path = tmp_path / "atto.pth"
    torch.save(atto, path)
    bb = ShiftWiseNet(
        arch="femto", init_cfg=dict(type="Pretrained", checkpoint=str(path), prefix="backbone.")
    )
    with pytest.raises(
        CheckpointMismatchError,
        match=r"downsample_layers\.0\.0\.weight \(checkpoint \(20, 3, 3, 3\), model \(24, 3, 3, 3\)\)",
    ):
        bb.init_weights()
    # a missing block (shallower checkpoint) and an extra one
    sd = {k: v for k, v in atto.items() if not k.startswith("stages.2.5.")}
    sd["stages.2.9.gamma"] = torch.ones(160)
    torch.save(sd, path)
    bb = ShiftWiseNet(arch="atto", init_cfg=dict(type="Pretrained", checkpoint=str(path)))
    with pytest.raises(
        CheckpointMismatchError,
        match=r"(?s)missing keys \(\d+\): stages\.2\.5\..*unexpected keys \(1\): stages\.2\.9\.gamma",
    ):
        bb.init_weights()
    # strict=False loads what fits and leaves the rest
    bb = ShiftWiseNet(arch="atto", init_cfg=dict(type="Pretrained", checkpoint=str(path), strict=False))
    bb.init_weights()
    assert torch.equal(bb.stages[0][0].gamma, atto["stages.0.0.gamma"])
    # nothing that looks like this backbone
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7)}, path)
    bb = ShiftWiseNet(arch="atto", init_cfg=dict(type="Pretrained", checkpoint=str(path), prefix="backbone."))
    with pytest.raises(
        CheckpointMismatchError, match=r"no key fits the model under prefix 'backbone\.'.*'conv1\.weight'"
    ):
        bb.init_weights()
    bb = ShiftWiseNet(arch="atto", init_cfg=dict(type="Pretrained", checkpoint=str(tmp_path / "nope.pth")))
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        bb.init_weights()


def test_mm_base_configs_resolve():
    """`_base_ = 'mmdet::...'` resolves (mmengine needs pkg_resources: the mm extra pins setuptools<81)."""
    import tempfile

    from mmengine.config import Config

    with tempfile.TemporaryDirectory() as tmp:
        for base, model in (
            ("mmdet::mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py", "MaskRCNN"),
            ("mmseg::upernet/upernet_r50_4xb4-160k_ade20k-512x512.py", "EncoderDecoder"),
        ):
            path = f"{tmp}/{model}.py"
            with open(path, "w") as f:
                f.write(f"_base_ = {base!r}\n")
            assert Config.fromfile(path).model.type == model
