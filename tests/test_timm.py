"""timm interoperability (swtasks.timm): every registry model is a timm model named swtasks_<name>;
features_only is the family's own; timm's keyword arguments (as timm's train.py passes them, --pretrained-path
included) work; timm's reparameterize_model folds our models; `python -m swtasks.timm SCRIPT` runs a script
with them."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

import swtasks

timm = pytest.importorskip("timm")  # the `timm` extra (installed by the `test` extra)

import swtasks.timm  # noqa: E402
from swtasks.checkpoint import CheckpointMismatchError, save_weights  # noqa: E402
from swtasks.models import ModelConfigError  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = dict(depths=(1, 1, 1, 1), dims=(16, 32, 64, 128))


def test_every_registry_model_is_listed_by_timm():
    names = timm.list_models("swtasks_*")
    assert names == sorted(f"swtasks_{n}" for n in swtasks.list_models())
    assert "swtasks_shiftwise_tiny" in names
    assert timm.is_model("swtasks_shiftwise_atto")
    cfg = timm.models.get_pretrained_cfg("swtasks_shiftwise_tiny")
    assert cfg.input_size == (3, 224, 224) and cfg.crop_pct == 0.875 and not cfg.has_weights
    assert timm.list_models("swtasks_*", pretrained=True) == []  # nothing downloadable


def test_features_only_is_the_models_own():
    model = timm.create_model("swtasks_shiftwise_atto", features_only=True)
    assert type(model).__name__ == "ShiftWiseNet"  # no FeatureListNet wrapper around it
    assert model.feature_info.channels() == [40, 80, 160, 320]  # docs/models.md: atto widths
    assert model.feature_info.reduction() == [4, 8, 16, 32]
    with torch.no_grad():
        maps = model.eval()(torch.randn(2, 3, 64, 64))
    assert [tuple(m.shape) for m in maps] == [(2, 40, 16, 16), (2, 80, 8, 8), (2, 160, 4, 4), (2, 320, 2, 2)]
    some = timm.create_model("swtasks_shiftwise_atto", features_only=True, out_indices=(1, 3))
    assert some.feature_info.channels() == [80, 320] and some.feature_info.channels(1) == 320
    assert "num_classes" not in some.pretrained_cfg
    with pytest.raises(ModelConfigError, match="feature_cls='hook'"):
        timm.create_model("swtasks_shiftwise_atto", features_only=True, feature_cls="hook")


def test_train_script_arguments_and_pretrained_path(tmp_path):
    """The keyword arguments timm's train.py passes, with --pretrained-path pointing at a .safetensors file of
    another classifier size: the backbone loads, the classifier keeps its initialisation."""
    torch.manual_seed(0)
    source = swtasks.create_model("shiftwise_atto", num_classes=10, **SMALL)
    path = tmp_path / "in1k.safetensors"
    save_weights(path, source.state_dict(), {"architecture": "shiftwise_atto", "num_classes": 10})
    train_py_kwargs = dict(
        pretrained=True, in_chans=3, num_classes=5, drop_rate=0.0, drop_path_rate=0.1, drop_block_rate=None,
        global_pool=None, bn_momentum=None, bn_eps=None, scriptable=False, checkpoint_path=None,
        pretrained_cfg_overlay=dict(file=str(path), num_classes=-1), **SMALL,
    )
    model = timm.create_model("swtasks_shiftwise_atto", **train_py_kwargs)
    sd, ref = model.state_dict(), source.state_dict()
    assert model.num_classes == 5 and sd["head.weight"].shape == (5, 128)
    assert all(torch.equal(sd[k], ref[k]) for k in ref if not k.startswith("head."))
    assert model.pretrained_cfg["architecture"] == "swtasks_shiftwise_atto"
    assert model.pretrained_cfg["num_classes"] == 5
    data = timm.data.resolve_model_data_config(model)
    assert data["input_size"] == (3, 224, 224) and data["interpolation"] == "bicubic"
    assert model.stages[3][0].drop_path.drop_prob == pytest.approx(0.1)  # the last block: the full rate

    with pytest.raises(CheckpointMismatchError, match="mis-shaped keys"):  # a file of another width
        timm.create_model("swtasks_shiftwise_atto", pretrained=True,
                          pretrained_cfg_overlay=dict(file=str(path)))
    with pytest.raises(ModelConfigError, match="downloads no weights"):
        timm.create_model("swtasks_shiftwise_atto", pretrained=True)


def test_timm_reparameterize_model_folds_to_the_same_outputs():
    torch.manual_seed(0)
    model = timm.create_model("swtasks_shiftwise_atto", num_classes=3, layer_scale_init_value=1.0, **SMALL)
    model.eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_var.uniform_(0.5, 1.5)
                m.running_mean.uniform_(-0.2, 0.2)
        x = torch.randn(2, 3, 64, 64)
        before = model(x)
        folded = timm.utils.reparameterize_model(model)
        after = folded(x)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    assert ((after - before).abs().max() / before.abs().max()).item() < 1e-4


def test_module_runs_a_timm_script_with_the_models_registered(tmp_path):
    script = tmp_path / "bench.py"
    script.write_text(
        "import sys, timm, torch\n"
        "m = timm.create_model(sys.argv[1], features_only=True, depths=(1, 1, 1, 1),\n"
        "                      dims=(16, 32, 64, 128))\n"
        "print(sys.argv[0], [tuple(t.shape) for t in m(torch.randn(1, 3, 64, 64))])\n"
    )
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    done = subprocess.run([sys.executable, "-m", "swtasks.timm", str(script), "swtasks_shiftwise_atto"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    shapes = "[(1, 16, 16, 16), (1, 32, 8, 8), (1, 64, 4, 4), (1, 128, 2, 2)]"
    assert done.stdout == f"{script} {shapes}\n"  # the script ran as __main__ with its own argv
