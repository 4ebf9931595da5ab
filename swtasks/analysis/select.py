"""Turning a tool's model arguments into model names: registry names, fnmatch patterns, `torchvision:NAME` and
`timm:NAME` (either with an optional `+swK` suffix: converted by swtasks.layers.to_shiftwise, see
swtasks.models.foreign).

Shared by the analysis tools (benchmark, ERF, complexity) so they accept the same arguments.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable

__all__ = ["FOREIGN_PREFIXES", "TORCHVISION_PREFIX", "resolve_models"]

TORCHVISION_PREFIX = "torchvision:"
FOREIGN_PREFIXES = (TORCHVISION_PREFIX, "timm:")  # = swtasks.models.foreign.FOREIGN_PREFIXES


def resolve_models(args: Iterable[str], *, skip_missing: bool = False, torchvision: bool = True) -> list[str]:
    """Expand patterns (`shiftwise_*`) against the registry and keep `torchvision:NAME` / `timm:NAME` entries
    (when `torchvision`), in order and without duplicates. An unknown name or a pattern that matches nothing
    raises ModelConfigError naming it (with `skip_missing`: a warning on stderr, and it is left out)."""
    from swtasks.models import ModelConfigError, get_data_config, is_model, list_models

    names: list[str] = []
    for arg in args:
        if arg.startswith(FOREIGN_PREFIXES):
            if not torchvision:
                raise ModelConfigError(f"{arg!r}: this tool takes registry models only")
            found = [arg]
        elif any(c in arg for c in "*?["):
            found = list_models(arg)
            if not found:
                if not skip_missing:
                    raise ModelConfigError(f"no registered model matches {arg!r} (see swtasks.list_models())")
                print(f"warning: no registered model matches {arg!r}; skipped", file=sys.stderr)
        elif is_model(arg):
            found = [arg]
        elif skip_missing:
            print(f"warning: {arg!r} is not a registered model; skipped", file=sys.stderr)
            found = []
        else:
            get_data_config(arg)  # raises ModelConfigError naming the closest registered names
            found = []
        names += [n for n in found if n not in names]
    if not names:
        raise ModelConfigError(f"no models to run (arguments: {' '.join(args)})")
    return names
