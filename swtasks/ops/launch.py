"""One Triton kernel launch, described without tensors: what the launcher runs and the kernel report compiles.

A `Launch` names the @triton.jit function, its pointer argument types, its runtime integers, its
compile-time constants, the warps/stages, the grid and what a static cost model needs (the loops the
compiled kernel should contain with their trip counts, and the compulsory DRAM traffic). The launch
wrappers in `triton_cross.py` build a `Launch` and run it; `benchmarks/kernel_report.py` builds
the same `Launch` for the stage shapes and compiles it for sm_80 / sm_90 on a machine without a GPU,
so the report measures exactly what runs. Imports only the standard library.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["Launch", "LoopModel"]


@dataclass(frozen=True)
class LoopModel:
    """A loop the compiled kernel should contain: its nesting depth (1 = outermost), its trip count
    averaged over the programs (programs that skip the loop count as 0 trips) and whether the
    compiler may remove it (a loop of one trip is often unrolled away)."""

    depth: int
    trips: float
    may_vanish: bool = False


@dataclass(frozen=True)
class Launch:
    kernel: str  # short name, e.g. "tc_fwd"
    fn: object  # the @triton.jit function (not an Autotuner)
    pass_name: str  # forward | forward_sum | grad_input | grad_weight
    config: str  # label of the tile configuration
    pointers: dict  # pointer argument -> element type ("fp32", "bf16", "fp16", "fp64"), in argument order
    ints: dict  # runtime integer argument -> value
    constexprs: dict  # compile-time constants (tl.constexpr arguments)
    num_warps: int
    num_stages: int
    grid: int  # programs (1-D grid)
    loops: tuple[LoopModel, ...] = ()
    straight_fraction: float = 1.0  # share of the code outside loops that one program runs (branches)
    dram_bytes: float = 0.0  # compulsory DRAM traffic of the launch
    notes: dict = field(default_factory=dict)

    def key(self) -> tuple:
        """Everything that selects the compiled binary (for caches)."""
        return (
            self.kernel,
            tuple(self.pointers.items()),
            tuple(sorted((k, str(v)) for k, v in self.constexprs.items())),
            self.num_warps,
            self.num_stages,
        )
