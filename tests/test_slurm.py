"""tools/slurm/train_cls.sbatch end to end, on CPU, with stand-ins for SLURM's `srun` and `scontrol`.

The requeue path as SLURM drives it: the job runs the batch script; `srun` starts the training task
(here: one task, run in place); SIGUSR1 arrives before the time limit; Lightning writes hpc_ckpt_<n>.ckpt
and calls `scontrol requeue <jobid>` (here: recorded, and the job is killed as SLURM kills a requeued
job); SLURM starts the same batch script again, which must resume from that checkpoint and finish.
The training is the real tools/train_cls.py on the embedded `longrange` dataset with a tiny network.
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

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
SCRIPT = osp.join(ROOT, "tools", "slurm", "train_cls.sbatch")
JOB_ID = "4242"

SRUN = """#!/bin/bash
# stand-in for srun with one task: drop srun's own options, record the task's PID, become the task
while [ $# -gt 0 ] && [ "${1#-}" != "$1" ]; do shift; done
echo $$ > "$SRUN_PIDFILE"
exec "$@"
"""
SCONTROL = """#!/bin/bash
# stand-in for scontrol: record the call; a requeued job is then ended by SLURM (SIGTERM, SIGKILL)
echo "$*" >> "$SCONTROL_LOG"
[ "$1" = requeue ] && kill -KILL "$PPID"
exit 0
"""
# 4 epochs of 24 batches of 8, accumulation 2 (total batch 16): 12 optimiser steps per epoch
TRAIN_ARGS = [
    "--trainer.max_epochs", "4",
    "--trainer.enable_progress_bar", "false",
    "--trainer.log_every_n_steps", "1",
    "--data.synthetic_train_size", "192",
    "--data.synthetic_val_size", "32",
    "--data.image_size", "32",
    "--model.ema_decay", "null",
]  # fmt: skip
STEPS_PER_EPOCH, EPOCHS = 12, 4


def slurm_env(tmp_path, **extra) -> dict[str, str]:
    bin_dir = tmp_path / "bin"
    if not bin_dir.exists():
        bin_dir.mkdir()
        for name, text in (("srun", SRUN), ("scontrol", SCONTROL)):
            (bin_dir / name).write_text(text)
            (bin_dir / name).chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    env.update(
        PATH=f"{bin_dir}{os.pathsep}{env['PATH']}",
        PYTHONPATH=ROOT + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else ""),
        PY=sys.executable,
        OMP_NUM_THREADS="1",
        SRUN_PIDFILE=str(tmp_path / "task.pid"),
        SCONTROL_LOG=str(tmp_path / "scontrol.log"),
        # what SLURM sets for a batch job with one task (a job name other than bash/interactive: batch mode)
        SLURM_JOB_ID=JOB_ID,
        SLURM_JOB_NAME="sw-test",
        SLURM_JOB_NUM_NODES="1",
        SLURM_NNODES="1",
        SLURM_NTASKS="1",
        SLURM_PROCID="0",
        SLURM_LOCALID="0",
        SLURM_NODEID="0",
        SLURM_NODELIST="localhost",
        SLURM_CPUS_PER_TASK="1",
        CONFIG="configs/cls/demo.yaml",
        DATA=str(tmp_path),
        ROOT=str(tmp_path / "run"),
        NODES="1",
        GPUS="1",
        BATCH="8",
        TOTAL_BATCH="16",
        WORKERS="0",
    )
    env.update(extra)
    return env


def start(env, args=()) -> subprocess.Popen:
    return subprocess.Popen(
        ["bash", SCRIPT, *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def load(path):
    return torch.load(path, map_location="cpu", weights_only=False)


def test_signal_hpc_checkpoint_requeue_and_restart_resume(tmp_path):
    env = slurm_env(tmp_path)
    run = tmp_path / "run"
    first = start(env, TRAIN_ARGS)
    # the signal comes mid-run: after the first epoch's checkpoint, while epoch 2+ trains
    deadline = time.monotonic() + 120
    while not (run / "checkpoints" / "last.ckpt").exists() or not osp.exists(env["SRUN_PIDFILE"]):
        assert first.poll() is None, first.communicate()[0][-3000:]
        assert time.monotonic() < deadline, "no end-of-epoch checkpoint after 120 s"
        time.sleep(0.05)
    with open(env["SRUN_PIDFILE"]) as f:
        os.kill(int(f.read()), signal.SIGUSR1)  # what `#SBATCH --signal=SIGUSR1@90` sends the task
    out1 = first.communicate(timeout=120)[0]
    assert first.returncode != 0, "the requeued job should have been ended (killed) by SLURM's stand-in"
    assert "resume from: nothing" in out1

    assert (tmp_path / "scontrol.log").read_text().split("\n")[0] == f"requeue {JOB_ID}"
    hpc = run / "hpc_ckpt_1.ckpt"
    assert hpc.is_file(), sorted(p.name for p in run.iterdir())
    step_at_signal = load(hpc)["global_step"]
    assert STEPS_PER_EPOCH <= step_at_signal < EPOCHS * STEPS_PER_EPOCH, step_at_signal

    # SLURM starts the batch script again after the requeue
    os.remove(env["SRUN_PIDFILE"])
    second = start({**env, "SLURM_RESTART_COUNT": "1"}, TRAIN_ARGS)
    out2 = second.communicate(timeout=180)[0]
    assert second.returncode == 0, out2[-3000:]
    assert "restart 1" in out2 and f"resume from: {hpc}" in out2
    assert "Restoring states from the checkpoint path" in out2 and "hpc_ckpt_1.ckpt" in out2
    # every optimiser step happens once: the signal's checkpoint sits at a step boundary, so no batch of an
    # accumulation window is lost (Lightning's own handler saves mid-window: one step short here)
    assert f"fit finished: {EPOCHS} epochs, {EPOCHS * STEPS_PER_EPOCH} optimiser steps" in out2
    # the second attempt continued the step count (its first logged step is past the signal's), it did
    # not start over
    import csv

    with open(run / "csv" / "version_1" / "metrics.csv") as f:
        steps = [int(r["step"]) for r in csv.DictReader(f) if r.get("train_loss_step")]
    assert steps and min(steps) >= step_at_signal, (min(steps), step_at_signal)
    assert (tmp_path / "scontrol.log").read_text().count("requeue") == 1


@pytest.mark.parametrize(
    "setting, message",
    [
        (dict(NODES="3", GPUS="8", BATCH="64", TOTAL_BATCH="4096"), "not a multiple of NODES x GPUS x BATCH"),
        (dict(NODES="1", GPUS="8", BATCH="48", TOTAL_BATCH="4096"), "= 384"),
        (dict(NODES="16", GPUS="8", BATCH="64", TOTAL_BATCH="4096"), "= 8192"),  # accumulation would be 0
        (dict(GPUS="0"), "= 0"),
        (dict(NODES="two"), "NODES=two is not a non-negative integer"),
    ],
)
def test_refuses_a_total_batch_it_cannot_keep(tmp_path, setting, message):
    env = slurm_env(tmp_path, **setting)
    proc = subprocess.run(["bash", SCRIPT], cwd=ROOT, env=env, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert message in proc.stderr
    assert not osp.exists(env["SRUN_PIDFILE"]), "srun must not start"


def test_accumulation_keeps_the_total_batch_and_no_array_expansion(tmp_path):
    """NODES x GPUS x BATCH x ACCUM = TOTAL_BATCH for the cluster shapes of the docs; and no bash array
    in the script (an empty "${a[@]}" aborts under `set -u` on bash < 4.4, e.g. CentOS 7's 4.2)."""
    bin_dir = tmp_path / "echo-bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text('#!/bin/bash\nprintf "%s\\n" "$@" > "$SRUN_ARGS"\n')
    (bin_dir / "srun").chmod(0o755)
    for nodes, accum in (("1", "8"), ("2", "4"), ("4", "2"), ("8", "1")):
        env = slurm_env(tmp_path, NODES=nodes, GPUS="8", BATCH="64", TOTAL_BATCH="4096")
        env["PATH"] = f"{bin_dir}{os.pathsep}{env['PATH']}"
        env["SRUN_ARGS"] = str(tmp_path / "args.txt")
        proc = subprocess.run(
            ["bash", SCRIPT, "--trainer.max_epochs", "1"], cwd=ROOT, env=env, capture_output=True, text=True
        )
        assert proc.returncode == 0, proc.stderr
        args = (tmp_path / "args.txt").read_text().split("\n")
        assert args[args.index("--trainer.accumulate_grad_batches") + 1] == accum
        assert args[args.index("--trainer.num_nodes") + 1] == nodes
        assert "--ckpt_path" not in args  # nothing to resume from: no empty argument either
        assert args[-3:] == ["--trainer.max_epochs", "1", ""]  # the script's arguments come last
    with open(SCRIPT) as f:
        code = [line for line in f if not line.lstrip().startswith("#")]
    assert not [line for line in code if "[@]" in line or "[*]" in line]
