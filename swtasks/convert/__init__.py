"""Converting a published implementation's checkpoint file into this toolkit's weights format.

The layout knowledge lives with each model family (its `CheckpointAdapter`, registered with
`swtasks.models.register_family`), so `create_model(checkpoint_path=...)` and the MMDetection/MMSegmentation
loader read the published files too; this module turns one into a `{"state_dict", "meta"}` file that any
loader reads without conversion: read weights-only, convert, load strictly into a fresh model (so every
missing, unexpected or mis-shaped key is named), write atomically.
"""

from __future__ import annotations

import os
from typing import Any

from swtasks.checkpoint import (
    classifier_name,
    extract_state_dict,
    is_loading_option,
    load_into,
    read_checkpoint,
    save_weights,
    select_weights,
)
from swtasks.errors import UserError
from swtasks.models import checkpoint_adapter, create_model, family_of, list_models

__all__ = ["ConversionError", "convert_checkpoint_file", "sources"]


class ConversionError(UserError, ValueError):
    """A conversion that cannot be done as asked: an unknown source, a model of another family, a file that
    is not in the source's layout (a ValueError too, as these always were)."""


def sources() -> dict[str, str]:
    """``--source`` names -> family prefixes, from the registered families' adapters."""
    out = {}
    for name in list_models():
        adapter = checkpoint_adapter(name)
        if adapter is not None and adapter.source:
            out[adapter.source] = family_of(name)
    return dict(sorted(out.items()))


def _classifier_key(model) -> str | None:
    name = classifier_name(model)
    return f"{name}.weight" if name else None


def convert_checkpoint_file(
    src_path: str | os.PathLike,
    dst_path: str | os.PathLike,
    *,
    source: str,
    model: str,
    trust_pickle: bool = False,
    allow_download: bool = False,
    **overrides: Any,
) -> dict[str, Any]:
    """Convert ``src_path`` (in the ``source`` layout) into the weights of registry model ``model`` (training
    structure) and write ``{"state_dict", "meta"}`` to ``dst_path`` atomically; returns the meta dict.
    ``num_classes`` defaults to the file's classifier size. Raises ValueError for an unknown source, a model
    of another family or a file that is not in the source's layout, CheckpointMismatchError when it does not
    fit the model (every key listed), CheckpointError when the file cannot be read weights-only (all three
    are :class:`swtasks.errors.UserError`; the first is :class:`ConversionError`, a ValueError)."""
    known = sources()
    if source not in known:
        raise ConversionError(f"unknown checkpoint source {source!r}; supported: {', '.join(known) or '(none)'}")
    family = known[source]
    if family_of(model) != family:
        raise ConversionError(f"--source {source} converts {family}_* models, not {model!r}")
    src_path = os.fspath(src_path)
    sd = extract_state_dict(read_checkpoint(src_path, trust_pickle=trust_pickle, allow_download=allow_download),
                            source=src_path)
    adapter = checkpoint_adapter(model)
    net = create_model(model, **overrides)
    weights, _ = select_weights(sd, net.state_dict().keys(), source=src_path)
    if not adapter.detect(weights):
        raise ConversionError(f"{src_path} is not in the {source} layout (no key of that layout found)")
    if "num_classes" not in overrides:
        key = _classifier_key(net)
        try:
            converted = adapter.convert(weights, net)
        except ValueError as e:  # an adapter's refusal of the file (its documented error)
            if isinstance(e, UserError):
                raise
            raise ConversionError(f"{src_path}: {e}") from e
        if key and key in converted and converted[key].shape[0] != net.state_dict()[key].shape[0]:
            overrides["num_classes"] = int(converted[key].shape[0])
            net = create_model(model, **overrides)
    report = load_into(net, sd, strict=True, source=src_path)
    meta = {
        "source": source,
        "architecture": model,
        "num_classes": getattr(net, "num_classes", None),
        "overrides": {k: v for k, v in overrides.items() if k != "num_classes" and not is_loading_option(k)},
        "converted_from": os.path.basename(src_path),
        "tensors": report.loaded,
    }
    save_weights(dst_path, net.state_dict(), meta)
    return meta
