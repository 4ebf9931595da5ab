"""KernelWarehouse (KW) dynamic convolution: `KWConv1d/2d/3d`, `KWLinear`, their attention head and the
`WarehouseManager` that builds the shared warehouses. Plain nn.Modules; imports torch only.

Design note
-----------
The maths (docs/models.md, "KernelWarehouse").
  A KW layer's static kernel W (out x in/groups x k...) is cut into m equal *cells* of shape
  cell_out x cell_in x cell_k (1x1 spatial cells by default), in the order
  (spatial position, output group, input group). A *warehouse* is one parameter E of n cells shared
  by a group of layers. Per sample the layer's attention head gives, for each of its m cells, a row
  z in R^(n+1); the contrasting-driven attention is

      alpha = (1 - tau) * z / (sum |z| + 1e-3) + tau * beta,

  beta being a fixed one-hot row, and alpha's last column (the "zero cell", a cell of zeros) is dropped.
  The sample's kernel is assembled from the m mixtures alpha_i @ E (m x n times n x cell) and the
  whole batch runs as one grouped convolution (groups x batch). At tau = 1 the layer is an ordinary
  static convolution whose kernel is the cells beta points at.

Warehouses: reservation, then allocation (as in the published implementation).
  `reserve(...)` records a layer's kernel shape under a warehouse name and returns a `KWConvNd` without
  weights; names are `_`-separated and every part that starts with one of `sharing_range` is replaced by
  that prefix, so "stage2_layer3_conv1" and "stage2_layer0_conv0" share "stage2_layer_conv" when
  sharing_range = ("layer", "conv"). Warehouse ids follow the order of first reservation. `store()` sizes
  each warehouse: cell_in = max(int(gcd(in/groups of its layers) * cell_inplane_ratio), 1), likewise
  cell_out, n = max(int(cell_num_ratio * total cells of its layers), 1). `allocate(network)` walks
  `network.modules()` in registration order and gives each KW layer its attention head, its range of
  "own" cells [start, end) and their initialisation (Kaiming normal, fan-out), in that walk order:
  cell_num_ratio r >= 1 (an integer) gives mixture i the own cell start + r*i; r = 1/k gives the
  mixtures i with i % k == (i // k) % k consecutive own cells and the rest the zero cell.

What differs from the published code, and why.
  - The attention head's BatchNorm1d raises on a single-sample training batch (per device). Here it is
    `AttentionBatchNorm1d`: identical parameters, buffers and behaviour, except that a training batch of
    one sample is normalised with the running statistics, which it leaves unchanged (what eval mode does).
    Converted weights are therefore exact: eval-mode outputs equal the published model's, and so do
    training-mode outputs for batches of two or more.
  - No module-global state: each layer keeps a reference to its manager (not a registered sub-module,
    so the warehouse appears once in the state dict, under the manager) and its temperature is a plain
    attribute of its attention head.
  - beta is a non-persistent buffer (the published keeps an unregistered tensor): it follows
    `.to(device)` and stays out of the state dict, whose keys equal the published ones.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = [
    "AttentionBatchNorm1d",
    "KWAttention",
    "KWConv1d",
    "KWConv2d",
    "KWConv3d",
    "KWConvNd",
    "KWLinear",
    "WarehouseManager",
]

_NORMS = ("batch", "layer")


def _ntuple(value, n: int, name: str) -> tuple[int, ...]:
    if isinstance(value, numbers.Integral):
        return (int(value),) * n
    value = tuple(int(v) for v in value)
    if len(value) == 1:
        return value * n
    if len(value) != n:
        raise ValueError(f"{name} must be an int or {n} ints, got {value!r}")
    return value


def is_per_warehouse(value) -> bool:
    """Whether a setting holds one value per warehouse (a sequence of several) rather than one for all."""
    return not isinstance(value, (str, bytes)) and isinstance(value, Sequence) and len(value) > 1


def _per_warehouse(value, n: int, name: str) -> list:
    """A setting given once for every warehouse, or one value per warehouse (published `parse`)."""
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        return [value] * n
    value = list(value)
    if len(value) == 1:
        return value * n
    if len(value) != n:
        raise ValueError(f"{name} has {len(value)} values but the network has {n} warehouses; give 1 or {n}")
    return value


def _attention_batch_norm(bn: AttentionBatchNorm1d, x: torch.Tensor) -> torch.Tensor:
    """AttentionBatchNorm1d's forward. A single call in a torch.fx graph (torch.fx.wrap below): whether a
    training batch has one sample is known only when the graph runs."""
    if bn.training and x.shape[0] == 1 and bn.track_running_stats and bn.running_mean is not None:
        return F.batch_norm(x, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps)
    return nn.BatchNorm1d.forward(bn, x)


torch.fx.wrap("_attention_batch_norm")


class AttentionBatchNorm1d(nn.BatchNorm1d):
    """BatchNorm1d that also works on a single-sample training batch: such a batch is normalised with the
    running statistics, which are left unchanged (as in eval mode); nn.BatchNorm1d raises there. Any
    other batch is plain BatchNorm1d. Same parameters and buffers, so published weights load as they are."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _attention_batch_norm(self, x)


def one_hot_assignment(num_mixtures: int, num_cells: int, start: int, cell_num_ratio: float) -> tuple[list[int], int]:
    """The fixed mapping beta of a layer: for each of its mixtures the warehouse cell it points at
    (``num_cells`` = the zero cell), and the end of the layer's own cell range (see the module docstring)."""
    cols = []
    if cell_num_ratio >= 1:
        step = int(cell_num_ratio)
        for i in range(num_mixtures):
            cols.append(start + step * i)
        return cols, start + step * num_mixtures
    k = int(round(1.0 / cell_num_ratio))
    for i in range(num_mixtures):
        if i % k == (i // k) % k:
            cols.append(start)
            start += 1
        else:
            cols.append(num_cells)
    return cols, start


class KWAttention(nn.Module):
    """The attention head of one KW layer: global average pool -> fc1 (C_in -> hidden) -> norm1 -> ReLU ->
    fc2 -> per-mixture rows z (n+1 each) -> contrasting-driven attention with temperature -> (B*m, n).

    hidden = max(int(C_in * reduction), 16); norm1 is AttentionBatchNorm1d (fc1 without bias) or LayerNorm
    (fc1 with bias). With ``nonlocal_basis_ratio < 1`` fc2 predicts, per mixture, the layer's own cells, a
    basis of ``max(int(nonlocal * ratio), 16)`` entries that fc3 maps onto the other layers' cells, and the
    zero cell; a learned ``basis_bias`` is added (the published ResNet-50 1/2x setting).
    ``temperature`` (tau) is a plain float attribute: 0 (the published default and the state of a trained
    model) unless a schedule sets it.
    """

    def __init__(
        self,
        in_planes: int,
        reduction: float,
        num_cells: int,
        num_mixtures: int,
        assignment: Sequence[int],
        start: int,
        num_local_cells: int,
        norm: str = "batch",
        nonlocal_basis_ratio: float = 1.0,
    ):
        super().__init__()
        if norm not in _NORMS:
            raise ValueError(f"norm must be one of {_NORMS}, got {norm!r}")
        hidden = max(int(in_planes * reduction), 16)
        self.num_cells = num_cells
        self.num_mixtures = num_mixtures
        self.planes_per_mixture = num_cells + 1
        self.start = start
        self.num_local_cells = num_local_cells
        self.num_nonlocal_cells = num_cells - num_local_cells
        self.temperature = 0.0
        self.fc1 = nn.Linear(in_planes, hidden, bias=norm != "batch")
        self.norm1 = AttentionBatchNorm1d(hidden) if norm == "batch" else nn.LayerNorm(hidden)
        self.act1 = nn.ReLU(inplace=True)
        self.use_basis = nonlocal_basis_ratio < 1.0
        if self.use_basis:
            self.num_basis = max(int(self.num_nonlocal_cells * nonlocal_basis_ratio), 16)
            self.fc2 = nn.Linear(hidden, (num_local_cells + self.num_basis + 1) * num_mixtures, bias=False)
            self.fc3 = nn.Linear(self.num_basis, self.num_nonlocal_cells, bias=False)
            self.basis_bias = nn.Parameter(torch.zeros(num_mixtures * self.planes_per_mixture))
        else:
            self.fc2 = nn.Linear(hidden, num_mixtures * self.planes_per_mixture, bias=True)
        beta = torch.zeros(num_mixtures, self.planes_per_mixture)
        beta[torch.arange(num_mixtures), torch.as_tensor(list(assignment), dtype=torch.long)] = 1.0
        self.register_buffer("beta", beta.reshape(-1), persistent=False)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def _rows(self, h: torch.Tensor) -> torch.Tensor:
        """fc2 output -> (B*m, n+1) rows in warehouse-cell order (own cells at [start, start + local))."""
        z = self.fc2(h)
        if not self.use_basis:
            return z.reshape(-1, self.planes_per_mixture)
        z = z.reshape(-1, self.num_local_cells + self.num_basis + 1)
        local, basis, zero = z[:, : self.num_local_cells], z[:, self.num_local_cells : -1], z[:, -1:]
        other = self.fc3(basis)
        z = torch.cat([other[:, : self.start], local, other[:, self.start :], zero], dim=1)
        z = z.reshape(-1, self.num_mixtures * self.planes_per_mixture) + self.basis_bias
        return z.reshape(-1, self.planes_per_mixture)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.reshape(x.shape[0], x.shape[1], -1).mean(dim=-1)
        h = self.act1(self.norm1(self.fc1(h)))
        z = self._rows(h)
        z = z / (z.abs().sum(dim=1, keepdim=True) + 1e-3)
        tau = float(self.temperature)
        if tau != 0.0:
            z = (1.0 - tau) * z.reshape(x.shape[0], -1) + tau * self.beta.to(z.dtype)
            z = z.reshape(-1, self.planes_per_mixture)
        return z[:, :-1]

    def extra_repr(self) -> str:
        return f"cells={self.num_cells}, mixtures={self.num_mixtures}, own=[{self.start}, " \
               f"{self.start + self.num_local_cells}), temperature={self.temperature}"


class KWConvNd(nn.Module):
    """A KW convolution (base class of KWConv1d/2d/3d). Built by ``WarehouseManager.reserve``; usable after
    ``WarehouseManager.allocate``. Parameters: ``bias`` (optional) and its attention head's; the kernel
    cells live in the manager's warehouse ``warehouse_id``."""

    dimension = 0

    def __init__(
        self,
        in_planes: int,
        out_planes: int,
        kernel_size,
        stride=1,
        padding=0,
        dilation=1,
        groups: int = 1,
        bias: bool = False,
        warehouse_id: int | None = None,
        warehouse_manager: WarehouseManager | None = None,
    ):
        super().__init__()
        d = self.dimension
        if in_planes % groups or out_planes % groups:
            raise ValueError(f"in_planes {in_planes} and out_planes {out_planes} must be divisible by groups {groups}")
        self.in_planes, self.out_planes, self.groups = int(in_planes), int(out_planes), int(groups)
        self.kernel_size = _ntuple(kernel_size, d, "kernel_size")
        self.stride = _ntuple(stride, d, "stride")
        self.padding = _ntuple(padding, d, "padding")
        self.dilation = _ntuple(dilation, d, "dilation")
        self.bias = nn.Parameter(torch.zeros(out_planes)) if bias else None
        self.warehouse_id = warehouse_id
        # not a registered sub-module: the warehouse belongs to the manager (one copy in the state dict)
        object.__setattr__(self, "_manager", warehouse_manager)
        self.attention: KWAttention | None = None
        self.cell_shape: tuple[int, ...] = ()

    @property
    def weight_shape(self) -> tuple[int, ...]:
        return (self.out_planes, self.in_planes // self.groups, *self.kernel_size)

    def mixture_grid(self, cell_shape: Sequence[int]) -> tuple[int, int, int]:
        """(spatial, output, input) groups of cells that tile this layer's kernel; ValueError if they do not."""
        co, ci, ck = cell_shape[0], cell_shape[1], tuple(cell_shape[2:])
        out, inp, k = self.out_planes, self.in_planes // self.groups, self.kernel_size
        if out % co or inp % ci or any(a % b for a, b in zip(k, ck)):
            raise ValueError(
                f"kernel cells of shape {tuple(cell_shape)} do not tile the kernel {self.weight_shape} of a KW "
                "layer (cell_inplane_ratio / cell_outplane_ratio must give cells that divide every layer of the "
                "warehouse)"
            )
        spatial = math.prod(a // b for a, b in zip(k, ck))
        return spatial, out // co, inp // ci

    def init_attention(
        self, cell_shape: Sequence[int], num_cells: int, start: int, reduction: float, cell_num_ratio: float,
        norm: str, nonlocal_basis_ratio: float,
    ) -> int:
        """Create the attention head for cells of ``cell_shape`` in a warehouse of ``num_cells`` cells, this
        layer's own cells starting at ``start``; returns the end of its own range."""
        self.cell_shape = tuple(int(c) for c in cell_shape)
        gs, go, gi = self.mixture_grid(self.cell_shape)
        m = gs * go * gi
        assignment, end = one_hot_assignment(m, num_cells, start, cell_num_ratio)
        if end > num_cells:
            raise ValueError(
                f"a KW layer with {m} kernel cells needs own warehouse cells [{start}, {end}) but its warehouse has "
                f"{num_cells}: cell_num_ratio {cell_num_ratio} does not divide the layers' cell counts evenly"
            )
        self.attention = KWAttention(
            self.in_planes, reduction, num_cells, m, assignment, start, int(cell_num_ratio * m), norm=norm,
            nonlocal_basis_ratio=nonlocal_basis_ratio,
        )
        return end

    @property
    def num_mixtures(self) -> int:
        return self.attention.num_mixtures if self.attention is not None else 0

    def static_kernel(self, alpha: torch.Tensor) -> torch.Tensor:
        """The kernels (B, out, in/groups, k...) assembled from attentions alpha (B*m, n)."""
        cells = self._manager.take_cell(self.warehouse_id)
        n = cells.shape[0]
        gs, go, gi = self.mixture_grid(self.cell_shape)
        co, ci, ck = self.cell_shape[0], self.cell_shape[1], self.cell_shape[2:]
        w = torch.mm(alpha, cells.reshape(n, -1).to(alpha.dtype))  # (B*m, cell)
        w = w.reshape(-1, gs, go, gi, co, ci, *ck)
        d = self.dimension
        # (B, spatial, go, gi, co, ci, ck...) -> (B, go, co, gi, ci, spatial, ck...): the spatial cells
        # (1x..x1 each when the kernel is cut spatially, one full kernel otherwise) become the kernel taps
        w = w.permute(0, 2, 4, 3, 5, 1, *range(6, 6 + d))
        return w.reshape(-1, self.out_planes, self.in_planes // self.groups, *self.kernel_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.attention is None or self._manager is None:
            raise RuntimeError(
                "this KW layer has no warehouse yet: call WarehouseManager.store() and .allocate(network) "
                "after building the network"
            )
        b = x.shape[0]
        alpha = self.attention(x)
        if self.dimension == 2 and torch.compiler.is_exporting():
            return self._forward_unfolded(x, self.static_kernel(alpha))
        weight = self.static_kernel(alpha).reshape(-1, self.in_planes // self.groups, *self.kernel_size)
        conv = (F.conv1d, F.conv2d, F.conv3d)[self.dimension - 1]
        # shapes as tuples (not *-unpacked), so torch.fx can trace them
        y = conv(
            x.reshape((1, -1) + x.shape[2:]), weight, None, self.stride, self.padding, self.dilation,
            self.groups * b,
        )
        y = y.reshape((b, self.out_planes) + y.shape[2:])
        if self.bias is not None:
            y = y + self.bias.reshape(1, -1, *([1] * self.dimension)).to(y.dtype)
        return y

    def _forward_unfolded(self, x: torch.Tensor, kernels: torch.Tensor) -> torch.Tensor:
        """The same per-sample convolution as im2col + a batched matrix product. Used while exporting
        (torch.export / ONNX): the grouped convolution of `forward` has a group count that grows with the
        batch, which ONNX's Conv cannot take when the batch is dynamic; this form keeps every shape but the
        batch static. kernels: (B, out, in/groups, kh, kw)."""
        b, g = x.shape[0], self.groups
        cols = F.unfold(x, self.kernel_size, dilation=self.dilation, padding=self.padding, stride=self.stride)
        cols = cols.reshape(b, g, -1, cols.shape[-1])  # (B, g, in/g * kh * kw, L)
        w = kernels.reshape(b, g, self.out_planes // g, -1)  # (B, g, out/g, in/g * kh * kw)
        y = torch.matmul(w, cols).reshape(b, self.out_planes, -1)
        h_out, w_out = (
            (size + 2 * p - d * (k - 1) - 1) // s + 1
            for size, p, d, k, s in zip(x.shape[2:], self.padding, self.dilation, self.kernel_size, self.stride)
        )
        y = y.reshape(b, self.out_planes, h_out, w_out)
        if self.bias is not None:
            y = y + self.bias.reshape(1, -1, 1, 1).to(y.dtype)
        return y

    def set_temperature(self, value: float) -> None:
        if self.attention is not None:
            self.attention.temperature = float(value)

    def extra_repr(self) -> str:
        return (
            f"{self.in_planes}, {self.out_planes}, kernel_size={self.kernel_size}, stride={self.stride}, "
            f"padding={self.padding}, groups={self.groups}, bias={self.bias is not None}, "
            f"warehouse={self.warehouse_id}, cell={self.cell_shape}"
        )


class KWConv1d(KWConvNd):
    dimension = 1


class KWConv2d(KWConvNd):
    dimension = 2


class KWConv3d(KWConvNd):
    dimension = 3


class KWLinear(nn.Module):
    """A KW linear layer: a KWConv1d with kernel 1 (``conv``) over the flattened leading dimensions, like the
    published KWLinear: (B, ..., C_in) -> (B, ..., C_out), the attention pooling over all but the batch."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, warehouse_id=None,
                 warehouse_manager=None):
        super().__init__()
        self.conv = KWConv1d(in_features, out_features, 1, bias=bias, warehouse_id=warehouse_id,
                             warehouse_manager=warehouse_manager)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        y = self.conv(x.reshape(shape[0], -1, shape[-1]).transpose(1, 2))
        return y.transpose(1, 2).reshape(shape[:-1] + (-1,))


_KW_TYPES = {"conv1d": KWConv1d, "conv2d": KWConv2d, "conv3d": KWConv3d, "linear": KWLinear}
_PLAIN_TYPES = {"conv1d": nn.Conv1d, "conv2d": nn.Conv2d, "conv3d": nn.Conv3d, "linear": nn.Linear}


class WarehouseManager(nn.Module):
    """Builds and holds the warehouses of one network (state-dict keys ``weights.{i}``).

    Args (a float, or one value per warehouse in the order of first reservation):
        reduction: attention hidden width / C_in (at least 16 units).
        cell_num_ratio: warehouse cells / cells its layers need (1/k or an integer: 0.25, 0.5, 1, 2, 4).
        cell_inplane_ratio, cell_outplane_ratio: cell width / the GCD of the layers' in / out widths.
        sharing_range: name prefixes that are merged (see the module docstring); ``"layer_conv"`` means
            ``("layer", "conv")``.
        nonlocal_basis_ratio: < 1 enables the attention's basis for other layers' cells.
        norm: the attention norm, ``"batch"`` (AttentionBatchNorm1d) or ``"layer"`` (LayerNorm).
        spatial_partition: cut kernels into 1x1 spatial cells (else each cell keeps the full kernel size).

    Use: layers from ``reserve(...)`` while building the network, then ``store()`` and ``allocate(network)``.
    """

    def __init__(
        self,
        reduction=0.0625,
        cell_num_ratio=1.0,
        cell_inplane_ratio=1.0,
        cell_outplane_ratio=1.0,
        sharing_range: Sequence[str] | str = (),
        nonlocal_basis_ratio=1.0,
        norm: str = "batch",
        spatial_partition=True,
    ):
        super().__init__()
        if norm not in _NORMS:
            raise ValueError(f"norm must be one of {_NORMS}, got {norm!r}")
        if isinstance(sharing_range, str):
            sharing_range = tuple(p for p in sharing_range.split("_") if p)
        self.sharing_range = tuple(sharing_range)
        self.settings = dict(
            reduction=reduction, cell_num_ratio=cell_num_ratio, cell_inplane_ratio=cell_inplane_ratio,
            cell_outplane_ratio=cell_outplane_ratio, nonlocal_basis_ratio=nonlocal_basis_ratio,
            spatial_partition=spatial_partition,
        )
        self.norm = norm
        self.warehouse_names: list[str] = []
        self._shapes: dict[str, list[tuple[int, ...]]] = {}
        self._dims: dict[str, int] = {}
        self.weights = nn.ParameterList()
        self.cell_shapes: list[tuple[int, ...]] = []
        self.per_warehouse: dict[str, list] = {}
        self.users: list[list[str]] = []
        self.stored = False
        self.allocated = False

    # ---------------------------------------------------------------------------------- reservation
    def fuse_warehouse_name(self, name: str) -> str:
        parts = []
        for part in name.split("_"):
            for prefix in self.sharing_range:
                if part.startswith(prefix):
                    part = prefix
            parts.append(part)
        return "_".join(parts)

    def reserve(self, in_planes: int, out_planes: int, kernel_size=1, stride=1, padding=0, dilation=1,
                groups: int = 1, bias: bool = True, warehouse_name: str = "default", enabled: bool = True,
                layer_type: str = "conv2d") -> nn.Module:
        """A KW layer drawing from warehouse ``warehouse_name`` (fused by sharing_range); with
        ``enabled=False`` the ordinary PyTorch layer instead. ``layer_type``: conv1d, conv2d, conv3d, linear."""
        if layer_type not in _KW_TYPES:
            raise ValueError(f"layer_type must be one of {sorted(_KW_TYPES)}, got {layer_type!r}")
        if not enabled:
            if layer_type == "linear":
                return nn.Linear(in_planes, out_planes, bias=bias)
            return _PLAIN_TYPES[layer_type](in_planes, out_planes, kernel_size, stride=stride, padding=padding,
                                            dilation=dilation, groups=groups, bias=bias)
        if self.stored:
            raise RuntimeError("WarehouseManager.reserve() after store(): reserve every layer first")
        name = self.fuse_warehouse_name(warehouse_name)
        cls = _KW_TYPES[layer_type]
        dim = 1 if layer_type == "linear" else cls.dimension
        if name not in self._shapes:
            self._shapes[name] = []
            self._dims[name] = dim
            self.warehouse_names.append(name)
        elif self._dims[name] != dim:
            raise ValueError(f"warehouse {name!r} mixes {self._dims[name]}-d and {dim}-d layers")
        wid = self.warehouse_names.index(name)
        k = (1,) if layer_type == "linear" else _ntuple(kernel_size, dim, "kernel_size")
        self._shapes[name].append((out_planes, in_planes // groups, *k))
        if layer_type == "linear":
            return KWLinear(in_planes, out_planes, bias=bias, warehouse_id=wid, warehouse_manager=self)
        return cls(in_planes, out_planes, kernel_size, stride=stride, padding=padding, dilation=dilation,
                   groups=groups, bias=bias, warehouse_id=wid, warehouse_manager=self)

    # ---------------------------------------------------------------------------------- storage
    def store(self) -> None:
        """Create the warehouses (cells by the GCD rule, n = cell_num_ratio x cells needed)."""
        if self.stored:
            raise RuntimeError("WarehouseManager.store() was already called")
        nw = len(self.warehouse_names)
        per = {k: _per_warehouse(v, nw, k) for k, v in self.settings.items()}
        for r in per["cell_num_ratio"]:
            ok = (r >= 1 and float(r).is_integer()) or (0 < r < 1 and abs(1 / r - round(1 / r)) < 1e-9)
            if not ok:
                raise ValueError(f"cell_num_ratio must be an integer >= 1 or 1/k, got {r!r}")
        self.per_warehouse = per
        for idx, name in enumerate(self.warehouse_names):
            shapes = self._shapes[name]
            out_gcd = math.gcd(*(s[0] for s in shapes))
            in_gcd = math.gcd(*(s[1] for s in shapes))
            if not per["spatial_partition"][idx] and len({s[2:] for s in shapes}) > 1:
                raise ValueError(f"warehouse {name!r}: without spatial partition all kernel sizes must be equal")
            cell_in = max(int(in_gcd * per["cell_inplane_ratio"][idx]), 1)
            cell_out = max(int(out_gcd * per["cell_outplane_ratio"][idx]), 1)
            cell_k = (1,) * self._dims[name] if per["spatial_partition"][idx] else shapes[0][2:]
            total = 0
            for s in shapes:
                if s[0] % cell_out or s[1] % cell_in:
                    raise ValueError(
                        f"warehouse {name!r}: cells {cell_out}x{cell_in} do not tile a kernel of shape {s}"
                    )
                total += (s[0] // cell_out) * (s[1] // cell_in) * math.prod(a // b for a, b in zip(s[2:], cell_k))
            n = max(int(total * per["cell_num_ratio"][idx]), 1)
            self.cell_shapes.append((cell_out, cell_in, *cell_k))
            self.weights.append(nn.Parameter(torch.randn(n, cell_out, cell_in, *cell_k)))
        self.users = [[] for _ in range(nw)]
        self.stored = True

    @torch.no_grad()
    def allocate(self, network: nn.Module) -> None:
        """Give every KW layer of ``network`` (in ``named_modules()`` order) its attention head and its own
        cells (Kaiming-normal initialised, fan-out); checks that the own ranges cover every warehouse."""
        if not self.stored:
            self.store()
        if self.allocated:
            raise RuntimeError("WarehouseManager.allocate() was already called")
        ends = [0] * len(self.weights)
        per = self.per_warehouse
        for name, layer in network.named_modules():
            if not isinstance(layer, KWConvNd) or layer._manager is not self:
                continue
            w = layer.warehouse_id
            start = ends[w]
            end = layer.init_attention(
                self.cell_shapes[w], self.weights[w].shape[0], start, per["reduction"][w], per["cell_num_ratio"][w],
                self.norm, per["nonlocal_basis_ratio"][w],
            )
            if end > start:
                own = self.weights[w][start:end]
                nn.init.kaiming_normal_(own.view(-1, *own.shape[2:]), mode="fan_out", nonlinearity="relu")
            ends[w] = end
            self.users[w].append(name)
        for w, end in enumerate(ends):
            if end != self.weights[w].shape[0]:
                raise ValueError(
                    f"warehouse {w} ({self.warehouse_names[w]!r}) has {self.weights[w].shape[0]} cells but its "
                    f"layers own {end}: cell_num_ratio {per['cell_num_ratio'][w]} does not divide its layers' "
                    "cell counts evenly"
                )
        self.allocated = True

    def remove_last_warehouse(self) -> None:
        """Remove the last warehouse, whose layers are gone (KW MobileNetV2 1/2x's classifier, which draws
        from a warehouse of its own, when reset_classifier replaces it); the others keep their ids."""
        if not self.weights:
            raise RuntimeError("WarehouseManager.remove_last_warehouse(): no warehouse to remove")
        name = self.warehouse_names.pop()
        self._shapes.pop(name)
        self._dims.pop(name)
        self.weights = nn.ParameterList(list(self.weights)[:-1]).train(self.training)
        self.cell_shapes = self.cell_shapes[:-1]
        self.per_warehouse = {k: v[:-1] for k, v in self.per_warehouse.items()}
        self.users = self.users[:-1]

    def warehouses_used_only_within(self, modules: Sequence[str]) -> list[int]:
        """Ids of the warehouses all of whose users are among the module names ``modules`` or below them (the
        warehouses a frozen part of the network holds alone)."""
        def inside(user: str) -> bool:
            return any(user == m or user.startswith(m + ".") for m in modules)

        return [w for w, users in enumerate(self.users) if users and all(inside(u) for u in users)]

    def take_cell(self, warehouse_id: int) -> torch.Tensor:
        return self.weights[warehouse_id]

    def num_cells(self) -> list[int]:
        """Cells per warehouse, in warehouse order."""
        return [int(w.shape[0]) for w in self.weights]

    def extra_repr(self) -> str:
        return f"warehouses={len(self.warehouse_names)}, cells={self.num_cells()}, norm={self.norm}"
