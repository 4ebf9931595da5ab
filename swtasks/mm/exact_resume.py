"""``ExactResumeHook``: an mmengine run resumed with ``--resume`` continues as the uninterrupted run would.

mmengine restores the weights, the optimiser, the schedulers and the iteration counter, and re-creates the
data order (the iteration-based loop fetches and discards the batches already trained on, so the data
pipeline's numpy/python random draws are repeated exactly). It does not save the global torch RNG, which
the model consumes (proposal/RoI sampling, drop path): a resumed run therefore samples differently from
the step after the checkpoint on (measured on the tiny CPU Mask R-CNN: weights up to 1.1 apart after 3
more iterations). This hook

- saves the global torch CPU RNG state (and the CUDA ones, when CUDA is initialised) in every checkpoint,
  under ``checkpoint['swtasks_rng']``;
- on ``--resume`` restores them at ``before_train``, after mmengine's own re-seeding and before the loop
  skips the trained batches;
- gives the training DataLoader a private generator seeded from the run's seed, so that re-creating its
  iterator at an epoch boundary (which draws a worker base seed) no longer consumes the global RNG at a
  point that differs between a resumed and an uninterrupted run.

With it a resumed single-process run is bitwise identical to the uninterrupted one on CPU (tests/
test_mm_resume.py). Limits: the state saved is the saving process's (mmengine writes checkpoints on rank 0
only), so with several processes every rank resumes from rank 0's torch RNG state; GPU kernels that are not
deterministic (atomics in some CUDA ops) make any two GPU runs differ, resumed or not.

``tools/{train,test}_{det,seg}.py`` add the hook; other entry points add
``custom_hooks = [dict(type='ExactResumeHook')]`` with ``custom_imports`` naming this module.
"""

from __future__ import annotations

import torch
from mmengine.hooks import Hook
from mmengine.registry import HOOKS

__all__ = ["ExactResumeHook"]

KEY = "swtasks_rng"


@HOOKS.register_module()
class ExactResumeHook(Hook):
    priority = "VERY_HIGH"  # restore before any other hook's before_train draws random numbers

    def __init__(self) -> None:
        self._pending: dict | None = None

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        # load_from (fine-tuning) also loads checkpoints: only a resumed run continues a random stream
        if getattr(runner, "_resume", False) and isinstance(checkpoint.get(KEY), dict):
            self._pending = checkpoint[KEY]

    def before_train(self, runner) -> None:
        loader = getattr(runner.train_loop, "dataloader", None)
        if isinstance(loader, torch.utils.data.DataLoader) and loader.generator is None:
            generator = torch.Generator()
            generator.manual_seed(int(runner.seed) if runner.seed is not None else 0)
            loader.generator = generator
        if self._pending is not None:
            torch.set_rng_state(self._pending["torch"])
            cuda = self._pending.get("cuda")
            if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
                torch.cuda.set_rng_state_all(cuda)
            self._pending = None

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        state = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda"] = torch.cuda.get_rng_state_all()
        checkpoint[KEY] = state
