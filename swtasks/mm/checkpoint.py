"""Reading backbone weights out of the checkpoints this project (and others) write.

Accepted inputs, all through ``init_cfg=dict(type='Pretrained', checkpoint=..., prefix=...)``:

- this project's classification checkpoints: Lightning ``.ckpt`` files (``{'state_dict': {'model.*': ...}}``
  or any other module prefix) and exported backbones (a plain state dict, or ``{'state_dict': ...}``);
- converted published checkpoints (the converter's output: ``{'model': state_dict}`` or a plain dict);
- detector / segmentor checkpoints written by mmengine (``{'state_dict': {'backbone.*': ...}}``);
- anything behind ``module.`` (DDP) or ``_orig_mod.`` (torch.compile) prefixes.

The prefix is a hint, not a filter that must match exactly: the keys under it are taken when it occurs
(also behind a wrapper such as ``model.``); otherwise the prefix under which the checkpoint's keys match the
backbone best is detected. What was used is logged.
"""

from __future__ import annotations

import logging
import os
import pickle
from collections import Counter
from collections.abc import Iterable, Mapping

import torch

from swtasks.models.registry import CheckpointMismatchError

# keys of a classification model that a features-only backbone does not have
CLASSIFIER_PREFIXES = ("head.", "norm.", "fc.", "classifier.", "head_drop.")
# buffers the layers regenerate deterministically or that may legitimately be absent
OPTIONAL_BUFFERS = ("num_batches_tracked", "kernel_mask", "rep_idx", "ghost_idx", "slot_h", "slot_v", "ident")
WRAPPER_PREFIXES = ("module.", "_orig_mod.")
CONTAINER_KEYS = ("state_dict", "model", "module", "model_state", "model_state_dict", "net")


__all__ = [
    "CheckpointMismatchError",
    "compare_state_dicts",
    "detect_prefix",
    "extract_state_dict",
    "format_mismatch",
    "read_checkpoint",
    "select_backbone_weights",
]


def read_checkpoint(path: str, map_location="cpu"):
    """Load a checkpoint object from a local path or any URI mmengine's CheckpointLoader understands.

    Local files are read with ``weights_only=True`` first; files holding other Python objects (Lightning
    hyper-parameters, mmengine message hubs) are read again with ``weights_only=False`` (only load
    checkpoints you trust).
    """
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"checkpoint must be a path or URL string, got {path!r}")
    path = os.fspath(path)
    if "://" in path:
        from mmengine.runner import CheckpointLoader

        return CheckpointLoader.load_checkpoint(path, map_location=map_location)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint file not found: {path!r}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, AttributeError, TypeError) as err:
        from mmengine.logging import print_log

        print_log(
            f"{path}: holds Python objects besides tensors ({type(err).__name__}); reading it as a full "
            "pickle (weights_only=False) - only load checkpoints you trust",
            logger="current",
            level=logging.WARNING,
        )
        return torch.load(path, map_location=map_location, weights_only=False)


def _is_state_dict(obj) -> bool:
    return (
        isinstance(obj, Mapping)
        and len(obj) > 0
        and all(isinstance(k, str) and torch.is_tensor(v) for k, v in obj.items())
    )


def extract_state_dict(obj, source: str = "checkpoint") -> dict[str, torch.Tensor]:
    """The tensor state dict inside a checkpoint object (plain, Lightning, mmengine, ConvNeXt-style)."""
    if hasattr(obj, "state_dict") and callable(obj.state_dict) and not isinstance(obj, Mapping):
        obj = obj.state_dict()  # a whole pickled nn.Module
    if _is_state_dict(obj):
        return dict(obj)
    if isinstance(obj, Mapping):
        for key in CONTAINER_KEYS:
            inner = obj.get(key)
            if _is_state_dict(inner):
                return dict(inner)
            if isinstance(inner, Mapping) and _is_state_dict(
                {k: v for k, v in inner.items() if torch.is_tensor(v)}
            ):
                return {k: v for k, v in inner.items() if torch.is_tensor(v)}
        tensors = {k: v for k, v in obj.items() if isinstance(k, str) and torch.is_tensor(v)}
        if tensors and len(tensors) >= len(obj) / 2:
            return tensors
        top = ", ".join(repr(k) for k in list(obj)[:8])
        raise CheckpointMismatchError(
            f"{source}: no state dict found (looked for a mapping of tensors at the top level and under "
            f"{', '.join(repr(k) for k in CONTAINER_KEYS)}); top-level keys: {top}"
        )
    raise CheckpointMismatchError(f"{source}: expected a dict checkpoint, got {type(obj).__name__}")


def _strip_wrappers(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    changed = True
    while changed and sd:
        changed = False
        for w in WRAPPER_PREFIXES:
            if all(k.startswith(w) for k in sd):
                sd = {k[len(w) :]: v for k, v in sd.items()}
                changed = True
    return sd


def _under(sd: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix)}


def detect_prefix(sd: Mapping[str, torch.Tensor], model_keys: Iterable[str]) -> tuple[str, int]:
    """The prefix p maximising the number of model keys k with p + k in ``sd`` (ties: the shortest)."""
    model_keys = set(model_keys)
    counts: Counter[str] = Counter()
    for key in sd:
        # every split point at a '.' boundary (and the empty prefix)
        cut = 0
        while True:
            rest = key[cut:]
            if rest in model_keys:
                counts[key[:cut]] += 1
            nxt = key.find(".", cut)
            if nxt < 0:
                break
            cut = nxt + 1
    if not counts:
        return "", 0
    best = max(counts.items(), key=lambda kv: (kv[1], -len(kv[0])))
    return best


def select_backbone_weights(
    sd: dict[str, torch.Tensor],
    model_keys: Iterable[str],
    prefix: str | None = None,
    source: str = "checkpoint",
) -> tuple[dict[str, torch.Tensor], str]:
    """Keys of ``sd`` that belong to the backbone, with their prefix removed; returns (weights, how).

    ``prefix`` given: the keys under it (optionally behind wrapper prefixes such as ``model.`` or
    ``module.``); when nothing is under it, or the keys under it do not fit, the best prefix is detected.
    Raises CheckpointMismatchError naming the prefix and example keys when no key fits the backbone.
    """
    model_keys = set(model_keys)
    sd = _strip_wrappers(sd)

    def score(d):
        return sum(k in model_keys for k in d)

    candidates: list[tuple[dict, str]] = []
    if prefix:
        under = _under(sd, prefix)
        if under:
            candidates.append((under, f"keys under prefix {prefix!r}"))
        else:
            # the prefix behind a wrapper (e.g. 'model.backbone.' for prefix 'backbone.')
            lead = Counter(
                k[: k.find(prefix)] for k in sd if k.find(prefix) > 0 and k[k.find(prefix) - 1] == "."
            )
            if lead:
                outer = lead.most_common(1)[0][0]
                candidates.append((_under(sd, outer + prefix), f"keys under prefix {outer + prefix!r}"))
    auto, hits = detect_prefix(sd, model_keys)
    if hits:
        candidates.append((_under(sd, auto) if auto else dict(sd), f"keys under detected prefix {auto!r}"))
    if not candidates or max(score(c[0]) for c in candidates) == 0:
        sample = ", ".join(repr(k) for k in list(sd)[:6])
        want = ", ".join(repr(k) for k in sorted(model_keys)[:3])
        hint = f" under prefix {prefix!r}" if prefix else ""
        raise CheckpointMismatchError(
            f"{source}: no key fits the backbone{hint}: checkpoint keys look like {sample} "
            f"(the backbone expects keys like {want})"
        )
    # the explicit prefix wins unless the detected one fits clearly more keys
    best = max(candidates, key=lambda c: score(c[0]))
    if (
        prefix
        and candidates[0][1].startswith("keys under prefix")
        and score(candidates[0][0]) >= score(best[0])
    ):
        best = candidates[0]
    return best


def compare_state_dicts(
    model_sd: Mapping[str, torch.Tensor],
    ckpt_sd: Mapping[str, torch.Tensor],
    *,
    new_keys: Iterable[str] = (),
    ignore_prefixes: tuple[str, ...] = CLASSIFIER_PREFIXES,
) -> tuple[list[str], list[str], list[tuple[str, tuple, tuple]]]:
    """(missing, unexpected, shape mismatches) of ``ckpt_sd`` against ``model_sd``.

    Not reported: missing ``new_keys`` (layers the classification network does not have, e.g. the output
    norms), missing optional buffers (regenerated or legitimately absent), unexpected classifier keys.
    """
    new_keys = set(new_keys)
    missing = [
        k
        for k in model_sd
        if k not in ckpt_sd and k not in new_keys and k.rsplit(".", 1)[-1] not in OPTIONAL_BUFFERS
    ]
    unexpected = [
        k
        for k in ckpt_sd
        if k not in model_sd
        and not (
            k.startswith(ignore_prefixes)
            and not any(m.startswith(k.split(".", 1)[0] + ".") for m in model_sd)
        )
        and k.rsplit(".", 1)[-1] != "kernel_mask"
    ]
    mismatched = [
        (k, tuple(ckpt_sd[k].shape), tuple(model_sd[k].shape))
        for k in model_sd
        if k in ckpt_sd and tuple(ckpt_sd[k].shape) != tuple(model_sd[k].shape)
    ]
    return missing, unexpected, mismatched


def format_mismatch(source: str, target: str, missing, unexpected, mismatched, limit: int = 12) -> str:
    parts = [f"{source} does not fit {target}:"]
    if mismatched:
        rows = "; ".join(f"{k}: checkpoint {s} vs model {m}" for k, s, m in mismatched[:limit])
        more = f" (+{len(mismatched) - limit} more)" if len(mismatched) > limit else ""
        parts.append(f"shape mismatch for {len(mismatched)} key(s): {rows}{more}")
    if missing:
        more = f" (+{len(missing) - limit} more)" if len(missing) > limit else ""
        parts.append(f"missing {len(missing)} key(s): {', '.join(missing[:limit])}{more}")
    if unexpected:
        more = f" (+{len(unexpected) - limit} more)" if len(unexpected) > limit else ""
        parts.append(f"unexpected {len(unexpected)} key(s): {', '.join(unexpected[:limit])}{more}")
    return " ".join(parts)
