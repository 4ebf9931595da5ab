"""Hostile files against every tool that reads weights (issue 21; docs/reliability.md, "Untrusted files").

The files are built here: a code-running pickle in three forms (a torch zip checkpoint whose pickle calls
``os.system``, one that calls ``builtins.exec``, and a raw pickle), data-only files whose meta or
hyper-parameters point at it and switch the opt-in on, files with NaN / inf weights, and a local HTTP
server (127.0.0.1, bounded, stopped after the module) serving a code-running checkpoint. Every tool is
run through its real entry point (in-process, so a payload that ran would leave its marker file here) and
must stop with exit status 2 and one line naming the file and what was refused; the marker must not exist.
"""

from __future__ import annotations

import http.server
import json
import os
import pickle
import sys
import threading
from pathlib import Path

import pytest
import torch
from helpers import tool

import swtasks
from swtasks.checkpoint import (
    CheckpointError,
    FileOptionsError,
    NonFiniteWeightsError,
    architecture_options,
    read_checkpoint,
    save_weights,
)

REPO = Path(__file__).resolve().parents[1]
SMALL = {"depths": (1, 1, 1, 1), "dims": (8, 16, 32, 64), "kernel_sizes": (5, 3, 3, 3)}
TINY_JSON = json.dumps({k: list(v) for k, v in SMALL.items()})


class _System:
    """Unpickling calls os.system: the commonest payload."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class _Exec:
    """Unpickling calls builtins.exec."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('ran')",))


def _atto(num_classes=3):
    return swtasks.create_model("shiftwise_atto", num_classes=num_classes, **SMALL)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("hostile")
    marker = d / "PAYLOAD_RAN"
    sd = _atto().state_dict()
    out = {"dir": d, "marker": marker}
    # code-running files
    out["evil_system"] = d / "evil_system.pth"
    torch.save({"state_dict": sd, "x": _System(marker)}, out["evil_system"])
    out["evil_exec"] = d / "evil_exec.ckpt"
    torch.save({"state_dict": sd, "x": _Exec(marker)}, out["evil_exec"])
    out["evil_raw"] = d / "evil_raw.pth"
    out["evil_raw"].write_bytes(pickle.dumps(_System(marker), protocol=2))
    # a data-only weights file whose meta points at the code-running one and switches the opt-in on
    out["meta_points"] = d / "meta_points.safetensors"
    save_weights(out["meta_points"], sd, {"architecture": "shiftwise_atto", "num_classes": 3,
                                          "overrides": {**SMALL, "checkpoint_path": str(out["evil_system"]),
                                                        "trust_pickle": True}})
    out["meta_points_pth"] = d / "meta_points.pth"
    save_weights(out["meta_points_pth"], sd, {"architecture": "shiftwise_atto", "num_classes": 3,
                                              "overrides": {**SMALL, "checkpoint_path": str(out["evil_system"]),
                                                            "trust_pickle": True}})
    # Lightning checkpoints (data only) whose hyper-parameters point at it: through `weights`, through
    # backbone_kwargs, through a class path
    import lightning

    def lightning_ckpt(name, **hp):
        path = d / name
        hparams = {"backbone": "shiftwise_atto", "num_classes": 3, "backbone_kwargs": dict(SMALL), **hp}
        torch.save({"state_dict": {"backbone." + k: v for k, v in sd.items()}, "hyper_parameters": hparams,
                    "pytorch-lightning_version": lightning.__version__, "epoch": 0, "global_step": 0}, path)
        return path

    out["hp_weights"] = lightning_ckpt("hp_weights.ckpt", weights=str(out["evil_exec"]), trust_pickle=True)
    out["hp_kwargs"] = lightning_ckpt(
        "hp_kwargs.ckpt", backbone_kwargs={**SMALL, "checkpoint_path": str(out["evil_exec"]), "trust_pickle": True}
    )
    out["hp_class"] = lightning_ckpt("hp_class.ckpt", _class_path="os.system")
    # non-finite weights
    nan_sd = {k: v.clone() for k, v in sd.items()}
    key = next(k for k, v in nan_sd.items() if v.is_floating_point() and v.numel() > 4 and k.endswith("weight"))
    nan_sd[key].view(-1)[:3] = float("nan")
    nan_sd[key].view(-1)[3] = float("inf")
    out["nan_key"] = key
    out["nan"] = d / "nan.safetensors"
    save_weights(out["nan"], nan_sd, {"architecture": "shiftwise_atto", "num_classes": 3, "overrides": SMALL})
    out["nan_pth"] = d / "nan.pth"
    save_weights(out["nan_pth"], nan_sd, {"architecture": "shiftwise_atto", "num_classes": 3, "overrides": SMALL})
    yield out
    assert not marker.exists(), "a payload ran"


@pytest.fixture(scope="module")
def server(files):
    """A local HTTP server serving the hostile files (loopback only; stopped after the module)."""
    directory = str(files["dir"])

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *a, **k):
            super().__init__(*a, directory=directory, **k)

        def log_message(self, *a):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.timeout = 5
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SWTASKS_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _one_line(capsys, code_info, *needles):
    assert code_info.value.code == 2, code_info.value.code
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if "error:" in line]
    assert len(lines) == 1, err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


# ---------------------------------------------------------------------------------------------- the reader


@pytest.mark.parametrize("kind, refused", [("evil_system", "posix.system"), ("evil_exec", "global exec"),
                                           ("evil_raw", "posix.system")])
def test_every_payload_is_refused_naming_file_global_and_opt_in(files, kind, refused):
    with pytest.raises(CheckpointError) as e:
        read_checkpoint(files[kind])
    text = str(e.value)
    assert files[kind].name in text and refused in text and "--trust-pickle" in text, text
    assert "truncated" not in text
    assert not files["marker"].exists()


def test_architecture_options_is_an_allow_list():
    good = {"dims": [8, 16], "kernel_sizes": (3, 5), "ls_init_value": None, "drop_path_rate": 0.1,
            "weight_decay": 0.05, "no_weight_decay_keys": ["gamma"], "num_classes": 3}
    assert architecture_options(good, source="f") == good
    for bad in ({"checkpoint_path": "x.pth"}, {"trust_pickle": True}, {"weights": "x"}, {"pretrained_file": "a"},
                {"init_cfg": {"type": "Pretrained"}}, {"dims": "https://host/x.pth"}, {"dims": object()},
                {"nested": {"load_from": "x"}}):
        with pytest.raises(FileOptionsError, match=f"f: its meta\\['overrides'\\] carry options .*{next(iter(bad))}"):
            architecture_options(bad, source="f")


# ---------------------------------------------------------------------------------------------- tools


def test_export_refuses_meta_that_points_at_another_file(files, tmp_path, capsys):
    main = tool("export").main

    for name in ("meta_points", "meta_points_pth"):
        with pytest.raises(SystemExit) as e:
            sys.exit(main(["shiftwise_atto", str(tmp_path / "m.onnx"), "--checkpoint", str(files[name])]))
        _one_line(capsys, e, files[name].name, "checkpoint_path", "trust_pickle", "may not set")
    # the same through a Lightning checkpoint's backbone_kwargs and weights
    for name in ("hp_kwargs", "hp_weights"):
        with pytest.raises(SystemExit) as e:
            sys.exit(main(["shiftwise_atto", str(tmp_path / "m.onnx"), "--checkpoint", str(files[name])]))
        _one_line(capsys, e, files[name].name, "may not set")
    assert not list(tmp_path.glob("m.*"))


def test_create_model_never_takes_loading_options_from_a_file(files):
    from swtasks.export import export_model

    with pytest.raises(FileOptionsError, match="checkpoint_path, trust_pickle"):
        export_model("shiftwise_atto", "/nonexistent/x.onnx", checkpoint=files["meta_points"])


def test_export_backbone_refuses_hyper_parameters_that_load(files, tmp_path, capsys):
    main = tool("export_backbone").main

    for name, needle in (("hp_weights", "weights"), ("hp_kwargs", "checkpoint_path"), ("hp_class", "os.system")):
        with pytest.raises(SystemExit) as e:
            sys.exit(main([str(files[name]), str(tmp_path / "bb.pth")]))
        _one_line(capsys, e, files[name].name, needle)
    assert not (tmp_path / "bb.pth").exists()


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    from swtasks.cls.synthetic import write_image_folder

    root = tmp_path_factory.mktemp("hostile_cls") / "data"
    return write_image_folder(str(root), num_classes=3, train_per_class=2, val_per_class=2, image_size=32)


def _cls(args, folder, root, monkeypatch):
    from swtasks.cls.cli import main

    monkeypatch.setattr(sys, "argv", ["train_cls.py"])
    main([*args, "--model.backbone", "shiftwise_atto", "--model.num_classes", "3", "--model.backbone_kwargs",
          TINY_JSON, "--data.root", folder, "--data.image_size", "32", "--data.batch_size", "2",
          "--data.num_workers", "0", "--trainer.accelerator", "cpu", "--trainer.devices", "1",
          "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
          "--trainer.default_root_dir", str(root), "--trainer.max_steps", "1"])


@pytest.mark.parametrize("sub", ["validate", "predict", "fit"])
def test_train_cls_refuses_hyper_parameters_that_load(files, folder, tmp_path, monkeypatch, capsys, sub):
    for name, needle in (("hp_weights", "weights"), ("hp_kwargs", "checkpoint_path"), ("hp_class", "os.system")):
        with pytest.raises(SystemExit) as e:
            _cls([sub, "--ckpt_path", str(files[name])], folder, tmp_path, monkeypatch)
        _one_line(capsys, e, files[name].name, needle)


def test_train_cls_ckpt_path_payload_names_the_opt_in_that_exists(files, folder, tmp_path, monkeypatch, capsys):
    with pytest.raises(SystemExit) as e:
        _cls(["validate", "--ckpt_path", str(files["evil_exec"])], folder, tmp_path, monkeypatch)
    _one_line(capsys, e, "evil_exec.ckpt", "global exec", "--trust_pickle true")
    with pytest.raises(SystemExit) as e:
        _cls(["fit", "--model.weights", str(files["evil_system"])], folder, tmp_path, monkeypatch)
    _one_line(capsys, e, "evil_system.pth", "posix.system", "--model.trust_pickle true")


def test_train_cls_refuses_non_finite_weights(files, folder, tmp_path, monkeypatch, capsys):
    with pytest.raises(SystemExit) as e:
        _cls(["fit", "--model.weights", str(files["nan"])], folder, tmp_path, monkeypatch)
    _one_line(capsys, e, "nan.safetensors", "non-finite weights", files["nan_key"])


def test_urls_are_refused_without_the_opt_in_and_read_weights_only_with_it(
    files, folder, server, cache, tmp_path, monkeypatch, capsys
):
    url = f"{server}/evil_exec.ckpt"
    # Lightning's --ckpt_path (which would unpickle a URL fully by itself)
    with pytest.raises(SystemExit) as e:
        _cls(["validate", "--ckpt_path", url], folder, tmp_path, monkeypatch)
    _one_line(capsys, e, url, "remote checkpoint", "--allow_download true")
    assert not cache.exists()  # nothing was downloaded
    # opted in: downloaded, then refused weights-only like a local file
    with pytest.raises(SystemExit) as e:
        _cls(["validate", "--ckpt_path", url, "--allow_download", "true"], folder, tmp_path, monkeypatch)
    _one_line(capsys, e, "evil_exec.ckpt", "global exec", "--trust_pickle true")
    assert list((cache / "downloads").glob("*evil_exec.ckpt"))
    # --model.weights
    with pytest.raises(SystemExit) as e:
        _cls(["fit", "--model.weights", f"{server}/evil_system.pth"], folder, tmp_path, monkeypatch)
    _one_line(capsys, e, "remote checkpoint", "--model.allow_download true")
    # tools/export.py
    export_main = tool("export").main

    with pytest.raises(SystemExit) as e:
        sys.exit(export_main(["shiftwise_atto", str(tmp_path / "u.onnx"), "--checkpoint", url]))
    _one_line(capsys, e, url, "remote checkpoint", "--allow-download")
    # the library
    with pytest.raises(CheckpointError, match="remote checkpoint.*allow_download=True"):
        swtasks.create_model("shiftwise_atto", num_classes=3, **SMALL, checkpoint_path=f"{server}/nan.pth")
    with pytest.raises(NonFiniteWeightsError):
        from swtasks.checkpoint import load_into

        load_into(_atto(), f"{server}/nan.pth", allow_download=True)
    assert not files["marker"].exists()


def test_non_finite_weights_are_named_by_export_and_reparameterize(files, tmp_path, capsys):
    export_main, rep_main = tool("export").main, tool("reparameterize").main

    with pytest.raises(SystemExit) as e:
        sys.exit(export_main(["shiftwise_atto", str(tmp_path / "n.onnx"), "--checkpoint", str(files["nan"])]))
    _one_line(capsys, e, "nan.safetensors", "non-finite weights", "NaN", "inf")
    with pytest.raises(SystemExit) as e:
        sys.exit(rep_main([str(files["nan_pth"]), str(tmp_path / "d.pth"), "--model", "shiftwise_atto",
                           "--set", f"dims={SMALL['dims']}", "--set", f"depths={SMALL['depths']}",
                           "--set", f"kernel_sizes={SMALL['kernel_sizes']}", "--num-classes", "3"]))
    _one_line(capsys, e, "nan.pth", "non-finite weights")
    assert not (tmp_path / "d.pth").exists()


def test_export_check_fails_on_non_finite_outputs(tmp_path):
    """The check compares outputs: a NaN difference is no pass (max(0.0, nan) is 0.0 in Python)."""
    from swtasks.export import ExportError, export_module

    net = _atto().eval()
    with torch.no_grad():
        next(p for n, p in net.named_parameters() if n.startswith("head")).fill_(float("nan"))
    with pytest.raises(ExportError, match="NaN or inf"):
        export_module(net, tmp_path / "n.pt2", image_size=64)
    assert not (tmp_path / "n.pt2").exists()


# ---------------------------------------------------------------------------------------------- mm tools


@pytest.mark.mm
def test_mm_tools_refuse_urls_payloads_and_nan_in_one_line(files, server, cache, tmp_path, capsys):
    pytest.importorskip("mmdet")
    from swtasks.mm.cli import main as mm_main

    config = str(REPO / "configs/det/mask-rcnn_shiftwise-atto_fpn_2iter_tiny-coco.py")
    url = f"{server}/evil_system.pth"
    # tools/test_det.py CONFIG URL, train_det.py --cfg-options load_from=URL, --resume URL
    for mode, argv in (("test", [config, url]), ("train", [config, "--cfg-options", f"load_from={url}"]),
                       ("train", [config, "--resume", url])):
        with pytest.raises(SystemExit) as e:
            mm_main("det", mode, [*argv, "--work-dir", str(tmp_path / "w")])
        _one_line(capsys, e, url, "remote checkpoint", "--allow-download")
    # a local code-running checkpoint: named, with the opt-in
    from swtasks.mm.testing import make_tiny_coco

    root = make_tiny_coco(str(tmp_path / "coco"))
    with pytest.raises(SystemExit) as e:
        mm_main("det", "test", [config, str(files["evil_exec"]), "--data-root", root, "--work-dir", str(tmp_path / "w")])
    _one_line(capsys, e, "evil_exec.ckpt", "global exec", "--trust-pickle")
    # a checkpoint of another model: named before testing (mmengine would evaluate a partly random model)
    with pytest.raises(SystemExit) as e:
        mm_main("det", "test", [config, str(files["meta_points_pth"]), "--data-root", root,
                                "--work-dir", str(tmp_path / "w")])
    _one_line(capsys, e, "meta_points.pth", "does not fit", "missing keys")
    def with_init(checkpoint) -> str:
        path = tmp_path / f"init_{abs(hash(str(checkpoint)))}.py"
        path.write_text(f"_base_ = [{config!r}]\nmodel = dict(backbone=dict(init_cfg=dict(_delete_=True, "
                        f"type='Pretrained', checkpoint={str(checkpoint)!r})))\n")
        return str(path)

    # a backbone init_cfg with NaN weights stops before training, naming the file
    sd = swtasks.create_model("shiftwise_atto").state_dict()  # the smoke config's backbone
    sd["stages.0.0.gamma" if "stages.0.0.gamma" in sd else next(k for k in sd if k.endswith("weight"))].fill_(float("inf"))
    save_weights(tmp_path / "inf_atto.pth", sd)
    with pytest.raises(SystemExit) as e:
        mm_main("det", "train", [with_init(tmp_path / "inf_atto.pth"), "--data-root", root,
                                 "--work-dir", str(tmp_path / "w2")])
    _one_line(capsys, e, "inf_atto.pth", "non-finite weights")
    # the backbone's init_cfg URL (mmengine would have used load_state_dict_from_url)
    with pytest.raises(SystemExit) as e:
        mm_main("det", "train", [with_init(url), "--data-root", root, "--work-dir", str(tmp_path / "w3")])
    _one_line(capsys, e, url, "remote checkpoint")
    # a --cfg-options value that does not merge is one line too
    with pytest.raises(SystemExit) as e:
        mm_main("det", "train", [config, "--cfg-options", "model.backbone.init_cfg.type=Pretrained"])
    _one_line(capsys, e, "--cfg-options", "init_cfg")
    assert not cache.exists()
    assert not files["marker"].exists()


@pytest.mark.mm
def test_reparameterize_mm_is_one_line(files, tmp_path, capsys):
    pytest.importorskip("mmdet")
    from swtasks.mm.deploy import main as rep_main

    config = str(REPO / "configs/det/mask-rcnn_shiftwise-atto_fpn_2iter_tiny-coco.py")
    for ckpt, needle in ((files["evil_system"], "posix.system"), (files["meta_points_pth"], "does not fit"),
                         (files["dir"] / "absent.pth", "not found")):
        with pytest.raises(SystemExit) as e:
            rep_main([config, str(ckpt), str(tmp_path / "out.pth")])
        _one_line(capsys, e, Path(ckpt).name, needle)
    assert not (tmp_path / "out.pth").exists()
