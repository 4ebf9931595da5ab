"""Reading the reference implementation's checkpoints: the shift-wise family's checkpoint adapter
(swtasks.models.shiftwise_official) behind every loader, and tools/convert_checkpoint.py.

The oracle is the shift-wise reference network of tests/helpers.py (``RefNet``): a minimal re-statement of
the reference network's forward with the reference's state-dict layout, sharing no module with the model under
test except the literal operator path.
"""

from __future__ import annotations

import argparse

import numpy as np
import pytest
import torch
from helpers import (
    N_CLASSES,
    SMALL,
    build_reference,
    convert_shiftwise_official,
    images,
    random_reference,
    tool,
)

import swtasks
from swtasks.checkpoint import CheckpointError, CheckpointMismatchError, load_into
from swtasks.convert import convert_checkpoint_file
from swtasks.models.shiftwise_official import reference_tables


def our_model(sd, **cfg):
    model = swtasks.create_model("shiftwise_atto", num_classes=N_CLASSES, **{**SMALL, **cfg}).double().eval()
    model.load_state_dict(sd)
    return model


# ------------------------------------------------------------------------------------------ equivalence


def test_oracle_has_the_reference_layout():
    ref = random_reference()
    keys = ref.state_dict().keys()
    p = "stages.0.0.large_kernel."
    assert {
        p + "LoRAs.0.weight",
        p + "LoRAs.1.weight",
        p + "bn_lora1.running_var",
        p + "bn_small.weight",
    } <= keys
    assert ref.state_dict()[p + "LoRAs.0.weight"].shape == (12 * 5, 1, 3, 3)  # C=16: R=12, K=13: nk=5
    assert {
        "stages.0.0.pwconv1.1.weight",
        "stages.0.0.act.1.gamma",
        "stages.0.0.pwconv2.2.running_mean",
        "stages.0.0.se.down.weight",
        "downsample_layers.0.4.weight",
        "norm.weight",
        "head.bias",
    } <= keys
    # the permutation is not the identity: conversion has something to undo
    lk = ref.stages[0][0].large_kernel
    assert not torch.equal(torch.cat([lk.rep, lk.ghost]), torch.arange(16))


@pytest.mark.parametrize("merged", [False, True], ids=["unmerged", "merged"])
def test_converted_model_computes_the_reference_logits(merged):
    ref = random_reference(merged=merged)
    src = ref.state_dict()
    assert any(k.endswith("large_kernel.LoRA.weight") for k in src) == merged
    converted = convert_shiftwise_official({"model": src, "epoch": 3}, arch="atto", **SMALL)
    model = our_model(converted)
    x = images()
    with torch.no_grad():
        expected, got = ref(x), model(x)
    assert got.shape == (2, N_CLASSES)
    torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-9)
    # and the same after our re-parameterisation into the deploy form
    model.reparameterize()
    with torch.no_grad():
        torch.testing.assert_close(model(x), expected, rtol=1e-7, atol=1e-7)


def test_the_channel_permutation_is_needed():
    """Sanity of the oracle: loading the reference tensors without the permutation gives other logits."""
    ref = random_reference()
    converted = convert_shiftwise_official(ref.state_dict(), arch="atto", **SMALL)
    raw = dict(converted)
    for k in raw:
        if k.endswith((".norm.weight", ".se.up.bias", "pwconv1.1.weight")) and k.startswith("stages."):
            raw[k] = ref.state_dict()[k]
    x = images()
    with torch.no_grad():
        assert not torch.allclose(our_model(raw)(x), ref(x), atol=1e-3)


def test_prefixes_and_wrappers_are_stripped():
    src = random_reference().state_dict()
    plain = convert_shiftwise_official(src, arch="atto", **SMALL)
    for wrapped in (
        {"state_dict": {"module." + k: v for k, v in src.items()}},
        {"model_ema": {"backbone." + k: v for k, v in src.items()}},
    ):
        out = convert_shiftwise_official(wrapped, arch="atto", **SMALL)
        assert out.keys() == plain.keys() and all(torch.equal(out[k], plain[k]) for k in out)


def test_tables_match_the_reference_draws_and_leave_global_rng_alone():
    torch.manual_seed(5)
    np.random.seed(5)
    before_t, before_n = torch.random.get_rng_state(), np.random.get_state()[1].copy()
    tables = reference_tables(80, 51, 3, 0.23, 4)  # tiny, stage 1
    assert torch.equal(torch.random.get_rng_state(), before_t) and np.array_equal(
        np.random.get_state()[1], before_n
    )
    assert tables["rep_idx"].numel() == 60 and tables["ghost_idx"].numel() == 20
    assert tables["slot_h"].shape == (4, 1020) and tables["ident"].shape == (4, 60)
    layer = swtasks.create_model("shiftwise_tiny", depths=(1, 0, 0, 0)).stages[0][0].large_kernel
    for name, t in tables.items():
        assert torch.equal(getattr(layer, name), t), name


# ------------------------------------------------------------------------------------------ refusals


def test_missing_unexpected_and_misshaped_keys_are_reported():
    src = dict(random_reference().state_dict())
    del src["stages.1.0.large_kernel.LoRAs.1.weight"]
    del src["stages.2.1.norm.running_var"]
    src["stages.0.0.se.down.weight"] = src["stages.0.0.se.down.weight"][:, :5]
    src["stages.3.0.large_kernel.bn_lora2.weight"] = torch.ones(3, dtype=torch.float64)
    src["stages.0.0.extra.weight"] = torch.zeros(2)
    with pytest.raises(CheckpointMismatchError) as info:
        convert_shiftwise_official(src, arch="atto", **SMALL)
    msg = str(info.value)
    # one path of stage 2's small kernels is missing: the other is left unconverted (unexpected)
    assert "missing keys (2)" in msg and "unexpected keys (2)" in msg and "mis-shaped keys (2)" in msg
    for key in (
        "stages.1.0.large_kernel.weight",
        "stages.1.0.large_kernel.LoRAs.0.weight",
        "stages.2.1.norm.running_var",
        "stages.0.0.extra.weight",
        "stages.0.0.se.down.weight (checkpoint (4, 5, 1, 1), model (4, 16, 1, 1))",
        "stages.3.0.large_kernel.bn_v.weight (checkpoint (3,), model (30,))",
    ):
        assert key in msg


def test_wrong_arch_is_refused_with_a_hint():
    src = random_reference().state_dict()
    with pytest.raises(
        CheckpointMismatchError, match=r"the file has depths \(1, 1, 2, 1\), dims \(16, 24, 32, 40\)"
    ):
        convert_shiftwise_official(src, arch="atto")


# ------------------------------------------------------------------------------------------ files and CLI


def test_command_line_writes_a_checkpoint_that_create_model_loads(tmp_path, capsys):
    ref = random_reference(merged=True)
    src_path = tmp_path / "ref.pth"
    # the reference's checkpoint layout: ConvNeXt-style, with its argparse Namespace pickled in
    torch.save(
        {
            "model": {"module." + k: v for k, v in ref.state_dict().items()},
            "optimizer": {},
            "epoch": 299,
            "args": argparse.Namespace(model="ShiftWise_v2_tiny", lr=4e-3),
        },
        src_path,
    )
    out = tmp_path / "sub" / "converted.pth"
    argv = ["--source", "shiftwise-official", str(src_path), str(out), "--arch", "atto"]
    argv += [f"--set={k}={v!r}" for k, v in SMALL.items()]
    assert tool("convert_checkpoint").main(argv) == 0
    assert f"shiftwise_atto, num_classes={N_CLASSES}" in capsys.readouterr().out
    assert [p.name for p in out.parent.iterdir()] == ["converted.pth"], "no temporary file left behind"
    meta = torch.load(out, weights_only=True)["meta"]
    assert meta["architecture"] == "shiftwise_atto" and meta["num_classes"] == N_CLASSES
    assert meta["source"] == "shiftwise-official"
    model = swtasks.create_model("shiftwise_atto", num_classes=N_CLASSES, checkpoint_path=out, **SMALL)
    x = images()
    with torch.no_grad():
        torch.testing.assert_close(model.double().eval()(x), ref(x), rtol=1e-5, atol=1e-5)  # float32 file


def test_failed_conversion_leaves_no_output(tmp_path):
    src = dict(random_reference().state_dict())
    del src["head.weight"]
    src_path, out = tmp_path / "ref.pth", tmp_path / "out.pth"
    torch.save(src, src_path)
    with pytest.raises(CheckpointMismatchError, match="head.weight"):
        convert_checkpoint_file(
            src_path, out, source="shiftwise-official", model="shiftwise_atto", num_classes=N_CLASSES, **SMALL
        )
    assert list(tmp_path.iterdir()) == [src_path]
    with pytest.raises(ValueError, match="unknown checkpoint source"):
        convert_checkpoint_file(src_path, out, source="nonsense-official", model="shiftwise_atto")
    with pytest.raises(ValueError, match="converts shiftwise_\\* models"):
        convert_checkpoint_file(src_path, out, source="shiftwise-official", model="nonsense_t")
    # user errors (swtasks.errors.UserError: one line in the tool), still ValueErrors
    from swtasks.convert import ConversionError
    from swtasks.errors import UserError

    with pytest.raises(ConversionError, match="unknown checkpoint source") as e:
        convert_checkpoint_file(src_path, out, source="nonsense-official", model="shiftwise_atto")
    assert isinstance(e.value, UserError)


def test_the_tool_names_user_errors_in_one_line_and_lets_bugs_through(tmp_path, capsys, monkeypatch):
    """A file that needs a full unpickle is refused (named, with the opt-in); a converter bug keeps its
    traceback instead of being swallowed into a one-liner."""
    src_path = tmp_path / "ref.pth"
    torch.save({"model": random_reference().state_dict(), "hook": _Unsafe()}, src_path)
    argv = ["--source", "shiftwise-official", str(src_path), str(tmp_path / "out.pth"), "--arch", "atto"]
    assert _tool_run(argv) == 2
    err = capsys.readouterr().err
    assert str(src_path) in err and "--trust-pickle" in err and len(err.strip().splitlines()) == 1
    # a file that is not in the source's layout: one line too (run_tool catches only UserError)
    other = tmp_path / "ours.pth"  # this toolkit's own layout, not the reference's
    torch.save({"model": swtasks.create_model("shiftwise_atto", **SMALL).state_dict()}, other)
    argv_other = ["--source", "shiftwise-official", str(other), str(tmp_path / "o.pth"), "--arch", "atto"]
    assert _tool_run([*argv_other, *[f"--set={k}={v!r}" for k, v in SMALL.items()]]) == 2
    err = capsys.readouterr().err
    assert "is not in the shiftwise-official layout" in err and len(err.strip().splitlines()) == 1

    import swtasks.convert as convert_module

    def broken(*args, **kwargs):
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(convert_module, "save_weights", broken)
    good = tmp_path / "good.pth"
    torch.save({"model": random_reference().state_dict()}, good)
    argv[2] = str(good)
    with pytest.raises(ZeroDivisionError):
        _tool_run([*argv, *[f"--set={k}={v!r}" for k, v in SMALL.items()]])


class _Unsafe:
    """An object weights-only unpickling refuses (its class is not on the allow-list)."""


def _tool_run(argv):
    return tool("convert_checkpoint").main(argv)


def test_unreadable_files_are_named(tmp_path):
    bad = tmp_path / "truncated.pth"
    torch.save({"model": random_reference().state_dict()}, bad)
    bad.write_bytes(bad.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match=r"truncated\.pth: truncated or corrupt checkpoint"):
        swtasks.create_model("shiftwise_atto", checkpoint_path=bad)


@pytest.mark.slow
def test_tiny_reference_layout_converts_into_shiftwise_tiny():
    """The published model's layout: 1023 entries, 31,790,260 parameters; converts and loads strictly."""
    ref = build_reference(
        depths=(3, 3, 18, 3), dims=(80, 160, 320, 640), kernel_sizes=(51, 49, 47, 13), num_classes=1000
    )
    sd = ref.state_dict()
    assert len(sd) == 1023
    assert sum(p.numel() for p in ref.parameters()) == 31_790_260
    model = swtasks.create_model("shiftwise_tiny")
    assert load_into(model, {"model": sd}).converted  # strict
    torch.testing.assert_close(
        model.stages[2][5].se.up.bias[ref.stages[2][5].large_kernel.rep],
        sd["stages.2.5.se.up.bias"][: ref.stages[2][5].large_kernel.rep.numel()],
    )
