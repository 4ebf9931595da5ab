"""Weights as .safetensors: the file is tensors plus the meta as JSON string metadata (no pickle), it
round-trips (dtypes, shared and non-contiguous tensors, meta), and every writer (save_weights,
tools/convert_checkpoint.py, tools/reparameterize.py, tools/export_backbone.py) and reader (create_model, the
published-layout adapter, the MMDetection/MMSegmentation init_cfg loader) handles it."""

from __future__ import annotations

import json
import os
import runpy
import struct

import pytest
import torch
import torch.nn as nn

import swtasks

safetensors = pytest.importorskip("safetensors")  # the `export` extra (installed by the `test` extra)

from swtasks.checkpoint import CheckpointError, read_checkpoint, read_meta, save_weights  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = dict(depths=(1, 1, 1, 1), dims=(16, 32, 64, 128), layer_scale_init_value=1.0)


def _tool(name, argv):
    main = runpy.run_path(os.path.join(ROOT, "tools", f"{name}.py"), run_name=f"tool_{name}")["main"]
    return main([str(a) for a in argv])


def _trained(num_classes=7, seed=0, **kw):
    """A model with non-trivial BatchNorm statistics (folds and loads are then really tested)."""
    torch.manual_seed(seed)
    model = swtasks.create_model("shiftwise_atto", num_classes=num_classes, **{**SMALL, **kw})
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
    return model.eval()


def _images(n=2, seed=1):
    return torch.randn(n, 3, 64, 64, generator=torch.Generator().manual_seed(seed))


def test_file_is_tensors_and_json_meta_and_round_trips(tmp_path):
    base = torch.randn(6, 4)
    sd = {
        "fp32": torch.randn(3, 5),
        "bf16": torch.randn(4).to(torch.bfloat16),
        "fp64": torch.randn(2, 2, dtype=torch.float64),
        "count": torch.tensor(17),  # a 0-d int64 buffer (num_batches_tracked)
        "tied.a": base,  # two entries on one storage (tied weights) ...
        "tied.b": base,
        "view": base[1:3],  # ... a view into it
        "transposed": torch.randn(3, 5).t(),  # non-contiguous
    }
    meta = {"architecture": "shiftwise_atto", "overrides": {"dims": (16, 32)}, "verified": None,
            "err": 1.5e-7}
    path = tmp_path / "w.safetensors"
    save_weights(path, sd, meta)

    raw = path.read_bytes()
    (header_len,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + header_len])  # a JSON header, then raw tensor bytes: no pickle anywhere
    assert json.loads(header["__metadata__"]["meta"]) == {**meta, "overrides": {"dims": [16, 32]}}
    assert set(header) - {"__metadata__"} == set(sd)
    assert header["bf16"]["dtype"] == "BF16" and header["count"]["shape"] == []

    obj = read_checkpoint(path)
    assert set(obj) == {"state_dict", "meta"}
    assert obj["meta"] == {**meta, "overrides": {"dims": [16, 32]}}  # JSON: tuples come back as lists
    assert read_meta(path)["err"] == 1.5e-7
    for k, v in sd.items():
        got = obj["state_dict"][k]
        assert got.dtype == v.dtype and torch.equal(got, v), k


def test_unreadable_files_are_named(tmp_path):
    path = tmp_path / "w.safetensors"
    save_weights(path, {"w": torch.randn(8, 8)}, {"a": 1})
    truncated = tmp_path / "cut.safetensors"
    truncated.write_bytes(path.read_bytes()[:-40])
    with pytest.raises(CheckpointError, match="cut.safetensors: not a readable safetensors file"):
        read_checkpoint(truncated)
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, str(tmp_path / "bad.safetensors"), metadata={"meta": "{not json"})
    with pytest.raises(CheckpointError, match="bad.safetensors: the 'meta' string metadata is not JSON"):
        read_checkpoint(tmp_path / "bad.safetensors")
    # a file written by other tools (no 'meta'): the tensors, and an empty meta
    save_file({"w": torch.ones(2)}, str(tmp_path / "other.safetensors"), metadata={"format": "pt"})
    assert read_checkpoint(tmp_path / "other.safetensors")["meta"] == {}


def test_create_model_and_reparameterize_tool(tmp_path, capsys):
    trained = _trained()
    src = tmp_path / "train.safetensors"
    save_weights(src, trained.state_dict(), {"architecture": "shiftwise_atto", "num_classes": 7})
    loaded = swtasks.create_model("shiftwise_atto", num_classes=7, checkpoint_path=src, **SMALL).eval()
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), trained.state_dict().values()))

    out = tmp_path / "deploy.safetensors"
    sets = [a for k, v in SMALL.items() for a in ("--set", f"{k}={v!r}")]
    assert _tool("reparameterize", [src, out, "--model", "shiftwise_atto", *sets]) == 0, capsys.readouterr()
    meta = read_meta(out)
    assert meta["deploy"] is True and meta["num_classes"] == 7 and meta["verified_relative_error"] < 1e-4
    deployed = swtasks.create_model("shiftwise_atto", num_classes=7, deploy=True, checkpoint_path=out,
                                    **SMALL)
    x = _images()
    with torch.no_grad():
        torch.testing.assert_close(deployed.eval()(x), trained(x), rtol=1e-4, atol=1e-4)


def test_export_backbone_tool_writes_safetensors(tmp_path, capsys):
    """tools/export_backbone.py from a classification checkpoint (Lightning's layout, as tools/train_cls.py
    writes it) to .safetensors; create_model reads the backbone.-prefixed file."""
    trained = _trained(num_classes=10, seed=2)
    ckpt = tmp_path / "last.ckpt"
    sd = {f"backbone.{k}": v for k, v in trained.state_dict().items()}
    hparams = {"backbone": "shiftwise_atto", "num_classes": 10, "backbone_kwargs": SMALL}
    torch.save({"epoch": 3, "global_step": 12, "state_dict": sd, "hyper_parameters": hparams}, ckpt)
    out = tmp_path / "backbone.safetensors"
    assert _tool("export_backbone", [ckpt, out]) == 0
    assert "keys prefixed 'backbone.'" in capsys.readouterr().out
    obj = read_checkpoint(out)
    assert all(k.startswith("backbone.") for k in obj["state_dict"]) and obj["meta"]["epoch"] == 3
    model = swtasks.create_model("shiftwise_atto", num_classes=10, checkpoint_path=out, **SMALL).eval()
    x = _images()
    with torch.no_grad():
        torch.testing.assert_close(model(x), trained(x))


def test_published_layout_and_converter_in_safetensors(tmp_path, capsys):
    """The published implementation's layout stored as .safetensors converts while loading, and
    tools/convert_checkpoint.py writes .safetensors; both reproduce the reference network's logits (the
    independent re-statement in tests/helpers.py)."""
    from helpers import N_CLASSES, images, random_reference
    from helpers import SMALL as REF_SMALL

    ref = random_reference(merged=False)
    published = tmp_path / "published.safetensors"
    save_weights(published, {f"module.{k}": v for k, v in ref.state_dict().items()}, {"epoch": 299})
    on_the_fly = swtasks.create_model("shiftwise_atto", num_classes=N_CLASSES, checkpoint_path=published,
                                      **REF_SMALL)
    out = tmp_path / "converted.safetensors"
    argv = ["--source", "shiftwise-official", published, out, "--arch", "atto"]
    argv += [f"--set={k}={v!r}" for k, v in REF_SMALL.items()]
    assert _tool("convert_checkpoint", argv) == 0, capsys.readouterr()
    assert read_meta(out)["source"] == "shiftwise-official"
    converted = swtasks.create_model("shiftwise_atto", num_classes=N_CLASSES, checkpoint_path=out,
                                     **REF_SMALL)
    x = images()
    with torch.no_grad():
        want = ref(x)
        for model in (on_the_fly, converted):
            torch.testing.assert_close(model.double().eval()(x), want, rtol=1e-5, atol=1e-5)


@pytest.mark.mm
def test_mm_init_cfg_reads_safetensors(tmp_path):
    from swtasks.mm import ShiftWiseNet

    trained = _trained(seed=3)
    path = tmp_path / "backbone.safetensors"
    save_weights(path, {f"backbone.{k}": v for k, v in trained.state_dict().items()}, {"architecture": "x"})
    arch = dict(base="atto", depths=SMALL["depths"], dims=SMALL["dims"])
    bb = ShiftWiseNet(arch=arch, init_cfg=dict(type="Pretrained", checkpoint=str(path), prefix="backbone."))
    bb.init_weights()
    got, want = bb.state_dict(), trained.state_dict()
    shared = [k for k in got if not k.startswith("norm")]
    assert shared and all(torch.equal(got[k], want[k]) for k in shared)
