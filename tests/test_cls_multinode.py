"""Several nodes simulated on one machine (docs/classification.md, "Several nodes"; docs/reliability.md).

Each "node" is one tools/train_cls.py process (gloo on CPU) started with what a cluster gives a node, either
the generic variables (MASTER_ADDR, MASTER_PORT, NODE_RANK, WORLD_SIZE and --trainer.num_nodes 2) or SLURM's
(the shipped tools/slurm/train_cls.sbatch run with stand-ins for `srun`, which starts one task per "node" with
the variables a 2-node allocation sets, and for `scontrol`, which records the requeue). The oracle is one
process of the same global batch (cls_helpers.assert_matches_one_process, the two-process test's tolerance);
the runs write one set of checkpoints, survive the loss of a node (relaunch with --ckpt_path last) and a SLURM
requeue (the job resumes from hpc_ckpt_1.ckpt), and continue from the saved optimiser step.
"""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from cls_helpers import (
    REPO,
    SAME_GLOBAL_BATCH,
    TRAIN_CLS,
    assert_matches_one_process,
    fit_one_process,
    free_port,
    small,
    tool_env,
)

from swtasks.cls.synthetic import write_image_folder

SBATCH = str(REPO / "tools" / "slurm" / "train_cls.sbatch")
# 24 images, 2 "nodes" x batch 4 = global batch 8: 3 optimiser steps per epoch, 6 in all; last.ckpt every 2
# steps; every step logged (the CSV log shows where a relaunched run started)
NODE_ARGS = [
    *SAME_GLOBAL_BATCH, "--trainer.num_nodes", "2", "--trainer.devices", "1", "--checkpoint.save_last_every_n_steps",
    "2", "--trainer.logger", "true", "--trainer.log_every_n_steps", "1",
]  # fmt: skip
STEPS = 6


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("multinode") / "data"
    return write_image_folder(str(root), num_classes=3, train_per_class=8, val_per_class=2, image_size=32)


@pytest.fixture(scope="module")
def one_process(folder, tmp_path_factory):
    """The oracle: one process of the global batch 8."""
    return fit_one_process(folder, tmp_path_factory.mktemp("one"), 8)


def start_nodes(root: Path, folder, port: int, attempt: str, *extra: str) -> list[subprocess.Popen]:
    """Start the two "nodes" of a run (output in ROOT/<attempt>-node<r>.log)."""
    procs = []
    for node in (0, 1):
        env = tool_env(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), NODE_RANK=str(node), WORLD_SIZE="2",
                       OMP_NUM_THREADS="1")  # fmt: skip
        cmd = [sys.executable, TRAIN_CLS, "fit", *small(folder, root, *NODE_ARGS, *extra)]
        with open(root.parent / f"{root.name}-{attempt}-node{node}.log", "w") as log:
            procs.append(subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT))
    return procs


def wait_all(procs, timeout: float) -> list[int]:
    deadline = time.monotonic() + timeout
    codes = []
    for p in procs:
        try:
            codes.append(p.wait(timeout=max(1.0, deadline - time.monotonic())))
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise AssertionError(f"a node still runs after {timeout} s (hang)") from None
    return codes


def first_logged_step(root: Path, version: int) -> int:
    with open(root / "csv" / f"version_{version}" / "metrics.csv") as f:
        return min(int(r["step"]) for r in csv.DictReader(f) if r.get("train_loss_step"))


def read(path: Path) -> dict:
    return torch.load(path, weights_only=True)


def test_two_nodes_equal_one_process_one_checkpoint_set_and_a_lost_node_resumes(folder, tmp_path, one_process):
    root = tmp_path / "run"
    # rank 1 (node 1) dies (SIGKILL) at the start of optimiser step 5, after last.ckpt of step 4
    kill = '[{"class_path": "cls_stop_at.StopAt", "init_args": {"step": 4, "signal": "KILL", "rank": 1}}]'
    node0, node1 = start_nodes(root, folder, free_port(), "first", "--trainer.callbacks", kill)
    (code1,) = wait_all([node1], timeout=240)
    lost = time.monotonic()
    (code0,) = wait_all([node0], timeout=60)
    out0 = (tmp_path / "run-first-node0.log").read_text()
    assert code1 == -signal.SIGKILL, (tmp_path / "run-first-node1.log").read_text()[-3000:]
    # the survivor does not wait for the dead peer (DDP's collective timeout would be 30 minutes): gloo's TCP
    # connection to it is reset and the collective it is in raises at once; the process exits with an error
    assert code0 != 0 and time.monotonic() - lost < 60, out0[-3000:]
    assert "by peer" in out0, out0[-3000:]
    assert read(root / "checkpoints" / "last.ckpt")["global_step"] == 4
    # one set of checkpoints and one log, written by global rank 0 only
    names = sorted(p.name for p in (root / "checkpoints").iterdir())
    assert len(names) == 2 and names[1] == "last.ckpt" and names[0].startswith("best-"), names
    assert sorted(p.name for p in (root / "csv").iterdir()) == ["version_0"]

    # both nodes relaunched with --ckpt_path last: they continue at step 4 and finish like one process
    procs = start_nodes(root, folder, free_port(), "resumed", "--ckpt_path", "last")
    assert wait_all(procs, timeout=240) == [0, 0], (tmp_path / "run-resumed-node0.log").read_text()[-3000:]
    out0 = (tmp_path / "run-resumed-node0.log").read_text()
    assert f"fit finished: 2 epochs, {STEPS} optimiser steps" in out0
    assert "Restoring states from the checkpoint path at" in out0 and "last.ckpt" in out0
    assert first_logged_step(root, 1) >= 4  # it did not start over (steps 0-3 are not run again)
    names = sorted(p.name for p in (root / "checkpoints").iterdir())
    assert len(names) == 2 and names[1] == "last.ckpt", names
    assert_matches_one_process(one_process, read(root / "checkpoints" / "last.ckpt"))


# ------------------------------------------------------------------------------------------ SLURM
SRUN = """#!/bin/bash
# stand-in for srun on a 2-node allocation of one task per node: drop srun's options, start one task per node
# here with the variables SLURM gives each task, record their PIDs, wait for all (exit status: the last failure)
while [ $# -gt 0 ] && [ "${1#-}" != "$1" ]; do shift; done
pids=""
node=0
while [ $node -lt "$SLURM_NNODES" ]; do
    SLURM_NODEID=$node SLURM_PROCID=$node SLURM_LOCALID=0 SLURM_STEPID=0 SLURMD_NODENAME=node$node "$@" &
    pids="$pids $!"
    echo $! >> "$SRUN_PIDFILE"
    node=$((node + 1))
done
status=0
for p in $pids; do wait $p || status=$?; done
exit $status
"""
SCONTROL = """#!/bin/bash
# stand-in for scontrol: record the call; SLURM then ends the requeued job's tasks
echo "$*" >> "$SCONTROL_LOG"
[ "$1" = requeue ] && kill -KILL $(cat "$SRUN_PIDFILE")
exit 0
"""


def slurm_env(tmp_path: Path, folder) -> dict[str, str]:
    """What sbatch gives the batch script of a 2-node job with one task per node (plus the script's settings)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for name, text in (("srun", SRUN), ("scontrol", SCONTROL)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    (tmp_path / "config.yaml").write_text("seed_everything: 0\n")
    # Lightning's SLURMEnvironment takes the rendezvous port from the job id: 15000 + its last 4 digits
    port = free_port(15000, 25000)
    return tool_env(
        PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        PY=sys.executable,
        SRUN_PIDFILE=str(tmp_path / "tasks.pid"),
        SCONTROL_LOG=str(tmp_path / "scontrol.log"),
        SLURM_JOB_ID=f"7{port - 15000:04d}",
        SLURM_JOB_NAME="sw-multinode",  # not bash/interactive: batch mode
        SLURM_JOB_NUM_NODES="2",
        SLURM_NNODES="2",
        SLURM_NTASKS="2",
        SLURM_NTASKS_PER_NODE="1",
        SLURM_TASKS_PER_NODE="1(x2)",
        SLURM_NODELIST="localhost,127.0.0.1",  # two names of this machine; the first is the master address
        SLURM_JOB_NODELIST="localhost,127.0.0.1",
        SLURM_CPUS_PER_TASK="1",
        OMP_NUM_THREADS="1",
        CONFIG=str(tmp_path / "config.yaml"),
        DATA=str(folder),
        ROOT=str(tmp_path / "run"),
        BATCH="4",
        TOTAL_BATCH="8",
        WORKERS="0",
    )


def test_slurm_two_nodes_requeue_resumes_and_equals_one_process(folder, tmp_path, one_process):
    env = slurm_env(tmp_path, folder)
    root = tmp_path / "run"
    args = small(folder, root, *NODE_ARGS)
    first = subprocess.Popen(["bash", SBATCH, *args], cwd=REPO, env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)  # fmt: skip
    # SLURM's `--signal=SIGUSR1@90` reaches every task: sent once last.ckpt of step 2 exists
    deadline = time.monotonic() + 180
    while not (root / "checkpoints" / "last.ckpt").exists():
        assert first.poll() is None, first.communicate()[0][-3000:]
        assert time.monotonic() < deadline, "no step checkpoint after 180 s"
        time.sleep(0.05)
    tasks = [int(p) for p in Path(env["SRUN_PIDFILE"]).read_text().split()]
    assert len(tasks) == 2
    for pid in tasks:
        os.kill(pid, signal.SIGUSR1)
    out1 = first.communicate(timeout=180)[0]
    assert first.returncode != 0, out1[-3000:]  # the requeued job was ended by the scontrol stand-in
    assert "2 nodes x 1 GPUs x 4, accumulate 1 (total batch 8), resume from: nothing" in out1, out1[-3000:]
    assert (tmp_path / "scontrol.log").read_text().splitlines() == [f"requeue {env['SLURM_JOB_ID']}"]
    hpc = root / "hpc_ckpt_1.ckpt"
    assert hpc.is_file(), sorted(p.name for p in root.iterdir())
    step_at_signal = read(hpc)["global_step"]
    assert 2 <= step_at_signal < STEPS, step_at_signal

    # SLURM runs the batch script again after the requeue: it resumes from the signal's checkpoint
    os.remove(env["SRUN_PIDFILE"])
    second = subprocess.run(["bash", SBATCH, *args], cwd=REPO, env={**env, "SLURM_RESTART_COUNT": "1"},
                            capture_output=True, text=True, timeout=240)  # fmt: skip
    out2 = second.stdout + second.stderr
    assert second.returncode == 0, out2[-3000:]
    assert "restart 1" in out2 and f"resume from: {hpc}" in out2
    assert f"fit finished: 2 epochs, {STEPS} optimiser steps" in out2
    assert first_logged_step(root, 1) >= step_at_signal
    assert (tmp_path / "scontrol.log").read_text().count("requeue") == 1
    assert_matches_one_process(one_process, read(root / "checkpoints" / "last.ckpt"))
