"""The model protocol, over every registered model (timm's tests/test_models.py, in a form CI affords).

For each name of ``swtasks.list_models()``: it builds; ``features_only=True`` returns maps whose channels and
strides are the ones its ``feature_info`` states, at a non-square input; ``reparameterize()`` (the deploy
structure, in place) computes the training structure's output; the state dict written to a file loads into a
fresh model through ``create_model(checkpoint_path=...)`` and gives the same output; every name of
``no_weight_decay()`` names a parameter; ``forward_features`` / ``forward_head`` compose to ``forward`` and
``reset_classifier(7)`` gives 7 outputs; ``freeze_stages(1)`` takes the gradients from the stem and the first stage
and keeps them in eval mode through ``train()``. docs/models.md ("The model protocol") lists the same.

The paper-sized variants are shrunk by architecture overrides (SIZES), so the whole file takes well under a
minute on two cores; every registered name needs a row, so a model registered without one fails here.
"""

from __future__ import annotations

import fnmatch

import pytest
import torch
from helpers import randomize

import swtasks

try:  # the export extra (installed by the test extra): a file that reads in a fraction of a .pth's time
    from safetensors.torch import save_file
except ImportError:
    save_file = None

# every registered model -> the overrides that make it test-sized ({}: built as registered: the smallest
# variant of a family, and KW MobileNetV2, which takes no width or depth override, all under 11 M parameters).
# The other variants keep everything but depths and widths (kernel sizes, KW warehouse ratios, ...). A name
# registered without a row fails test_protocol with a request to add one.
_D1 = dict(depths=(1, 1, 1, 1))
_SMALL = dict(depths=(1, 1, 1, 1), dims=(16, 24, 32, 40))
SIZES: dict[str, dict] = {
    "shiftwise_atto": {}, **{f"shiftwise_{v}": _SMALL for v in ("femto", "pico", "tiny", "small", "base", "large")},
    # kernel sizes: UniRepLKNet publishes them per depth only
    "unireplknet_a": {},
    **{f"unireplknet_{v}": dict(_SMALL, kernel_sizes=(3, 13, 13, 13)) for v in ("f", "p", "n", "t", "s", "b", "l", "xl")},
    **{f"slak_{v}": _SMALL for v in ("t", "s", "b")},
    **{f"convnext_{v}": _SMALL for v in ("t", "s", "b")},
    "kw_convnext_t_1x": _SMALL,
    **{f"kw_resnet18_{v}": _D1 for v in ("1d4x", "1d2x", "1x", "2x", "4x")},
    **{f"kw_resnet50_{v}": _D1 for v in ("1d2x", "1x", "4x")},
    **{f"kw_mobilenetv2_{w}_{v}": {} for w in ("050", "100") for v in ("1d2x", "1x", "4x")},
    "resnet18": _D1, "resnet50": _D1, "mobilenetv2_100": {},
}  # fmt: skip
H, W = 64, 96  # non-square, a multiple of the total stride 32
RTOL = 1e-4  # float32: the deploy fold is done in float64, the forward in float32


def _build(name: str, **kw) -> torch.nn.Module:
    if name not in SIZES:
        pytest.fail(f"{name} is registered but has no row in SIZES of tests/test_model_protocol.py: add one")
    return swtasks.create_model(name, num_classes=5, **SIZES[name], **kw).eval()


def _close(got: torch.Tensor, want: torch.Tensor, rtol: float = RTOL) -> None:
    assert got.shape == want.shape
    err = float((got - want).abs().max() / want.abs().max())
    assert err <= rtol, f"max |difference| / max |reference| = {err:.2e} > {rtol:.0e}"


def _matches(name: str, params: set[str]) -> bool:
    """param_groups.decays's convention, written here independently: a full name, a dotted suffix of one, or an
    fnmatch pattern."""
    return any(name == p or p.endswith("." + name) or fnmatch.fnmatchcase(p, name) for p in params)


def test_every_registered_model_has_a_size():
    assert sorted(SIZES) == swtasks.list_models(), "SIZES must name exactly the registered models"


@pytest.mark.parametrize("name", swtasks.list_models())
def test_protocol(name, tmp_path):
    torch.manual_seed(0)
    model = randomize(_build(name))
    x = torch.randn(1, 3, H, W, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        y = model(x)
        assert y.shape == (1, 5)
        _close(model.forward_head(model.forward_features(x)), y, rtol=0)

    # no_weight_decay: names of parameters
    params = {n for n, _ in model.named_parameters()}
    nwd = set(model.no_weight_decay())
    assert nwd, "no_weight_decay() names nothing (biases and norm weights at least)"
    assert not [n for n in nwd if not _matches(n, params)], "no_weight_decay() names no parameter"

    # the state dict round-trips through a file into a fresh model (another seed: only the file can agree)
    state = {k: v.clone() for k, v in model.state_dict().items()}  # clone: no shared storage in the file
    path = tmp_path / (f"{name}.safetensors" if save_file else f"{name}.pth")
    save_file(state, path) if save_file else torch.save(state, path)
    torch.manual_seed(1)
    fresh = _build(name, checkpoint_path=path)
    with torch.no_grad():
        _close(fresh(x), y, rtol=0)

    # reparameterize(): the deploy structure in place, the same function
    model.reparameterize()
    with torch.no_grad():
        _close(model(x), y)

    fresh.reset_classifier(7)
    with torch.no_grad():
        assert fresh(x).shape == (1, 7)

    # features_only: what feature_info states, at a non-square input
    torch.manual_seed(0)
    feats = _build(name, features_only=True)
    with torch.no_grad():
        outs = feats(x)
    info = feats.feature_info
    assert [o.shape[1] for o in outs] == info.channels()
    assert [(H // o.shape[2], W // o.shape[3]) for o in outs] == [(r, r) for r in info.reduction()]
    assert [(H % o.shape[2], W % o.shape[3]) for o in outs] == [(0, 0)] * len(outs)
    assert info.reduction() == [4, 8, 16, 32], info.reduction()

    # freeze_stages(k): the stem and the first k stages lose their gradients and stay in eval mode in train()
    frozen = {id(p) for p in feats.frozen_parameters(1)}
    assert {id(p) for p in feats.frozen_parameters(0)} < frozen < {id(p) for p in feats.parameters()}
    assert feats.freeze_stages(1) is feats
    feats.train()
    assert all(p.requires_grad == (id(p) not in frozen) for p in feats.parameters())
    assert not any(m.training for s in feats.stage_modules(1) for m in s.modules())
