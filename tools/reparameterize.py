#!/usr/bin/env python
"""Re-parameterise a classification checkpoint into the deploy structure (verified).

    tools/reparameterize.py IN OUT --model shiftwise_tiny [--num-classes N] [--set KEY=VALUE ...]

IN: any file `swtasks.create_model(checkpoint_path=...)` reads (converted, exported, a Lightning checkpoint
of tools/train_cls.py). The model is built with --model (+ --num-classes, default the file's meta or 1000,
and --set overrides), loaded strictly, folded with `model.reparameterize()` (eval semantics) after the
outputs of both structures on a random batch were compared (unless --no-verify), and written to OUT as
{'state_dict', 'meta'} atomically (.safetensors by extension). Load the result with
`swtasks.create_model(NAME, deploy=True, checkpoint_path=OUT)`. Detector / segmentor checkpoints:
tools/reparameterize_mm.py.
"""

from __future__ import annotations

import argparse
import sys

from swtasks.cliutil import add_override_option, run_tool


def _main(argv: list[str] | None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("input", metavar="IN", help="training-structure weights")
    parser.add_argument("output", metavar="OUT", help="where to write the deploy weights")
    parser.add_argument("--model", required=True, help="registry name, e.g. shiftwise_tiny")
    parser.add_argument("--num-classes", type=int, default=None)
    add_override_option(parser, help="model override as a Python literal (repeatable)")
    parser.add_argument("--no-verify", action="store_true", help="skip the output comparison")
    parser.add_argument("--verify-size", type=int, default=64, help="image size of the verification batch")
    parser.add_argument("--trust-pickle", action="store_true", help="allow a full unpickle of IN (trusted files)")
    parser.add_argument("--allow-download", action="store_true",
                        help="IN may be an http(s) URL: downloaded, then read like a local file")
    args = parser.parse_args(argv)

    from swtasks.models.deploy import reparameterize_file

    meta = reparameterize_file(
        args.input, args.output, model=args.model, num_classes=args.num_classes, overrides=dict(args.overrides),
        verify=not args.no_verify, verify_size=args.verify_size, trust_pickle=args.trust_pickle,
        allow_download=args.allow_download,
    )
    if meta["verified_relative_error"] is not None:
        print(f"verify: relative error of the deploy outputs {meta['verified_relative_error']:.2e}")
    print(
        f"{args.model}: {meta['params_before']:,} -> {meta['params_after']:,} parameters; "
        f"deploy weights written to {args.output}"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_tool(_main, argv, prog="reparameterize.py")


if __name__ == "__main__":
    sys.exit(main())
