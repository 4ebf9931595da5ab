#!/usr/bin/env python
"""Convert a reference implementation's checkpoint into a swtasks checkpoint.

    tools/convert_checkpoint.py --source shiftwise-official IN.pth OUT.pth [--arch tiny] [--set KEY=VALUE ...]

The output holds {'state_dict', 'meta'} and loads with
`swtasks.create_model('shiftwise_<arch>', checkpoint_path=OUT)` (same overrides). `--set` passes model
overrides as Python literals, e.g. `--set num_classes=100 --set "kernel_sizes=(51, 49, 47, 13)"`.
"""

from __future__ import annotations

import argparse
import sys

from swtasks.cliutil import add_override_option


def main(argv: list[str] | None = None) -> int:
    from swtasks.convert import SOURCES, convert_checkpoint_file

    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--source", required=True, choices=SOURCES, help="which implementation wrote IN")
    parser.add_argument("input", metavar="IN", help="the reference checkpoint")
    parser.add_argument("output", metavar="OUT", help="where to write the converted checkpoint (atomically)")
    parser.add_argument("--arch", default="tiny", help="variant: tiny (the published SW-T), small, base, ...")
    add_override_option(parser, help="model override (repeatable)")
    parser.add_argument(
        "--trust-pickle",
        action="store_true",
        help="load IN with weights_only=False (only for files you trust)",
    )
    args = parser.parse_args(argv)
    meta = convert_checkpoint_file(
        args.input,
        args.output,
        source=args.source,
        arch=args.arch,
        trust_pickle=args.trust_pickle,
        **dict(args.overrides),
    )
    print(
        f"wrote {args.output}: {meta['architecture']}, num_classes={meta['num_classes']}, "
        f"merged={meta['merged']}, overrides={meta['overrides']}"
    )
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except Exception as err:  # a clear one-paragraph message instead of a traceback
        print(f"error: {err}", file=sys.stderr)
        sys.exit(1)
