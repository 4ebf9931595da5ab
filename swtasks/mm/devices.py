"""What tools/train_{det,seg}.py do with and without a GPU: the distributed backend, the DDP wrapper, SyncBN and
mixed precision (docs/detection-segmentation.md, "Distributed training" and "Mixed precision").

mmengine 0.10 assumes CUDA in four places, each handled here and only here:

- ``env_cfg.dist_cfg.backend``: MMDetection's and MMSegmentation's default_runtime say ``nccl``, which needs
  GPUs. Without CUDA the backend is ``gloo`` (:func:`configure`), and the process group is initialised here
  (:func:`init_process_group`) because mmengine's ``init_dist`` calls ``torch.cuda.set_device`` first.
- The DDP wrapper: the Runner passes ``device_ids=[LOCAL_RANK]``, which DistributedDataParallel refuses for CPU
  modules; :class:`CPUDistributedDataParallel` drops them.
- SyncBN: ``torch.nn.SyncBatchNorm`` refuses CPU tensors in a distributed forward. The CPU wrapper turns every
  SyncBatchNorm (a config's ``norm_cfg=dict(type='SyncBN')``, or ``sync_bn='torch'``) into the all-reduce
  BatchNorm of classification (``swtasks.layers.syncbn.AllReduceBatchNorm``: statistics over all processes,
  the same parameters and buffers). Plain BatchNorm stays per process, as on GPUs.
- ``AmpOptimWrapper`` asserts CUDA. Without it ``--amp`` means bfloat16 autocast on the CPU for the dense
  parts of the model (:class:`CPUAutocastOptimWrapper`): bfloat16 has float32's exponent range, so no loss
  scaling.
  :class:`AmpReportHook` logs the loss scale (float16 on GPUs) and counts non-finite losses and skipped steps.

Imports mmengine, and swtasks.layers.syncbn (torch only) for the CPU all-reduce BatchNorm.
"""

from __future__ import annotations

import datetime
import math
import os
from contextlib import contextmanager

import torch
from mmengine.hooks import Hook
from mmengine.model import MMDistributedDataParallel
from mmengine.optim import OptimWrapper
from mmengine.registry import HOOKS, MODEL_WRAPPERS, OPTIM_WRAPPERS

from swtasks.errors import UserError
from swtasks.layers.syncbn import convert_sync_batchnorm

__all__ = [
    "AmpReportHook",
    "CPUAutocastOptimWrapper",
    "CPUDistributedDataParallel",
    "configure",
    "init_process_group",
]


def configure(cfg, launcher: str, amp: bool, cuda: bool | None = None) -> list[str]:
    """Set ``cfg`` for this machine: the distributed backend and DDP wrapper (launcher other than 'none'),
    the mixed-precision optimiser wrapper (``amp``). Returns lines for the tool to print (what was chosen)."""
    cuda = torch.cuda.is_available() if cuda is None else cuda
    said = []
    if launcher != "none":
        dist_cfg = cfg.setdefault("env_cfg", {}).setdefault("dist_cfg", {})
        asked = dist_cfg.get("backend", "nccl")
        if not cuda:
            dist_cfg["backend"] = "gloo"
            wrapper = cfg.get("model_wrapper_cfg") or {}
            if wrapper.get("type", "MMDistributedDataParallel") in ("MMDistributedDataParallel", "CPUDistributedDataParallel"):
                cfg.model_wrapper_cfg = dict(
                    type="CPUDistributedDataParallel",
                    broadcast_buffers=wrapper.get("broadcast_buffers", False),
                    find_unused_parameters=cfg.get("find_unused_parameters", False),
                )
        backend = dist_cfg.get("backend", "nccl")
        why = f" (the config's {asked} needs GPUs)" if backend != asked else ""
        said.append(
            f"distributed: launcher {launcher}, backend {backend}{why}, rank {os.environ.get('RANK', '?')} of "
            f"{os.environ.get('WORLD_SIZE', '?')}, device {'cuda' if cuda else 'cpu'}"
        )
    if amp:
        ow = cfg.optim_wrapper
        if cuda:
            if ow.get("type") != "AmpOptimWrapper":
                ow.type = "AmpOptimWrapper"
                ow.setdefault("loss_scale", "dynamic")
            said.append(f"--amp: {ow.get('dtype') or 'float16'} autocast on the GPU, loss scale {ow.get('loss_scale', 'dynamic')}")
        else:
            ow.type = "CPUAutocastOptimWrapper"
            for key in ("loss_scale", "dtype", "use_fsdp"):  # AmpOptimWrapper's options of a config
                ow.pop(key, None)
            said.append("--amp: bfloat16 autocast on the CPU (no GPU; no loss scaling needed for bfloat16)")
        hooks = list(cfg.get("custom_hooks") or [])
        if not any(isinstance(h, dict) and h.get("type") == "AmpReportHook" for h in hooks):
            cfg.custom_hooks = [*hooks, dict(type="AmpReportHook")]
    return said


def init_process_group(cfg) -> bool:
    """Initialise the process group for a run without CUDA (gloo, from torchrun's RANK / WORLD_SIZE / MASTER_ADDR /
    MASTER_PORT), before the Runner, whose ``init_dist`` would call ``torch.cuda.set_device``. Returns whether it
    did; on GPUs the Runner does it. Other launchers are refused without CUDA (mmengine's slurm and mpi set-ups
    select a GPU)."""
    import torch.distributed as dist

    dist_cfg = (cfg.get("env_cfg") or {}).get("dist_cfg") or {}
    launcher = cfg.get("launcher", "none")
    if torch.cuda.is_available() or launcher == "none" or dist.is_initialized():
        return False
    if launcher != "pytorch":
        raise UserError(
            f"--launcher {launcher} without a GPU: on CPUs only --launcher pytorch is supported (start one process "
            "per CPU share with torchrun --nproc_per_node N [--nnodes M --node_rank R --master_addr HOST "
            "--master_port PORT])"
        )
    missing = [k for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
    if missing:
        raise UserError(
            f"--launcher pytorch: {', '.join(missing)} not set; start the tool with torchrun "
            "(torchrun --nproc_per_node N tools/train_det.py CONFIG --launcher pytorch)"
        )
    kwargs = {}
    if dist_cfg.get("timeout") is not None:
        kwargs["timeout"] = datetime.timedelta(seconds=dist_cfg["timeout"])
    dist.init_process_group(backend=dist_cfg.get("backend", "gloo"), **kwargs)
    return True


def _sync_bn_to_all_reduce(module: torch.nn.Module) -> int:
    """Replace every ``nn.SyncBatchNorm`` below ``module`` by the CPU all-reduce BatchNorm (same parameter and
    buffer objects); returns how many."""
    count = 0
    for name, child in module.named_children():
        if isinstance(child, torch.nn.SyncBatchNorm):
            from mmengine.model import revert_sync_batchnorm

            setattr(module, name, convert_sync_batchnorm(revert_sync_batchnorm(child), torch.device("cpu")))
            count += 1
        else:
            count += _sync_bn_to_all_reduce(child)
    return count


@MODEL_WRAPPERS.register_module()
class CPUDistributedDataParallel(MMDistributedDataParallel):
    """MMDistributedDataParallel for CPU processes (gloo): no ``device_ids``, SyncBN as all-reduce BatchNorm."""

    def __init__(self, module, device_ids=None, **kwargs):
        from mmengine.logging import print_log

        converted = _sync_bn_to_all_reduce(module)
        if converted:
            print_log(
                f"SyncBN on CPU: {converted} SyncBatchNorm layer(s) run as all-reduce BatchNorm (statistics over "
                "all processes, like SyncBN on GPUs)",
                logger="current",
            )
        super().__init__(module=module, device_ids=None, **kwargs)


AUTOCAST_PARTS = ("backbone", "neck", "decode_head", "auxiliary_head")


def _float32(value):
    if isinstance(value, torch.Tensor):
        return value.float() if value.dtype == torch.bfloat16 else value
    if isinstance(value, (list, tuple)):
        return type(value)(_float32(v) for v in value)
    if isinstance(value, dict):
        return {k: _float32(v) for k, v in value.items()}
    return value


def _autocast_forward(module: torch.nn.Module) -> None:
    forward = module.forward

    def bf16_forward(*args, **kwargs):
        with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
            return _float32(forward(*args, **kwargs))

    module.forward = bf16_forward
    module._swtasks_bf16 = True


@OPTIM_WRAPPERS.register_module()
class CPUAutocastOptimWrapper(OptimWrapper):
    """``--amp`` without a GPU: the forward of the model's dense parts (``AUTOCAST_PARTS``: backbone, neck, a
    segmentor's decode and auxiliary heads) under ``torch.autocast('cpu', torch.bfloat16)``, their outputs back
    in float32; a detector's heads, with mmcv's NMS and RoIAlign (no bfloat16 CPU kernels), and every loss run in
    float32. Backward and the optimiser step as OptimWrapper's: float32 weights and gradients, no loss scale."""

    @contextmanager
    def optim_context(self, model):
        from mmengine.model import is_model_wrapper

        inner = model.module if is_model_wrapper(model) else model
        for name in AUTOCAST_PARTS:
            part = getattr(inner, name, None)
            if isinstance(part, torch.nn.Module) and not getattr(part, "_swtasks_bf16", False):
                _autocast_forward(part)
        with super().optim_context(model):
            yield


@HOOKS.register_module()
class AmpReportHook(Hook):
    """Mixed-precision bookkeeping of a run: ``loss_scale`` in the log (float16 with a GradScaler), the number of
    steps the scaler skipped (its scale fell: non-finite gradients) and of non-finite losses; a summary line at
    the end of training."""

    priority = "LOW"

    def __init__(self):
        self.skipped = self.nonfinite_losses = 0
        self._scale = None

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None) -> None:
        scaler = getattr(runner.optim_wrapper, "loss_scaler", None)
        if scaler is not None:
            scale = float(scaler.get_scale())
            if self._scale is not None and scale < self._scale:
                self.skipped += 1
            self._scale = scale
            runner.message_hub.update_scalar("train/loss_scale", scale)
        loss = (outputs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            self.nonfinite_losses += 1

    def after_train(self, runner) -> None:
        wrapper = runner.optim_wrapper
        dtype = getattr(wrapper, "cast_dtype", None) or (
            torch.bfloat16 if isinstance(wrapper, CPUAutocastOptimWrapper) else torch.float16
        )
        scale = f"loss scale {self._scale:g}" if self._scale is not None else "no loss scaling"
        runner.logger.info(
            f"amp: {str(dtype).replace('torch.', '')} autocast, {scale}, steps skipped for non-finite gradients: "
            f"{self.skipped}, non-finite losses: {self.nonfinite_losses}"
        )
