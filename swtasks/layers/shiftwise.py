"""ShiftWiseConv2d: the shift-wise large-kernel operator as an nn.Module.

Design note
-----------
What is stored.
  Buffers (in the state dict, so a model never depends on regenerating them): `rep_idx` / `ghost_idx`
  (sorted channel lists) and the index tables `slot_h`, `slot_v` (n_rep, R*nk) and `ident` (n_rep, R).
  By default they are generated exactly like the reference implementation (torch seed 123 for the
  slot permutations and centre picks, numpy legacy seed 123 for the ghost split; see
  `swtasks.ops.shiftwise`), but from private generators: constructing a module never reseeds or
  advances the caller's global torch/numpy RNG beyond the ordinary weight initialisation.
  Parameters: `weight` (n_path, R*nk, k, k), path p being the reference's `LoRAs.{p}.weight` reshaped;
  three BatchNorm2d(R) `bn_h`, `bn_v`, `bn_s` (reference `bn_lora1`, `bn_lora2`, `bn_small`).
  Optional buffer `kernel_mask` (n_path, R*nk) for sparse training (`set_kernel_mask`); it is saved
  with the weights when set, and a state dict that carries one loads into a module that has none.

Why the channel order is preserved.
  The reference returns cat([rep channels, ghost channels]), a permutation of its input, while the
  surrounding block adds its residual in the original order. Here ghost channels pass through in
  place and rep channels are written back to their own positions (`index_copy`), so the module is a
  drop-in "same channels in, same channels out" layer. A checkpoint converter absorbs the reference's
  permutation by permuting the weights of the channel-wise layers that consume the output.

How the compute works.
  The N_path small kernels are summed (after the mask), scattered by the tables into one horizontal
  k x L strip, one vertical L x k strip and one centred k x k tile per rep channel
  (`build_cross_kernels`, differentiable), and `swtasks.ops.cross_conv` runs the three branches
  (PyTorch on CPU, Triton on CUDA). The nk-times intermediate of the reference is never built.

How deploy folding works (`reparameterize`, eval semantics).
  Each BN is y -> s*y + t with s = gamma / sqrt(running_var + eps), t = beta - s*running_mean, so
      z = s_h*conv(x, w_h) + s_v*conv(x, w_v) + s_s*conv(x, w_s) + x + (t_h + t_v + t_s).
  The centre tile (scaled by s_s) and the identity (+1 at the centre tap) sit inside the horizontal
  strip's footprint, so they are added there: weight_h = s_h*w_h (+ s_s*w_s + delta at the centre),
  weight_v = s_v*w_v, bias = t_h + t_v + t_s. The deploy forward is then one fused cross convolution
  (`cross_conv(..., w_s=None, reduce=True)`) plus a bias. Folding is done in float64.
  Deploy state-dict keys: weight_h, weight_v, bias, rep_idx, ghost_idx.
"""

from __future__ import annotations

import math
import numbers

import torch
import torch.nn as nn

from ..ops.cross_conv import cross_conv
from ..ops.cross_torch import autocast_input
from ..ops.options import DOT_PRECISIONS, VARIANTS
from ..ops.shiftwise import (
    build_cross_kernels,
    cross_to_dense,
    ghost_split,
    rep_channel_count,
    shiftwise_tables,
)
from .common import bn_scale_shift, is_traced

__all__ = ["ShiftWiseConv2d"]

# torch.fx symbolic tracing records these two as single calls (their work depends on concrete shapes and
# devices: the kernel tables' checks, the strip planning, the backend dispatch) and runs them as they are
# when the traced graph runs; the rest of the module is traced as usual.
torch.fx.wrap("build_cross_kernels")
torch.fx.wrap("cross_conv")


def _accumulation_dtype(x, x_op):
    """The dtype the layer sums its branches, identity and bias in: x's for an fp32 / fp64 input that the
    operator reads as it is (no autocast) and under symbolic tracing; fp32 when the convolutions run in 16 bits
    (autocast, or a 16-bit input): one rounding of their sum instead of one per addition and per bias."""
    if isinstance(x, torch.fx.Proxy) or (x.dtype in (torch.float32, torch.float64) and x_op.dtype == x.dtype):
        return x.dtype
    return torch.promote_types(x.dtype, torch.float32)


def _check_int(name: str, value, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {value!r} ({type(value).__name__})")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


class ShiftWiseConv2d(nn.Module):
    """Shift-wise convolution emulating a `kernel_size` x `kernel_size` depthwise kernel.

    Args:
        channels: input = output channels C.
        kernel_size: the emulated big kernel K (odd, positive).
        small_kernel: k (odd, 1 <= k <= K).
        ghost_ratio: share of channels that bypass the operator, in [0, 1).
        n_path: parallel small-conv paths (summed; re-parameterisation branches).
        n_rep: number of independent slot permutations.
        deploy: build the folded inference form directly (to load a reparameterized state dict).
        backend: forwarded to `swtasks.ops.cross_conv` ('torch', 'triton' or None = automatic).
        variant: Triton kernels, 'auto' (None), 'tc' (tensor cores) or 'direct' (CUDA cores).
        dot_precision: fp32 tensor-core dots, 'ieee' (None: exact), 'tf32x3' or 'tf32'.
        deterministic: pin one tile configuration per shape (None: follow
            torch.are_deterministic_algorithms_enabled()); see swtasks/ops/options.py.
    """

    def __init__(
        self,
        channels: int,
        kernel_size: int,
        small_kernel: int = 3,
        ghost_ratio: float = 0.23,
        n_path: int = 2,
        n_rep: int = 4,
        deploy: bool = False,
        backend: str | None = None,
        variant: str | None = None,
        dot_precision: str | None = None,
        deterministic: bool | None = None,
    ):
        super().__init__()
        if variant is not None and variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS} or None, got {variant!r}")
        if dot_precision is not None and dot_precision not in DOT_PRECISIONS:
            raise ValueError(f"dot_precision must be one of {DOT_PRECISIONS} or None, got {dot_precision!r}")
        channels = _check_int("channels", channels)
        kernel_size = _check_int("kernel_size", kernel_size)
        if kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd, got {kernel_size}")
        small_kernel = _check_int("small_kernel", small_kernel)
        if small_kernel % 2 == 0:
            raise ValueError(f"small_kernel must be odd, got {small_kernel}")
        if small_kernel > kernel_size:
            raise ValueError(f"small_kernel must be <= kernel_size={kernel_size}, got {small_kernel}")
        if isinstance(ghost_ratio, bool) or not isinstance(ghost_ratio, numbers.Real):
            raise TypeError(f"ghost_ratio must be a float, got {ghost_ratio!r}")
        if not (0.0 <= float(ghost_ratio) < 1.0):
            raise ValueError(f"ghost_ratio must be in [0, 1), got {ghost_ratio}")
        n_path = _check_int("n_path", n_path)
        n_rep = _check_int("n_rep", n_rep)
        R = rep_channel_count(channels, ghost_ratio)
        if R < 2:
            raise ValueError(
                f"channels={channels} with ghost_ratio={ghost_ratio} leaves {R} rep channels; need at least 2"
            )

        self.channels = channels
        self.kernel_size = kernel_size
        self.small_kernel = small_kernel
        self.ghost_ratio = float(ghost_ratio)
        self.n_small = math.ceil(kernel_size / small_kernel)
        self.strip_len = small_kernel * self.n_small
        self.n_path = n_path
        self.n_rep = n_rep
        self.rep_channels = R
        self.ghost_channels = channels - R
        self.deploy = bool(deploy)
        self.backend = backend
        self.variant = variant
        self.dot_precision = dot_precision
        self.deterministic = deterministic

        if self.deploy:
            rep_idx, ghost_idx = ghost_split(channels, R)
            self.register_buffer("rep_idx", rep_idx)
            self.register_buffer("ghost_idx", ghost_idx)
            self._init_deploy_params()
            return

        tables = shiftwise_tables(channels, kernel_size, small_kernel, ghost_ratio, n_rep)
        self.register_buffer("rep_idx", tables.rep_idx)
        self.register_buffer("ghost_idx", tables.ghost_idx)
        self.register_buffer("slot_h", tables.slot_h)
        self.register_buffer("slot_v", tables.slot_v)
        self.register_buffer("ident", tables.ident)
        self.weight = nn.Parameter(torch.empty(n_path, R * self.n_small, small_kernel, small_kernel))
        self.bn_h = nn.BatchNorm2d(R)
        self.bn_v = nn.BatchNorm2d(R)
        self.bn_s = nn.BatchNorm2d(R)
        self.register_buffer("kernel_mask", None)
        self.reset_parameters()

    # ------------------------------------------------------------------------------------------
    def _init_deploy_params(self) -> None:
        """Deploy-form parameters, initialised to the identity map (to be overwritten by a load)."""
        R, k, L = self.rep_channels, self.small_kernel, self.strip_len
        w_h = torch.zeros(R, k, L)
        w_h[:, k // 2, self.kernel_size // 2] = 1.0
        self.weight_h = nn.Parameter(w_h)
        self.weight_v = nn.Parameter(torch.zeros(R, L, k))
        self.bias = nn.Parameter(torch.zeros(R))

    def reset_parameters(self) -> None:
        """Like nn.Conv2d for each path (kaiming_uniform, a=sqrt(5), fan_in = k*k); BNs reset."""
        if self.deploy:
            return
        with torch.no_grad():
            for p in range(self.n_path):
                nn.init.kaiming_uniform_(self.weight[p], a=math.sqrt(5))
        for bn in (self.bn_h, self.bn_v, self.bn_s):
            bn.reset_parameters()

    def extra_repr(self) -> str:
        return (
            f"channels={self.channels}, kernel_size={self.kernel_size}, small_kernel={self.small_kernel}, "
            f"rep_channels={self.rep_channels}, n_small={self.n_small}, n_path={self.n_path}, "
            f"n_rep={self.n_rep}, deploy={self.deploy}"
        )

    # ------------------------------------------------------------------------------------------
    # sparse-training hook
    def set_kernel_mask(self, mask: torch.Tensor | None) -> None:
        """Set (or clear with None) the per-small-kernel 0/1 mask, shape (n_path, R*nk) or (R*nk,)
        (the latter shared by all paths). Forward then uses weight * mask."""
        if self.deploy:
            raise RuntimeError("set_kernel_mask: the module is in deploy form (no small kernels to mask)")
        if mask is None:
            self.kernel_mask = None
            return
        if not isinstance(mask, torch.Tensor):
            raise TypeError(f"mask must be a tensor or None, got {type(mask).__name__}")
        RN = self.rep_channels * self.n_small
        if mask.dim() == 1 and mask.shape[0] == RN:
            mask = mask.unsqueeze(0).expand(self.n_path, RN)
        if tuple(mask.shape) != (self.n_path, RN):
            raise ValueError(
                f"mask must have shape ({self.n_path}, {RN}) or ({RN},), got {tuple(mask.shape)}"
            )
        self.kernel_mask = mask.detach().to(device=self.weight.device, dtype=self.weight.dtype).contiguous()

    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
    ):
        # A saved mask loads into a module that has none yet (the buffer is None until set).
        key = prefix + "kernel_mask"
        if not self.deploy and key in state_dict and self.kernel_mask is None:
            self.kernel_mask = torch.zeros_like(self.weight[..., 0, 0]).detach()
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )

    # ------------------------------------------------------------------------------------------
    def effective_weight(self) -> torch.Tensor:
        """sum_p weight_p * mask_p, shape (R*nk, k, k)."""
        w = self.weight
        if self.kernel_mask is not None:
            w = w * self.kernel_mask.to(w.dtype)[:, :, None, None]
        return w.sum(0)

    def cross_kernels(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(w_h (R,k,L), w_v (R,L,k), w_s (R,k,k)) built differentiably from the small kernels.
        In deploy form: (weight_h, weight_v, None), the folded kernels (BNs, centre and identity in)."""
        if self.deploy:
            return self.weight_h, self.weight_v, None
        return build_cross_kernels(
            self.effective_weight(), self.slot_h, self.slot_v, self.ident, self.n_small
        )

    def dense_kernel(self) -> torch.Tensor:
        """The equivalent dense depthwise kernel (R, 1, Kd, Kd), Kd = 2*(L-1-K//2)+1, of the operator
        WITHOUT the BNs and the identity: F.conv2d(x[:, rep_idx], kd, padding=Kd//2, groups=R) equals
        O_h + O_v + O_s. In deploy form it is the folded kernel (add `bias` to get the rep output)."""
        w_h, w_v, w_s = self.cross_kernels()
        return cross_to_dense(w_h, w_v, w_s, self.kernel_size)

    # ------------------------------------------------------------------------------------------
    def _check_input(self, x) -> None:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
        if x.dim() != 4:
            raise ValueError(f"x must be 4-D (B, C, H, W), got shape {tuple(x.shape)}")
        if not x.is_floating_point():
            raise TypeError(f"x must be a floating-point tensor, got dtype {x.dtype}")
        if x.shape[1] != self.channels:
            raise ValueError(
                f"x has {x.shape[1]} channels (shape {tuple(x.shape)}), expected {self.channels}"
            )

    def _op_switches(self) -> dict:
        return dict(backend=self.backend, variant=self.variant, dot_precision=self.dot_precision,
                    deterministic=self.deterministic)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not is_traced(x):
            self._check_input(x)
        full = self.ghost_channels == 0
        x_r = x if full else x.index_select(1, self.rep_idx)
        # mixed precision (docs/operator.md): the convolutions in autocast's 16-bit dtype, the sum of the
        # branches, the identity and the bias in fp32 (acc), the output in x's dtype
        x_op = autocast_input(x_r)
        acc = _accumulation_dtype(x, x_op)
        if self.deploy:
            z = cross_conv(
                x_op,
                self.weight_h,
                self.weight_v,
                None,
                big_kernel=self.kernel_size,
                reduce=True,
                **self._op_switches(),
            )
            z = z.to(acc) + self.bias.to(acc).view(1, -1, 1, 1)
        else:
            w_h, w_v, w_s = self.cross_kernels()
            o_h, o_v, o_s = cross_conv(x_op, w_h, w_v, w_s, big_kernel=self.kernel_size, **self._op_switches())
            z_h, z_v, z_s = self.bn_h(o_h), self.bn_v(o_v), self.bn_s(o_s)
            z = z_h.to(acc) + z_v.to(acc) + z_s.to(acc) + x_r.to(acc)
        z = z.to(x.dtype)
        if full:
            return z
        return x.index_copy(1, self.rep_idx, z)

    # ------------------------------------------------------------------------------------------
    @staticmethod
    def _bn_scale_shift(bn: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
        if bn.running_mean is None or bn.running_var is None:
            raise RuntimeError(f"reparameterize: {bn} has no running statistics to fold")
        return bn_scale_shift(bn)  # float64

    @torch.no_grad()
    def reparameterize(self) -> None:
        """Fold paths, mask, the three BNs (running stats), centre tile and identity into weight_h,
        weight_v and bias, in place (eval semantics). Idempotent."""
        if self.deploy:
            return
        r, lo = self.small_kernel // 2, self.kernel_size // 2
        dtype = self.weight.dtype
        w_h, w_v, w_s = (t.detach().double() for t in self.cross_kernels())
        s_h, t_h = self._bn_scale_shift(self.bn_h)
        s_v, t_v = self._bn_scale_shift(self.bn_v)
        s_s, t_s = self._bn_scale_shift(self.bn_s)
        wh = w_h * s_h[:, None, None]
        wh[:, :, lo - r : lo + r + 1] += w_s * s_s[:, None, None]
        wh[:, r, lo] += 1.0
        wv = w_v * s_v[:, None, None]
        bias = t_h + t_v + t_s

        for name in ("weight", "bn_h", "bn_v", "bn_s", "kernel_mask", "slot_h", "slot_v", "ident"):
            delattr(self, name)
        self.weight_h = nn.Parameter(wh.to(dtype))
        self.weight_v = nn.Parameter(wv.to(dtype))
        self.bias = nn.Parameter(bias.to(dtype))
        self.deploy = True

    # timm's reparameterize_model and some code bases call these names
    def switch_to_deploy(self) -> None:
        self.reparameterize()
