"""The one home for weights files (swtasks.checkpoint), parameter groups (swtasks.models.param_groups) and
verified re-parameterisation (swtasks.models.deploy): plain PyTorch, no framework needed."""

from __future__ import annotations

import os
import pickle

import pytest
import torch
import torch.nn as nn
from helpers import randomize

import swtasks
from swtasks.checkpoint import (
    CheckpointError,
    CheckpointMismatchError,
    atomic_torch_save,
    load_into,
    read_checkpoint,
    read_meta,
    save_weights,
    select_weights,
)
from swtasks.models.deploy import ReparameterizationError, reparameterize_file, reparameterize_verified
from swtasks.models.param_groups import decays, param_groups

SMALL = dict(depths=(1, 1, 2, 1), dims=(8, 16, 32, 64), kernel_sizes=(5, 3, 3, 3))


def _model(**kw):
    torch.manual_seed(0)
    return swtasks.create_model("shiftwise_atto", **{"num_classes": 5, **SMALL, **kw})


class _NotData:
    """Any class outside the allow-list: weights-only reading must refuse to rebuild it."""


# ---------------------------------------------------------------------------------------------- reading
def test_weights_only_refuses_arbitrary_objects_and_names_the_opt_in(tmp_path):
    path = tmp_path / "unsafe.pth"
    torch.save({"state_dict": _model().state_dict(), "extra": _NotData()}, path)
    with pytest.raises(CheckpointError, match=r"unsafe\.pth.*_NotData.*trust_pickle=True.*--trust-pickle"):
        read_checkpoint(path)
    with pytest.raises(CheckpointError, match="trust_pickle"):
        swtasks.create_model("shiftwise_atto", num_classes=5, **SMALL, checkpoint_path=path)
    # the explicit opt-in reads it
    assert isinstance(read_checkpoint(path, trust_pickle=True)["extra"], _NotData)
    swtasks.create_model("shiftwise_atto", num_classes=5, **SMALL, checkpoint_path=path, trust_pickle=True)


def test_truncated_and_garbage_files_are_named(tmp_path):
    good = tmp_path / "good.pth"
    save_weights(good, _model().state_dict(), {"architecture": "shiftwise_atto"})
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(good.read_bytes()[: os.path.getsize(good) // 2])
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(pickle.dumps([1, 2, 3])[:5])
    with pytest.raises(CheckpointError, match=rf"{truncated.name}: truncated or corrupt checkpoint"):
        read_checkpoint(truncated)
    with pytest.raises(CheckpointError, match=rf"{garbage.name}: not a readable checkpoint"):
        read_checkpoint(garbage)
    # a flipped byte inside a tensor: torch.load would read it silently, the CRC check does not
    flipped = tmp_path / "flipped.pth"
    data = bytearray(good.read_bytes())
    data[len(data) // 3] ^= 0xFF
    flipped.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=rf"{flipped.name}: (corrupt|truncated or corrupt) checkpoint"):
        read_checkpoint(flipped)
    with pytest.raises(FileNotFoundError, match="absent.pth"):
        read_checkpoint(tmp_path / "absent.pth")


def test_one_format_round_trip_and_meta(tmp_path):
    m = _model()
    path = tmp_path / "w.pth"
    save_weights(path, m.state_dict(), {"architecture": "shiftwise_atto", "num_classes": 5})
    obj = torch.load(path, weights_only=True)
    assert set(obj) == {"state_dict", "meta"} and read_meta(path)["num_classes"] == 5
    n = _model()
    with torch.no_grad():
        for p in n.parameters():
            p.add_(1.0)
    load_into(n, path)
    assert all(torch.equal(a, b) for a, b in zip(m.state_dict().values(), n.state_dict().values()))


# ---------------------------------------------------------------------------------------------- selecting
def test_prefix_selection_lightning_ema_and_ddp():
    sd = _model().state_dict()
    keys = sd.keys()
    ema = {k: v + 1 for k, v in sd.items()}
    lightning = {**{f"backbone.{k}": v for k, v in sd.items()}, **{f"ema.module.{k}": v for k, v in ema.items()},
                 "metrics.val.acc1.tp": torch.zeros(1)}
    got, how = select_weights(lightning, keys)
    assert how == "keys under detected prefix 'backbone.'" and torch.equal(got["head.bias"], sd["head.bias"])
    got, how = select_weights(lightning, keys, prefix="ema.module.")
    assert "ema.module." in how and torch.equal(got["head.bias"], ema["head.bias"])
    ddp = {f"module.model.{k}": v for k, v in sd.items()}
    got, how = select_weights(ddp, keys, prefix="backbone.")
    assert got.keys() == sd.keys() and "'model.'" in how
    with pytest.raises(CheckpointMismatchError, match="no key fits the model under prefix 'backbone.'"):
        select_weights({"conv1.weight": torch.zeros(1)}, keys, prefix="backbone.")


def test_features_only_and_exclude():
    cls_sd = _model().state_dict()
    fo = swtasks.create_model("shiftwise_atto", **SMALL, features_only=True, out_indices=(1, 3))
    report = load_into(fo, cls_sd)
    assert report.ignored == ["head.*", "norm.*"] and report.new == ["norm1", "norm3"]
    # a classifier of another size: refused unless excluded (fine-tuning re-initialises it)
    other = _model(num_classes=3)
    with pytest.raises(CheckpointMismatchError, match=r"(?s)mis-shaped keys \(2\).*head\.weight.*num_classes"):
        load_into(other, cls_sd)
    head = other.head.weight.clone()
    report = load_into(other, cls_sd, exclude=("head.",))
    assert torch.equal(other.head.weight, head) and report.fits


# ---------------------------------------------------------------------------------------------- writing
def test_atomic_save_never_truncates(tmp_path, monkeypatch):
    path = tmp_path / "ckpt" / "last.ckpt"
    atomic_torch_save({"v": torch.ones(3)}, path)

    def crash(obj, f, *a, **k):
        f.write(b"partial bytes")
        raise KeyboardInterrupt  # e.g. the job is killed mid-write

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        atomic_torch_save({"v": torch.zeros(3)}, path)
    monkeypatch.undo()
    assert torch.load(path)["v"].sum() == 3 and os.listdir(path.parent) == ["last.ckpt"]


def test_killed_mid_save_leaves_previous_checkpoint(tmp_path):
    """A process killed outright (SIGKILL) while writing: the target keeps its previous, loadable content;
    the hidden temporary it left is removed by the next save."""
    import signal
    import subprocess
    import sys

    path = tmp_path / "last.ckpt"
    atomic_torch_save({"step": 1, "w": torch.ones(1000)}, path)
    child = f"""
import os, signal, torch
from swtasks.checkpoint import atomic_torch_save
def dying_save(obj, f, *a, **k):
    f.write(b"PK\\x03\\x04 half a checkpoint")
    f.flush()
    os.kill(os.getpid(), signal.SIGKILL)
torch.save = dying_save
atomic_torch_save({{"step": 2}}, {str(path)!r})
"""
    r = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, timeout=120)
    assert r.returncode == -signal.SIGKILL, r.stderr
    left = sorted(os.listdir(tmp_path))
    assert left[0].startswith(".last.ckpt.") and left[0].endswith(".tmp") and left[1] == "last.ckpt"
    ck = torch.load(path, weights_only=True)
    assert ck["step"] == 1 and ck["w"].sum() == 1000
    atomic_torch_save({"step": 3}, path)
    assert os.listdir(tmp_path) == ["last.ckpt"] and torch.load(path, weights_only=True)["step"] == 3




# ---------------------------------------------------------------------------------------------- param groups
def test_weight_decay_rule():
    assert not decays("x.bias", torch.zeros(4, 4))
    assert not decays("norm.weight", torch.zeros(8))
    assert decays("act.1.gamma", torch.zeros(1, 1, 1, 16))  # 4-D: only no_weight_decay() exempts it
    assert not decays("act.1.gamma", torch.zeros(1, 1, 1, 16), ["act.1.gamma"])
    assert decays("pwconv1.1.weight", torch.zeros(16, 8))
    assert not decays("stages.0.0.pw.weight", torch.zeros(16, 8), ["*.pw.weight"])


def test_param_groups_follow_no_weight_decay_and_layer_ids():
    net = swtasks.create_model("shiftwise_atto", num_classes=5, depths=(1, 1, 4, 1), dims=(8, 16, 32, 64))
    groups = param_groups(net, lr=1.0, weight_decay=0.05)
    no_decay = {n for g in groups if g["weight_decay"] == 0 for n in g["names"]}
    assert set(net.no_weight_decay()) <= no_decay and "stages.0.0.act.1.gamma" in no_decay
    assert sum(len(g["params"]) for g in groups) == len(list(net.parameters()))
    groups = param_groups(net, lr=1.0, weight_decay=0.05, layer_decay=0.5)
    by_name = {n: g for g in groups for n in g["names"]}
    # the spec's rule: stem 0, stage 1 -> 1, stage 3 block b -> 3 + b // 3, head -> num_layers + 1
    assert by_name["head.weight"]["lr"] == 1.0 and groups[0]["lr_scale"] == 1.0
    assert by_name["downsample_layers.0.0.weight"]["layer_id"] == 0
    assert by_name["downsample_layers.0.0.weight"]["lr"] == pytest.approx(0.5**13)
    assert by_name["stages.2.3.pwconv1.1.weight"]["layer_id"] == 4
    assert by_name["stages.3.0.gamma"]["layer_id"] == 12


def test_param_groups_inside_a_larger_module_and_a_family_rule():
    class Detector(nn.Module):
        def __init__(self):
            super().__init__()
            self.backbone = swtasks.create_model("shiftwise_atto", features_only=True, **SMALL)
            self.neck = nn.Conv2d(64, 8, 1)

    det = Detector()
    groups = param_groups(det, lr=1.0, weight_decay=0.1, backbone=det.backbone, prefix="backbone.", layer_decay=0.5)
    by_name = {n: g for g in groups for n in g["names"]}
    assert by_name["neck.weight"]["lr_scale"] == 1.0 and by_name["neck.weight"]["weight_decay"] == 0.1
    assert by_name["backbone.stages.0.0.act.1.beta"]["weight_decay"] == 0.0  # the backbone's no_weight_decay()
    assert by_name["backbone.downsample_layers.0.0.weight"]["lr_scale"] == pytest.approx(0.5**13)

    class Plain(nn.Sequential):
        def layer_id(self, name, num_layers):
            return int(name.split(".")[0])

        num_layer_ids = 2

    plain = Plain(nn.Linear(2, 2), nn.Linear(2, 2))
    groups = param_groups(plain, lr=1.0, weight_decay=0.0, layer_decay=0.5)
    assert sorted(g["lr_scale"] for g in groups) == [0.125, 0.125, 0.25, 0.25]
    with pytest.raises(ValueError, match="known layout"):
        param_groups(nn.Sequential(nn.Linear(2, 2)), lr=1.0, weight_decay=0.0, layer_decay=0.8)


# ---------------------------------------------------------------------------------------------- deploy
def test_reparameterize_verified_and_to_file(tmp_path):
    m = randomize(_model())
    report = reparameterize_verified(m)
    assert report["relative_error"] < 1e-5 and report["params_after"] < report["params_before"]
    # a fold that changes the function is caught
    m2 = randomize(_model())

    def bad_fold():
        m2.reparameterize()
        with torch.no_grad():
            m2.head.bias.add_(1.0)

    with pytest.raises(ReparameterizationError, match="relative error"):
        reparameterize_verified(m2, fold=bad_fold)
    src = tmp_path / "train.pth"
    save_weights(src, randomize(_model()).state_dict(), {"num_classes": 5})
    meta = reparameterize_file(src, tmp_path / "deploy.pth", model="shiftwise_atto", overrides=SMALL)
    assert meta["deploy"] and meta["verified_relative_error"] < 1e-5
    swtasks.create_model("shiftwise_atto", num_classes=5, deploy=True, **SMALL, checkpoint_path=tmp_path / "deploy.pth")
