"""timm's model protocol for the swtasks models registered in timm, in a form CI can afford.

timm's CI runs tests/test_models.py of pytorch-image-models over every registered model (docs/deploy.md gives
the command that runs it over all 40 ``swtasks_*`` models, and its result). timm's wheel has no tests, so here
are the same checks, written against the protocol they test, for the smallest variant of each family (shrunk
by architecture overrides where a check computes): test_model_default_cfgs (on the meta device, as timm runs
it), test_model_forward, test_model_backward, test_model_forward_features, test_model_forward_fx and
test_model_backward_fx (timm's FX feature extraction). TorchScript scripting is not supported (docs/deploy.md:
use torch.export or tracing), so timm's two torchscript tests have no counterpart. Also: torchvision's
create_feature_extractor returns the four stage outputs, and our input check stays for eager calls.
"""

from __future__ import annotations

import fnmatch
import inspect
import re

import pytest
import torch

import swtasks

timm = pytest.importorskip("timm")  # the `timm` extra (installed by the `test` extra)

import swtasks.timm  # noqa: E402
from swtasks.models import ModelConfigError  # noqa: E402

fx = pytest.importorskip("torchvision.models.feature_extraction")

TINY = dict(depths=(1, 1, 1, 1), dims=(16, 32, 64, 128))
# the smallest variant of each family -> overrides that shrink it for the checks that compute (None: as it is)
FAMILIES = {
    "swtasks_shiftwise_atto": TINY,
    "swtasks_unireplknet_a": dict(TINY, kernel_sizes=(3, 13, 13, 13)),
    "swtasks_slak_t": dict(TINY, kernel_sizes=(13, 11, 9, 7)),
    "swtasks_convnext_t": TINY,
    "swtasks_resnet18": dict(depths=(1, 1, 1, 1)),
    "swtasks_mobilenetv2_100": None,
    "swtasks_kw_resnet18_1d4x": dict(depths=(1, 1, 1, 1)),
    "swtasks_kw_mobilenetv2_050_1d2x": None,  # its classifier is a KW layer with a warehouse of its own
    "swtasks_kw_convnext_t_1x": TINY,
}
NAMES = list(FAMILIES)
SIZE = 64  # image size of the checks that compute (timm's use 96 to 224; the models take any size >= 32)


def _create(name: str, **kwargs):
    return timm.create_model(name, pretrained=False, **(FAMILIES[name] or {}), **kwargs)


def _outputs(out) -> torch.Tensor:
    return torch.cat(out) if isinstance(out, (tuple, list)) else out


def _family(timm_name: str) -> str:
    """swtasks_kw_resnet18_1x -> kw_resnet, swtasks_shiftwise_tiny -> shiftwise, swtasks_resnet50 -> resnet."""
    name = swtasks.timm.swtasks_name(timm_name)
    kw = name.startswith("kw_")
    return ("kw_" if kw else "") + re.sub(r"\d+$", "", name.removeprefix("kw_").split("_")[0])


def test_every_family_is_covered():
    assert {_family(n) for n in timm.list_models("swtasks_*")} == {_family(n) for n in NAMES}


@pytest.mark.parametrize("name", NAMES)
def test_default_cfg(name):
    """timm's test_model_default_cfgs, on the meta device at the models' own size (no weights allocated)."""
    with torch.device("meta"):
        model = timm.create_model(name, pretrained=False, device="meta", dtype=torch.float32).eval()
    # the model API contract: unknown arguments raise TypeError, reset_classifier's pool default, no_weight_decay
    with pytest.raises(TypeError), torch.device("meta"):
        timm.create_model(name, pretrained=False, device="meta", not_a_model_arg=1)
    assert inspect.signature(model.reset_classifier).parameters["global_pool"].default is None
    params = [n for n, _ in model.named_parameters()]
    assert all(any(fnmatch.fnmatch(n, p) for n in params) for p in model.no_weight_decay())

    assert model.num_classes == 1000 and model.num_features > 0 and model.head_hidden_size > 0
    cfg = model.default_cfg
    assert cfg is model.pretrained_cfg and model.in_chans == cfg["input_size"][0]
    pool = cfg["pool_size"]
    x = torch.randn((1, *cfg["input_size"]), device="meta")
    feats = model.forward_features(x)
    pre = model.forward_head(feats, pre_logits=True)
    assert feats.shape[1:] == (model.num_features, *pool) and pre.shape == (1, model.head_hidden_size)
    model.to(torch.bfloat16)  # a dtype change after a forward
    assert model(x.to(torch.bfloat16)).dtype == torch.bfloat16
    model.to(torch.float32)

    sd = model.state_dict()
    model.reset_classifier(0)
    assert model.num_classes == 0 and model(x).shape == pre.shape
    model.reset_classifier(0, "")  # no classifier, no pooling
    assert model(x).shape == feats.shape
    assert timm.create_model(name, num_classes=0, device="meta").eval()(x).shape == pre.shape
    assert timm.create_model(name, num_classes=0, global_pool="", device="meta").eval()(x).shape == feats.shape

    for key in ("classifier", "first_conv"):  # timm names them by their `.weight` (KW layers: none)
        names = (cfg[key],) if isinstance(cfg[key], str) else cfg[key]
        assert isinstance(names, tuple) and all(f"{n}.weight" in sd for n in names), (key, names)

    # reset_classifier keeps the model's device, dtype and mode; create_model(device=) places everything
    model.to(device="meta", dtype=torch.float64)
    model.reset_classifier(0)
    model.reset_classifier(2)
    head = list(model.get_classifier().parameters())
    assert head and all(p.device.type == "meta" and p.dtype == torch.float64 for p in head)
    assert all(not m.training for m in model.modules())
    placed = timm.create_model(name, device="meta", dtype=torch.float32)
    assert all(t.is_meta for t in (*placed.parameters(), *placed.buffers()))
    placed.requires_grad_(False)
    placed.reset_classifier(0)
    placed.reset_classifier(0, "")
    assert not any(p.requires_grad for p in placed.parameters())


@pytest.mark.parametrize("name", NAMES)
def test_forward_backward_and_grad_checkpointing(name):
    """timm's test_model_forward (grad checkpointing gives the same outputs) and test_model_backward (every
    parameter gets a gradient, the classifier has num_classes outputs)."""
    torch.manual_seed(0)
    model = _create(name).eval()
    x = torch.randn(1, 3, SIZE, SIZE)
    with torch.no_grad():
        out = model(x)
        model.set_grad_checkpointing()
        again = model(x)
    assert out.shape == (1, 1000) and not torch.isnan(out).any()
    torch.testing.assert_close(again, out, rtol=1e-4, atol=1e-5)

    model = _create(name, num_classes=42).train()
    out = _outputs(model(torch.randn(2, 3, SIZE, SIZE)))
    out.mean().backward()
    assert out.shape[-1] == 42
    assert [n for n, p in model.named_parameters() if p.grad is None] == []


@pytest.mark.parametrize("name", NAMES)
def test_forward_features(name):
    """timm's test_model_forward_features: features_only maps match feature_info."""
    model = _create(name, features_only=True).eval()
    channels, reductions = model.feature_info.channels(), model.feature_info.reduction()
    assert len(channels) >= 3
    with torch.no_grad():
        maps = model(torch.randn(1, 3, SIZE, SIZE))
    assert [tuple(m.shape) for m in maps] == [(1, c, SIZE // r, SIZE // r) for c, r in zip(channels, reductions)]


def _timm_fx_model(model, train: bool = False):
    """timm's _create_fx_model (tests/test_models.py): torchvision's FX feature extraction with timm's tracer
    settings, returning the model's output node."""
    kwargs = dict(leaf_modules=timm.models.get_notrace_modules(),
                  autowrap_functions=timm.models.get_notrace_functions(), param_shapes_constant=True)
    train_nodes, eval_nodes = fx.get_graph_node_names(model, tracer_kwargs=kwargs)
    train_return = [train_nodes[-1]]
    if train:
        graph_nodes = list(reversed(fx.NodePathTracer(**kwargs).trace(model).nodes))
        names = [n.name for n in graph_nodes]
        train_return = [train_nodes[-names.index(n.name)] for n in graph_nodes[0]._input_nodes]
    return fx.create_feature_extractor(model, train_return_nodes=train_return, eval_return_nodes=[eval_nodes[-1]],
                                       tracer_kwargs=kwargs)


@pytest.mark.parametrize("name", NAMES)
def test_fx_forward_and_backward(name):
    """timm's test_model_forward_fx (the traced graph gives the eager outputs) and test_model_backward_fx
    (every parameter of the traced training graph gets a gradient)."""
    torch.manual_seed(0)
    model = _create(name).eval()
    x = torch.randn(1, 3, SIZE, SIZE)
    with torch.inference_mode():
        out = model(x)
        traced = _outputs(tuple(_timm_fx_model(model)(x).values()))
    torch.testing.assert_close(traced, out, rtol=1e-4, atol=1e-5)

    model = _create(name, num_classes=42).train()
    graph = _timm_fx_model(model, train=True)
    out = _outputs(tuple(graph(torch.randn(2, 3, SIZE, SIZE)).values()))
    out.mean().backward()
    assert out.shape[-1] == 42
    assert [n for n, p in graph.named_parameters() if p.grad is None] == []


def test_torchvision_feature_extractor_returns_the_stage_outputs():
    """torchvision's create_feature_extractor with its default tracer (no leaf modules given) on ShiftWiseNet:
    the four stage outputs, equal to the eager model's, in eval and in training mode."""
    torch.manual_seed(0)
    model = swtasks.create_model("shiftwise_atto", **TINY).eval()
    extractor = fx.create_feature_extractor(model, return_nodes={f"stages.{i}": f"stage{i}" for i in range(4)})
    x = torch.randn(2, 3, SIZE, SIZE)
    seen = {}
    for i in range(4):
        model.stages[i].register_forward_hook(lambda m, args, out, i=i: seen.__setitem__(f"stage{i}", out))
    with torch.no_grad():
        maps = extractor(x)
        model(x)
    assert list(maps) == ["stage0", "stage1", "stage2", "stage3"]
    assert [tuple(m.shape) for m in maps.values()] == [(2, 16, 16, 16), (2, 32, 8, 8), (2, 64, 4, 4),
                                                       (2, 128, 2, 2)]
    for key, value in maps.items():
        torch.testing.assert_close(value, seen[key], rtol=1e-4, atol=1e-5)
    extractor.train()
    sum(m.sum() for m in extractor(x).values()).backward()
    assert model.stages[0][0].large_kernel.weight.grad is not None


def test_input_check_stays_for_eager_calls():
    model = timm.create_model("swtasks_shiftwise_atto", **TINY).eval()
    with pytest.raises(ValueError, match=r"expected an image batch of shape \(B, 3, H, W\), got \(3, 64, 64\)"):
        model(torch.randn(3, 64, 64))
    with pytest.raises(ValueError, match="expected 3 image channels"):
        model(torch.randn(1, 1, 64, 64))
    with pytest.raises(ValueError, match="smaller than the network's total stride 32"):
        model(torch.randn(1, 3, 16, 16))


def test_global_pool_and_pretrained_cfg_names():
    """global_pool='' keeps the map: the classifier runs at every position (for ResNet, whose classifier
    follows the average pool, the mean of the position logits is the pooled logit); other pools are refused.
    pretrained_cfg names the stem and the classifier as timm does (KW layers, whose kernels are drawn from a
    warehouse, not)."""
    torch.manual_seed(0)
    x = torch.randn(2, 3, SIZE, SIZE)
    model = timm.create_model("swtasks_resnet18", depths=(1, 1, 1, 1), num_classes=5, global_pool="").eval()
    with torch.no_grad():
        dense = model(x)
        pooled = model.fc(model.forward_features(x).mean(dim=(2, 3)))
    assert dense.shape == (2, 5, 2, 2)
    torch.testing.assert_close(dense.mean(dim=(2, 3)), pooled, rtol=1e-5, atol=1e-5)
    model = timm.create_model("swtasks_shiftwise_atto", **TINY, num_classes=5).eval()
    model.reset_classifier(7, "")
    assert model.global_pool == "" and model(x).shape == (2, 7, 2, 2)
    assert model.forward_head(model.forward_features(x), pre_logits=True).shape == (2, 128, 2, 2)
    with pytest.raises(ModelConfigError, match=r"global_pool must be one of \('avg', ''\), got 'max'"):
        timm.create_model("swtasks_shiftwise_atto", global_pool="max")
    with pytest.raises(ModelConfigError, match="got 'catavgmax'"):
        model.reset_classifier(0, "catavgmax")

    names = {n: timm.create_model(n, device="meta").pretrained_cfg for n in
             ("swtasks_shiftwise_atto", "swtasks_resnet18", "swtasks_kw_convnext_t_1x",
              "swtasks_kw_mobilenetv2_050_1d2x")}
    assert [(c["first_conv"], c["classifier"], c["pool_size"]) for c in names.values()] == [
        ("downsample_layers.0.0", "head", (7, 7)), ("conv1", "fc", (7, 7)),
        ((), "head", (7, 7)),  # the KW ConvNeXt stem draws its kernel from a warehouse
        ((), (), (7, 7)),  # and so does the KW classifier of the published 1/2x MobileNetV2
    ]


def test_kw_classifier_reset_replaces_it_and_its_warehouse():
    """The published KW MobileNetV2 1/2x classifier draws from a warehouse of its own: reset_classifier (timm's
    protocol) replaces both by a plain Linear; num_classes=0 builds without that warehouse."""
    model = swtasks.create_model("kw_mobilenetv2_050_1d2x", num_classes=3)
    cells = model.warehouse_cells()
    assert len(cells) == 10
    model.reset_classifier(5)
    assert isinstance(model.get_classifier(), torch.nn.Linear) and model.warehouse_cells() == cells[:-1]
    assert model.classifier_warehouse_dropped and not model.kw_classifier
    assert not any(k.startswith("warehouse_manager.weights.9") for k in model.state_dict())
    out = model.train()(torch.randn(2, 3, 32, 32))
    out.mean().backward()
    assert out.shape == (2, 5) and all(p.grad is not None for p in model.parameters())
    headless = swtasks.create_model("kw_mobilenetv2_050_1d2x", num_classes=0)
    assert headless.warehouse_cells() == cells[:-1] and headless.eval()(torch.randn(1, 3, 32, 32)).shape == (1, 1280)


def test_traced_kw_graph_takes_single_sample_training_batches():
    """The KW attention's BatchNorm normalises a single-sample training batch with its running statistics:
    a traced training graph decides that when it runs, as the eager model does."""
    torch.manual_seed(0)
    model = swtasks.create_model("kw_resnet18_1d4x", depths=(1, 1, 1, 1), num_classes=3).train()
    graph = fx.create_feature_extractor(model, return_nodes={"fc": "logits"})
    for batch in (1, 2):
        x = torch.randn(batch, 3, SIZE, SIZE)
        torch.testing.assert_close(graph(x)["logits"], model(x))
