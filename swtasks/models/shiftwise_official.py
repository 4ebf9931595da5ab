"""The published shift-wise implementation's checkpoint layout, as the ShiftWiseNet family's checkpoint
adapter (`swtasks.checkpoint.CheckpointAdapter`): `create_model('shiftwise_*', checkpoint_path=...)`, the
MMDetection/MMSegmentation loader and `tools/convert_checkpoint.py --source shiftwise-official` all read the
reference's files through it.

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

import math
from collections.abc import Mapping

import numpy as np
import torch
import torch.nn as nn

from swtasks.layers import ShiftWiseConv2d

__all__ = [
    "SOURCE",
    "convert_reference_layout",
    "is_kernel_mask",
    "is_reference_layout",
    "reference_hints",
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


def is_reference_layout(sd: Mapping[str, torch.Tensor]) -> bool:
    """Whether a state dict has the reference's operator keys (unmerged LoRAs.*, merged LoRA.*, bn_lora*)."""
    return any(".large_kernel.LoRAs." in k or ".large_kernel.LoRA." in k or ".large_kernel.bn_lora1." in k for k in sd)


def convert_reference_layout(sd: Mapping[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """The reference's state dict `sd` in the layout of `model` (a ShiftWiseNet, classifier or features-only,
    training structure); keys this function does not know pass through unchanged, so that the caller's
    comparison names every missing, unexpected and mis-shaped key.

    Per operator: the small-kernel paths `LoRAs.{p}.weight` are stacked into `weight` (a merged file's
    `LoRA.weight` goes to path 0, the other paths are zero: the same sum), `bn_lora1/bn_lora2/bn_small`
    become `bn_h/bn_v/bn_s`, our tables are added after checking that they equal a literal re-run of the
    reference's seeded draws, and the layers that consume the operator's output are permuted back to the
    input channel order. Raises RuntimeError if the tables differ (converted weights would be wrong) and
    ValueError for a deploy-structure model.
    """
    if getattr(model, "deploy", False):
        raise ValueError(
            "the reference layout converts into the training structure: create the model with deploy=False "
            "(then call model.reparameterize())"
        )
    out = dict(sd)
    target = model.state_dict()
    checked: set[tuple] = set()
    for bname, block in model.named_modules():
        lk = getattr(block, "large_kernel", None)  # a ShiftWiseNet block: its operator is `large_kernel`
        if not isinstance(lk, ShiftWiseConv2d):
            continue
        p = f"{bname}.large_kernel."
        if not any(k.startswith(p) for k in sd):
            continue  # a block the file does not have: the comparison reports it
        config = (lk.channels, lk.kernel_size, lk.small_kernel, lk.ghost_ratio, lk.n_rep)
        if config not in checked:
            ref = reference_tables(*config)
            for t in _TABLE_NAMES:
                if not torch.equal(ref[t], target[p + t]):
                    raise RuntimeError(
                        f"{p}{t} differs from the reference implementation's draws for (channels, kernel_size, "
                        f"small_kernel, ghost_ratio, n_rep) = {config}; converted weights would be wrong"
                    )
            checked.add(config)
        for t in _TABLE_NAMES:
            out.setdefault(p + t, target[p + t])
        # small kernels: paths stacked; a merged file's single kernel goes to path 0
        n_path = target[p + "weight"].shape[0]
        if p + "LoRA.weight" in out:
            w = out.pop(p + "LoRA.weight")
            weight = w.new_zeros((n_path, *w[:, 0].shape))
            weight[0] = w[:, 0]
            out[p + "weight"] = weight
        elif all(f"{p}LoRAs.{i}.weight" in out for i in range(n_path)):
            paths = [out.pop(f"{p}LoRAs.{i}.weight") for i in range(n_path)]
            if len({tuple(w.shape) for w in paths}) == 1:
                out[p + "weight"] = torch.stack([w[:, 0] for w in paths])
        for ours, theirs in _BN_NAMES.items():
            for leaf in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"):
                if f"{p}{theirs}.{leaf}" in out:
                    out[f"{p}{ours}.{leaf}"] = out.pop(f"{p}{theirs}.{leaf}")
        # layers that consume the operator's output: undo the reference's [rep..., ghost...] order
        inverse = torch.argsort(torch.cat([lk.rep_idx, lk.ghost_idx]))
        for leaf, dim in _PERMUTED:
            key = f"{bname}.{leaf}"
            if key in out and key in target and out[key].shape == target[key].shape:
                out[key] = out[key].index_select(dim, inverse)
    return out


def _guess_arch(sd: Mapping[str, torch.Tensor], archs: Mapping[str, Mapping]) -> str:
    """The depths and widths of a (reference- or swtasks-layout) state dict, with the variants of `archs`
    (name -> dict with dims and depths) that match."""
    try:
        dims = (sd["downsample_layers.0.3.weight"].shape[0],) + tuple(
            sd[f"downsample_layers.{i}.0.weight"].shape[0] for i in (1, 2, 3)
        )
    except KeyError:
        return ""
    blocks = {tuple(k.split(".")[1:3]) for k in sd if k.startswith("stages.")}
    depths = tuple(len({b for s, b in blocks if s == str(i)}) for i in range(4))
    match = [a for a, cfg in archs.items() if tuple(cfg["dims"]) == dims and tuple(cfg["depths"]) == depths]
    found = f"depths {depths}, dims {dims}"
    return f"{found} (arch {', '.join(match)})" if match else found


def reference_hints(sd: Mapping, own: Mapping, mismatched: list, *, archs: Mapping[str, Mapping]) -> list[str]:
    """Extra lines for a mismatch message: the file's and the model's depths/widths (named after the variants
    in `archs` they match) and which structure (training / deploy) each has. The family binds `archs`."""
    hints = []
    guess = _guess_arch(sd, archs)
    own_guess = _guess_arch(own, archs)
    if guess and guess != own_guess:
        hints.append(f"  the file has {guess}; the model has {own_guess or 'another layout'}")
    ck_deploy = any(k.endswith("large_kernel.weight_h") for k in sd)
    md_deploy = any(k.endswith("large_kernel.weight_h") for k in own)
    if ck_deploy and not md_deploy:
        hints.append("  hint: the checkpoint is re-parameterised (deploy form): create the model with deploy=True")
    if md_deploy and not ck_deploy and any(k.endswith("large_kernel.weight") for k in sd):
        hints.append(
            "  hint: the checkpoint has the training structure: create the model with deploy=False "
            "(then call model.reparameterize())"
        )
    return hints


def is_kernel_mask(key: str) -> bool:
    """A sparsity mask buffer: a file may lack it (the model makes it) or carry it (it loads anyway)."""
    return key.endswith(".kernel_mask")
