"""BatchNorm over the whole distributed batch, on GPUs and on CPU.

On GPUs this is ``torch.nn.SyncBatchNorm``. PyTorch's SyncBatchNorm refuses CPU tensors, so a CPU run with
several processes (gloo) would normalise each process's share of the batch on its own: a 2-process run
with 32 images each would not train like one process with 64. ``AllReduceBatchNorm`` computes the batch
statistics with two all-reduces (the sums, then the squared deviations from the global mean: the same
two-pass variance as single-process BatchNorm) through ``torch.distributed.nn.functional.all_reduce``, whose
backward all-reduces the gradients, so forward and backward equal those of one process holding the whole
batch up to floating-point summation order. Only the conversion helper decides which class to use; nothing
global is switched.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

__all__ = ["AllReduceBatchNorm", "convert_sync_batchnorm"]


class AllReduceBatchNorm(nn.modules.batchnorm._BatchNorm):
    """``BatchNorm{1,2,3}d`` whose training statistics are over all processes of the default group."""

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"expected at least a 2-D input (N, C, ...), got shape {tuple(x.shape)}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input_dim(x)
        if not (self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        from torch.distributed.nn.functional import all_reduce

        dims = [0, *range(2, x.dim())]
        shape = [1, -1] + [1] * (x.dim() - 2)
        xd = x.double()  # statistics accumulated in float64, as CPU BatchNorm does
        count = torch.tensor([x.numel() // x.shape[1]], dtype=xd.dtype, device=x.device)
        s = all_reduce(torch.cat([xd.sum(dims), count]))
        n = s[-1]
        mean = s[:-1] / n
        var = all_reduce((xd - mean.view(shape)).pow(2).sum(dims)) / n
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                unbiased = var * (n / (n - 1).clamp(min=1))
                self.running_mean.lerp_(mean.to(self.running_mean.dtype), m)
                self.running_var.lerp_(unbiased.to(self.running_var.dtype), m)
        invstd = torch.rsqrt(var + self.eps)
        y = (x - mean.to(x.dtype).view(shape)) * invstd.to(x.dtype).view(shape)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y


def convert_sync_batchnorm(module: nn.Module, device: torch.device) -> nn.Module:
    """Every BatchNorm of ``module`` synchronised over the process group: ``nn.SyncBatchNorm`` on CUDA (and
    other accelerators torch supports), :class:`AllReduceBatchNorm` on CPU. Parameters and buffers are
    kept (the same objects), so state-dict keys and optimiser references do not change."""
    if torch.device(device).type != "cpu":
        if any(isinstance(m, nn.SyncBatchNorm) for m in module.modules()):
            return module
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    return _convert_cpu(module)


def _convert_cpu(module: nn.Module) -> nn.Module:
    out = module
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(
        module, (AllReduceBatchNorm, nn.SyncBatchNorm)
    ):
        out = AllReduceBatchNorm(
            module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats
        )
        if module.affine:
            out.weight, out.bias = module.weight, module.bias
        if module.track_running_stats:
            out.running_mean, out.running_var = module.running_mean, module.running_var
            out.num_batches_tracked = module.num_batches_tracked
        out.train(module.training)
        if hasattr(module, "qconfig"):
            out.qconfig = module.qconfig
    for name, child in module.named_children():
        out.add_module(name, _convert_cpu(child))
    return out
