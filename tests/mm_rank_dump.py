"""Test hooks for tests/test_mm_distributed.py. RankStateDump: after training, every process saves the state dict of the model
it trained to <work_dir>/rank<r>_state.pth, so the test can compare what each rank holds. Loaded by the tools
through a config's ``custom_imports`` (tests/ on PYTHONPATH), so the library carries no test hook. ComputeDtypeProbe:
the dtype the backbone computes in during training (what --amp changes)."""

from __future__ import annotations

import os.path as osp

import torch
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper
from mmengine.registry import HOOKS


@HOOKS.register_module()
class RankStateDump(Hook):
    def after_train(self, runner) -> None:
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        torch.save(state, osp.join(runner.work_dir, f"rank{runner.rank}_state.pth"))


@HOOKS.register_module()
class ComputeDtypeProbe(Hook):
    """Records the dtype of the backbone's first convolution output in every training forward (``dtypes``)."""

    def __init__(self):
        self.dtypes: list[torch.dtype] = []

    def before_train(self, runner) -> None:
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        conv = next(m for m in model.backbone.modules() if isinstance(m, torch.nn.Conv2d))
        conv.register_forward_hook(lambda mod, args, out: self.dtypes.append(out.dtype) if mod.training else None)
