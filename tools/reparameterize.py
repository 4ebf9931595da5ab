#!/usr/bin/env python
"""Re-parameterise a classification checkpoint into the deploy structure.

    tools/reparameterize.py IN.pth OUT.pth --model shiftwise_tiny [--num-classes 1000] [--set KEY=VALUE ...]

IN holds a training-structure state dict (plain, or under 'state_dict' / 'model' / 'model_ema'; 'module.' /
'backbone.' / 'model.' prefixes stripped). The model is built with --model (+ --num-classes and --set
overrides), loaded strictly, folded with `model.reparameterize()` (eval semantics) and its deploy state dict is
written to OUT atomically (a temporary file in OUT's directory, then os.replace). Load the result with
`swtasks.create_model(NAME, deploy=True, checkpoint_path=OUT)`. Unless --no-verify, the logits of both
structures on a random batch are compared first. Detector / segmentor checkpoints: tools/reparameterize_mm.py.
"""

from __future__ import annotations

import argparse
import sys

from swtasks.cliutil import add_override_option
from swtasks.io import atomic_torch_save


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("input", metavar="IN", help="training-structure checkpoint")
    parser.add_argument("output", metavar="OUT", help="where to write the deploy state dict")
    parser.add_argument("--model", required=True, help="registry name, e.g. shiftwise_tiny")
    parser.add_argument("--num-classes", type=int, default=1000)
    add_override_option(parser, help="model override as a Python literal (repeatable)")
    parser.add_argument("--no-verify", action="store_true", help="skip the logits comparison")
    parser.add_argument("--verify-size", type=int, default=64, help="image size of the verification batch")
    args = parser.parse_args(argv)

    import torch

    from swtasks.models import create_model

    overrides = dict(args.overrides)
    try:
        model = create_model(
            args.model, num_classes=args.num_classes, checkpoint_path=args.input, **overrides
        )
    except (ValueError, RuntimeError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if not hasattr(model, "reparameterize"):
        print(f"error: {args.model} has no reparameterize()", file=sys.stderr)
        return 2
    model.eval()
    before = sum(p.numel() for p in model.parameters())
    x = None
    if not args.no_verify:
        size = max(args.verify_size, getattr(model, "total_stride", 32))
        x = torch.randn(
            2, getattr(model, "in_chans", 3), size, size, generator=torch.Generator().manual_seed(0)
        )
        with torch.no_grad():
            ref = model(x)
    model.reparameterize()
    after = sum(p.numel() for p in model.parameters())
    if x is not None:
        with torch.no_grad():
            out = model(x)
        rel = ((out - ref).norm() / ref.norm().clamp_min(1e-12)).item()
        print(f"verify: relative error of the deploy logits {rel:.2e}")
        if not rel <= 1e-4:
            print(
                "error: the deploy structure does not reproduce the logits (relative error > 1e-4)",
                file=sys.stderr,
            )
            return 1
    atomic_torch_save(model.state_dict(), args.output)
    print(f"{args.model}: {before:,} -> {after:,} parameters; deploy state dict written to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
