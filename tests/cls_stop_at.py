"""Test helper for the crash/resume tests: a callback that stops the process at a given optimiser step the
way a crash (SIGKILL) or a scheduler (SIGTERM) does. Loaded by tools/train_cls.py through its class path
(tests/ on PYTHONPATH), so the library carries no test hook."""

from __future__ import annotations

import os
import signal

from lightning.pytorch.callbacks import Callback


class StopAt(Callback):
    """Send ``signal`` (KILL, TERM or USR1) to this process: KILL at the start of the batch of optimiser step
    ``step`` (the step is lost, as in a crash), TERM (a scheduler's stop) or USR1 (SLURM's pre-emption
    signal) at the end of that step. With ``rank``, only the process of that global rank stops (a node lost in a
    multi-node run)."""

    def __init__(self, step: int, signal: str = "KILL", rank: int | None = None):
        self.step, self.signal, self.rank = int(step), signal, rank

    def _due(self, trainer) -> bool:
        return trainer.global_step == self.step and self.rank in (None, trainer.global_rank)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if self.signal == "KILL" and self._due(trainer):
            os.kill(os.getpid(), signal.SIGKILL)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if self.signal in ("TERM", "USR1") and self._due(trainer):
            os.kill(os.getpid(), getattr(signal, f"SIG{self.signal}"))
