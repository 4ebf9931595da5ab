"""Crash and resume of an mmengine detection run (tools/train_det.py), and its checkpoint files.

- A run killed with SIGKILL after a checkpoint and resumed with `--resume` ends with the same weights and
  optimiser state, bit for bit on CPU, as an uninterrupted run of the same length (the tiny Mask R-CNN
  config on the tiny COCO fixture, a checkpoint every iteration; 2 iterations per pass over the data, so
  the resumed run's skip of trained batches crosses a pass boundary).
- A truncated, empty or corrupt checkpoint given to `--resume`, `load_from` or the test tool, and a
  `last_checkpoint` that names a missing file, stop with one line naming the file.
- A save killed while it writes never leaves a truncated checkpoint (swtasks.mm.checkpoint_io).
"""

from __future__ import annotations

import os
import os.path as osp
import signal
import subprocess
import sys
import time

import pytest
import torch

import swtasks.mm  # noqa: F401  (registers the backbones; mmengine compatibility)

pytestmark = pytest.mark.mm

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
CONFIG = osp.join(ROOT, "configs/det/mask-rcnn_shiftwise-atto_fpn_2iter_tiny-coco.py")
ITERS = 6
OPTIONS = [
    "randomness.seed=0",
    "default_hooks.checkpoint.interval=1",
    f"train_cfg.max_iters={ITERS}",
    "train_cfg.val_begin=100",  # no validation inside training
    f"param_scheduler.0.end={ITERS}",
]


def train_args(work, data, *extra):
    return [CONFIG, "--work-dir", str(work), "--data-root", data, *extra, "--cfg-options", *OPTIONS]


def load(path):
    return torch.load(path, map_location="cpu", weights_only=False)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    from swtasks.mm.cli import main
    from swtasks.mm.testing import make_tiny_coco

    base = tmp_path_factory.mktemp("resume")
    data = make_tiny_coco(str(base / "coco"))  # 4 training images, batch 2: 2 iterations per pass
    runner = main("det", "train", train_args(base / "a", data))
    assert runner.iter == ITERS
    # bitwise equality needs the same thread count in every run (it orders the floating-point sums)
    return dict(base=base, data=data, final=base / "a" / f"iter_{ITERS}.pth", threads=torch.get_num_threads())


def test_killed_run_resumes_to_the_same_weights_bitwise(uninterrupted, tmp_path):
    from swtasks.mm.cli import main

    work = tmp_path / "b"
    threads = uninterrupted["threads"]
    assert torch.get_num_threads() == threads
    env = dict(
        os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""), OMP_NUM_THREADS=str(threads)
    )
    proc = subprocess.Popen(
        [sys.executable, osp.join(ROOT, "tools", "train_det.py"), *train_args(work, uninterrupted["data"])],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    marker = work / "last_checkpoint"
    deadline = time.monotonic() + 300
    while True:  # SIGKILL as soon as the checkpoint of iteration 3 (or a later one) is recorded
        if marker.exists() and marker.read_text().strip().endswith(
            ("iter_3.pth", "iter_4.pth", "iter_5.pth")
        ):
            proc.send_signal(signal.SIGKILL)
            break
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.monotonic() < deadline, "no checkpoint of iteration 3 after 300 s"
        time.sleep(0.01)
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    resumed_from = marker.read_text().strip()
    assert not osp.exists(work / f"iter_{ITERS}.pth"), "the run was not interrupted"

    runner = main("det", "train", train_args(work, uninterrupted["data"], "--resume"))
    assert runner.iter == ITERS
    first_iter = int(osp.basename(resumed_from)[len("iter_") : -len(".pth")])
    assert 3 <= first_iter < ITERS

    a, b = load(uninterrupted["final"]), load(work / f"iter_{ITERS}.pth")
    assert a["state_dict"].keys() == b["state_dict"].keys()
    differ = [k for k in a["state_dict"] if not torch.equal(a["state_dict"][k], b["state_dict"][k])]
    assert not differ, f"resumed from {resumed_from}: {len(differ)} tensors differ, e.g. {differ[:3]}"
    state_a, state_b = a["optimizer"]["state"], b["optimizer"]["state"]
    assert state_a.keys() == state_b.keys() and state_a
    for i in state_a:
        for key, value in state_a[i].items():
            assert torch.equal(value, state_b[i][key]), (i, key)
    assert a["message_hub"]["runtime_info"]["iter"] == b["message_hub"]["runtime_info"]["iter"]
    assert "swtasks_rng" in a and "swtasks_rng" in b  # swtasks.mm.exact_resume


def _corrupt_copies(src, tmp_path):
    data = src.read_bytes()
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(data[: len(data) * 2 // 3])
    flipped = bytearray(data)
    flipped[len(data) // 2] ^= 0xFF  # inside a tensor's bytes: torch.load itself would not notice
    corrupt = tmp_path / "flipped.pth"
    corrupt.write_bytes(bytes(flipped))
    empty = tmp_path / "empty.pth"
    empty.write_bytes(b"")
    return truncated, corrupt, empty


def test_damaged_checkpoints_are_named_at_load(uninterrupted, tmp_path):
    from swtasks.mm.cli import main

    truncated, corrupt, empty = _corrupt_copies(uninterrupted["final"], tmp_path)
    data = uninterrupted["data"]
    test_argv = [CONFIG, str(corrupt), "--work-dir", str(tmp_path / "w2"), "--data-root", data]
    cases = [
        (["train", train_args(tmp_path / "w1", data, "--resume", str(truncated))], truncated, "truncated"),
        (["test", test_argv], corrupt, "fails the CRC-32 check"),
        (["train", train_args(tmp_path / "w3", data) + [f"load_from={empty}"]], empty, "empty file"),
    ]
    for (mode, argv), path, what in cases:
        with pytest.raises(SystemExit) as info:
            main("det", mode, argv)
        assert info.value.code == 2
        message = str(info.value)
        assert message.startswith(f"tools/{mode}_det.py: error: {path}: "), message
        assert what in message and "\n" not in message, message

    # --resume without a path: a last_checkpoint that names a file that is not there
    work = tmp_path / "w4"
    work.mkdir()
    (work / "iter_2.pth").write_bytes(uninterrupted["final"].read_bytes())
    (work / "last_checkpoint").write_text(str(work / "iter_3.pth"))
    with pytest.raises(SystemExit, match=r"last_checkpoint names .*iter_3\.pth.*--resume .*iter_2\.pth"):
        main("det", "train", train_args(work, data, "--resume"))


def test_verify_checkpoint_file_accepts_complete_files_only(uninterrupted, tmp_path):
    from swtasks.checkpoint import CheckpointError, verify_checkpoint_file

    verify_checkpoint_file(uninterrupted["final"])
    legacy = tmp_path / "legacy.pth"
    torch.save({"w": torch.ones(3)}, legacy, _use_new_zipfile_serialization=False)
    verify_checkpoint_file(legacy)
    text = tmp_path / "notes.pth"
    text.write_text("not a checkpoint")
    for path, what in [
        (text, "not a PyTorch checkpoint"),
        (tmp_path / "missing.pth", "cannot read"),
        *zip(_corrupt_copies(uninterrupted["final"], tmp_path), ("truncated", "CRC-32", "empty file")),
    ]:
        with pytest.raises(CheckpointError, match=what) as info:
            verify_checkpoint_file(path)
        assert str(info.value).startswith(f"{path}: ")


KILLED_SAVE = """
import sys, torch
from swtasks.mm.checkpoint_io import install
install()
from mmengine.runner.checkpoint import save_checkpoint
print("saving", flush=True)
save_checkpoint({"step": 1, "w": torch.ones(40_000_000)}, sys.argv[1])  # 160 MB
print("saved", flush=True)
"""


def test_a_save_killed_while_writing_leaves_the_previous_checkpoint(tmp_path):
    """mmengine's own save opens the target with 'wb' and writes into it (a kill then leaves a truncated
    file); through checkpoint_io the target is replaced only once the new file is complete."""
    from swtasks.checkpoint import atomic_torch_save
    from swtasks.mm.checkpoint_io import verify_checkpoint_file

    target = tmp_path / "iter_1.pth"
    atomic_torch_save({"step": 0, "w": torch.zeros(3)}, target)
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen(
        [sys.executable, "-c", KILLED_SAVE, str(target)], env=env, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout.readline().strip() == "saving"
    before = os.stat(target)
    deadline = time.monotonic() + 60
    while True:  # kill as soon as the write has begun: a temporary file appears, or the target changes
        now = os.stat(target)
        if (now.st_size, now.st_mtime_ns) != (before.st_size, before.st_mtime_ns):
            break
        if any(n.startswith(".iter_1.pth.") for n in os.listdir(tmp_path)):
            break
        assert proc.poll() is None and time.monotonic() < deadline, "the save never started writing"
        time.sleep(0.001)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    verify_checkpoint_file(target)
    state = load(target)
    assert state["step"] in (0, 1)  # the old checkpoint, or (killed only after the rename) the new one
    if state["step"] == 0:
        assert torch.equal(state["w"], torch.zeros(3))
    leftovers = [n for n in os.listdir(tmp_path) if n.startswith(".iter_1.pth.")]
    # the next save of that checkpoint removes what the killed one left behind
    atomic_torch_save({"step": 2}, target)
    assert load(target)["step"] == 2
    assert not [n for n in os.listdir(tmp_path) if n in leftovers]
