"""Convert the reference implementation's ShiftWiseNet ("v2") checkpoints into swtasks state dicts.

Reference layout (network spec, last section) -> ours, per block `stages.{s}.{b}.`:

    large_kernel.LoRAs.{p}.weight (R*nk, 1, k, k)   -> large_kernel.weight[p] (n_path, R*nk, k, k)
    large_kernel.LoRA.weight (merged file)          -> large_kernel.weight[0] (other paths 0: same sum)
    large_kernel.bn_lora1 / bn_lora2 / bn_small     -> large_kernel.bn_h / bn_v / bn_s
    (not in the file)                               -> large_kernel.rep_idx / ghost_idx / slot_h / slot_v /
                                                       ident: our model's buffers, checked against a
                                                       literal re-run of the reference's seeded draws
    everything else                                 -> the same name (channel permutation below)

Channel order. The reference operator returns cat([rep sorted, ghost sorted]) = x[:, P] with
P = cat(rep_idx, ghost_idx), while ours returns its channels in input order. Everything between the
operator and the first pointwise layer is per-channel and sees the permuted order in the reference:

    norm (BatchNorm)    weight, bias, running_mean, running_var      ours[P[i]] = ref[i]
    se.down             weight[:, P[i]] = ref weight[:, i]           (reads the pooled permuted tensor)
    se.up               weight[P[i]], bias[P[i]] = ref[i]            (its sigmoid scales the permuted tensor)
    pwconv1.1           weight[:, P[i]] = ref weight[:, i]           (consumes the permuted tensor)

pwconv1's output (4C hidden channels) has no channel identity tied to the operator, and pwconv2's output
channel c is added to the block input's channel c in both implementations (the reference adds its
residual in the original order), so nothing after pwconv1 is permuted. With ours = ref[Q],
Q = argsort(P) (the inverse permutation), the two networks compute the same function.
"""

from __future__ import annotations

import argparse
import math
import os
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from swtasks.io import atomic_torch_save
from swtasks.models import SHIFTWISE_ARCHS, ShiftWiseBlock, create_model
from swtasks.models.registry import CheckpointMismatchError, extract_state_dict

__all__ = [
    "SOURCE",
    "convert_checkpoint_file",
    "convert_shiftwise_official",
    "load_reference_checkpoint",
    "reference_tables",
]

SOURCE = "shiftwise-official"
REFERENCE_SEED = 123
_BN_NAMES = {"bn_h": "bn_lora1", "bn_v": "bn_lora2", "bn_s": "bn_small"}
_TABLE_NAMES = ("rep_idx", "ghost_idx", "slot_h", "slot_v", "ident")
# block tensors that read the operator's output in the reference's [rep..., ghost...] order: (name, dim)
_PERMUTED = (
    ("norm.weight", 0),
    ("norm.bias", 0),
    ("norm.running_mean", 0),
    ("norm.running_var", 0),
    ("se.down.weight", 1),
    ("se.up.weight", 0),
    ("se.up.bias", 0),
    ("pwconv1.1.weight", 1),
)


def reference_tables(
    channels: int, kernel_size: int, small_kernel: int, ghost_ratio: float, n_rep: int
) -> dict[str, torch.Tensor]:
    """The reference operator's fixed tables, drawn the way its constructor draws them: numpy's and
    torch's global generators seeded with 123 (their states are saved and restored around the draws).

    ghost = sorted(np.random.choice(C, C - R, replace=False)), rep = sorted complement;
    for g: perm_h[g] = cat_c(randperm(nk) + c*nk); then perm_v likewise; then
    ident[g] = randint(0, nk, [R]) + arange(R)*nk; slot[g, pc] = argsort(perm[g])[pc] mod nk.
    """
    R = int(channels * (1 - ghost_ratio)) // 2 * 2
    nk = math.ceil(kernel_size / small_kernel)
    np_state = np.random.get_state()
    try:
        np.random.seed(REFERENCE_SEED)
        ghost = sorted(np.random.choice(channels, channels - R, replace=False).tolist())
    finally:
        np.random.set_state(np_state)
    rep = sorted(set(range(channels)) - set(ghost))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(REFERENCE_SEED)
        perm_h = [torch.cat([torch.randperm(nk) + c * nk for c in range(R)]) for _ in range(n_rep)]
        perm_v = [torch.cat([torch.randperm(nk) + c * nk for c in range(R)]) for _ in range(n_rep)]
        ident = [torch.randint(0, nk, [R]) + torch.arange(R) * nk for _ in range(n_rep)]
    return {
        "rep_idx": torch.tensor(rep, dtype=torch.long),
        "ghost_idx": torch.tensor(ghost, dtype=torch.long),
        "slot_h": torch.stack([torch.argsort(p) % nk for p in perm_h]),
        "slot_v": torch.stack([torch.argsort(p) % nk for p in perm_v]),
        "ident": torch.stack(ident),
    }


def _guess_arch(src: Mapping[str, torch.Tensor]) -> str:
    """'tiny'-style names of the variants whose depths and widths match the reference state dict."""
    try:
        dims = (src["downsample_layers.0.3.weight"].shape[0],) + tuple(
            src[f"downsample_layers.{i}.0.weight"].shape[0] for i in (1, 2, 3)
        )
    except KeyError:
        return ""
    blocks = {tuple(k.split(".")[1:3]) for k in src if k.startswith("stages.")}
    depths = tuple(len({b for s, b in blocks if s == str(i)}) for i in range(4))
    match = [
        a
        for a, cfg in SHIFTWISE_ARCHS.items()
        if tuple(cfg["dims"]) == dims and tuple(cfg["depths"]) == depths
    ]
    found = f"depths {depths}, dims {dims}"
    return f"{found} (arch {', '.join(match)})" if match else found


def convert_shiftwise_official(
    state_dict: Mapping, arch: str = "tiny", **overrides: Any
) -> dict[str, torch.Tensor]:
    """Convert a reference checkpoint (a state dict, or a checkpoint dict holding one under 'model',
    'state_dict' or 'model_ema'; 'module.' / 'backbone.' prefixes are stripped) into the state dict of
    `swtasks.create_model('shiftwise_' + arch, **overrides)` (training structure).

    num_classes defaults to the checkpoint's head size. Unmerged (`LoRAs.{p}.weight`) and merged
    (`LoRA.weight`) files are both accepted. Raises CheckpointMismatchError listing every missing,
    unexpected and mis-shaped key; RuntimeError if our model's tables differ from the reference's draws.
    """
    src = extract_state_dict(state_dict, source="reference checkpoint")
    name = arch if arch.startswith("shiftwise_") else f"shiftwise_{arch}"
    if "num_classes" not in overrides and "head.weight" in src:
        overrides["num_classes"] = int(src["head.weight"].shape[0])
    if overrides.get("deploy"):
        raise ValueError(
            "convert into the training structure (deploy=False), then call model.reparameterize()"
        )
    model = create_model(name, **overrides)
    target = model.state_dict()

    out: dict[str, torch.Tensor] = {}
    handled: set[str] = set()  # our keys produced by the block rules (whether or not the file had them)
    used: set[str] = set()
    missing: list[str] = []
    misshaped: list[str] = []

    def take(key: str, shape: tuple) -> torch.Tensor | None:
        if key not in src:
            missing.append(f"{key} {tuple(shape)}")
            return None
        used.add(key)
        t = src[key]
        if tuple(t.shape) != tuple(shape):
            misshaped.append(f"{key} (file {tuple(t.shape)}, expected {tuple(shape)})")
            return None
        return t

    checked_tables: dict[tuple, None] = {}
    merged = False
    for bname, block in model.named_modules():
        if not isinstance(block, ShiftWiseBlock):
            continue
        lk = block.large_kernel
        p = f"{bname}.large_kernel."

        # fixed tables: ours are buffers; they must be exactly what the reference draws
        config = (lk.channels, lk.kernel_size, lk.small_kernel, lk.ghost_ratio, lk.n_rep)
        if config not in checked_tables:
            ref = reference_tables(*config)
            for t in _TABLE_NAMES:
                if not torch.equal(ref[t], target[p + t]):
                    raise RuntimeError(
                        f"{p}{t} differs from the reference implementation's draws for (channels, kernel_size, "
                        f"small_kernel, ghost_ratio, n_rep) = {config}; converted weights would be wrong"
                    )
            checked_tables[config] = None
        for t in _TABLE_NAMES:
            out[p + t] = target[p + t]
        handled.update(p + t for t in (*_TABLE_NAMES, "weight"))

        # small kernels: paths stacked; a merged file's single kernel goes to path 0
        n_path, rn, k, _ = target[p + "weight"].shape
        shape = (rn, 1, k, k)
        if p + "LoRA.weight" in src:
            merged = True
            w = take(p + "LoRA.weight", shape)
            if w is not None:
                weight = w.new_zeros(n_path, rn, k, k)
                weight[0] = w[:, 0]
                out[p + "weight"] = weight
        else:
            paths = [take(f"{p}LoRAs.{i}.weight", shape) for i in range(n_path)]
            if all(w is not None for w in paths):
                out[p + "weight"] = torch.stack([w[:, 0] for w in paths])

        for ours, theirs in _BN_NAMES.items():
            for leaf in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"):
                key = f"{p}{ours}.{leaf}"
                handled.add(key)
                t = take(f"{p}{theirs}.{leaf}", target[key].shape)
                if t is not None:
                    out[key] = t

        # layers that consume the operator's output: undo the reference's [rep..., ghost...] order
        inverse = torch.argsort(torch.cat([lk.rep_idx, lk.ghost_idx]))
        for leaf, dim in _PERMUTED:
            key = f"{bname}.{leaf}"
            handled.add(key)
            t = take(key, target[key].shape)
            if t is not None:
                out[key] = t.index_select(dim, inverse)

    for key, value in target.items():
        if key not in handled:
            t = take(key, value.shape)
            if t is not None:
                out[key] = t

    unexpected = sorted(set(src) - used)
    if missing or unexpected or misshaped:
        lines = [f"the reference checkpoint does not fit {name} (converting from {SOURCE}):"]
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", misshaped)):
            if keys:
                shown = "\n    ".join(keys[:30]) + (
                    f"\n    ... ({len(keys) - 30} more)" if len(keys) > 30 else ""
                )
                lines.append(f"  {label} keys ({len(keys)}):\n    {shown}")
        guess = _guess_arch(src)
        if guess:
            lines.append(f"  the file has {guess}; pick --arch / overrides to match (merged={merged})")
        raise CheckpointMismatchError("\n".join(lines))
    return {k: out[k] for k in target}


def load_reference_checkpoint(path: str | os.PathLike, trust_pickle: bool = False) -> Any:
    """torch.load a reference checkpoint on the CPU. The reference also pickles its argparse Namespace
    (`args`), which is allowed; anything else beyond tensors and containers needs trust_pickle=True
    (weights_only=False: only for files you trust)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if trust_pickle:
        return torch.load(path, map_location="cpu", weights_only=False)
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # pickle.UnpicklingError and friends name the offending global
        raise RuntimeError(
            f"{path} holds objects that a weights-only load refuses ({err}). If you trust the file, "
            "convert it with trust_pickle=True (tools/convert_checkpoint.py --trust-pickle)."
        ) from err


def convert_checkpoint_file(
    src_path: str | os.PathLike,
    dst_path: str | os.PathLike,
    source: str = SOURCE,
    arch: str = "tiny",
    trust_pickle: bool = False,
    **overrides: Any,
) -> dict[str, Any]:
    """Convert the file `src_path` and write {'state_dict': ..., 'meta': {...}} to `dst_path` atomically
    (a temporary file in the same directory, then os.replace). Returns the meta dict."""
    if source != SOURCE:
        raise ValueError(f"unknown checkpoint source {source!r}; supported: {SOURCE!r}")
    obj = load_reference_checkpoint(src_path, trust_pickle=trust_pickle)
    sd = convert_shiftwise_official(obj, arch=arch, **overrides)
    merged = any(k.endswith("large_kernel.LoRA.weight") for k in extract_state_dict(obj))
    name = arch if arch.startswith("shiftwise_") else f"shiftwise_{arch}"
    meta = {
        "source": source,
        "architecture": name,
        "num_classes": int(sd["head.weight"].shape[0]) if "head.weight" in sd else None,
        "overrides": {k: v for k, v in overrides.items() if k != "num_classes"},
        "merged": merged,
        "converted_from": os.path.basename(os.fspath(src_path)),
    }
    atomic_torch_save({"state_dict": sd, "meta": meta}, dst_path)
    return meta
