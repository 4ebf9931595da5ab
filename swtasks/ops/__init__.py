"""Functional operators (torch and triton only; no lightning/mm imports here)."""

from .cross_conv import cross_conv, cross_conv_torch
from .shiftwise import (
    ShiftwiseTables,
    build_cross_kernels,
    cross_to_dense,
    ghost_split,
    reference_draws,
    rep_channel_count,
    shiftwise_conv,
    shiftwise_reference,
    shiftwise_tables,
    slot_offsets,
    slots_from_perm,
)

__all__ = [
    "ShiftwiseTables",
    "build_cross_kernels",
    "cross_conv",
    "cross_conv_torch",
    "cross_to_dense",
    "ghost_split",
    "reference_draws",
    "rep_channel_count",
    "shiftwise_conv",
    "shiftwise_reference",
    "shiftwise_tables",
    "slot_offsets",
    "slots_from_perm",
]
