#!/usr/bin/env python
"""Convert a published implementation's checkpoint into this toolkit's weights file.

    tools/convert_checkpoint.py --source SOURCE IN OUT --model NAME [--set KEY=VALUE ...] [--trust-pickle]
    tools/convert_checkpoint.py --source shiftwise-official IN OUT --arch tiny      (= --model shiftwise_tiny)

OUT holds {'state_dict', 'meta'} (a path ending in .safetensors: safetensors) and loads with
`swtasks.create_model(NAME, checkpoint_path=OUT)` (same overrides). `--set` passes model overrides as Python
literals, e.g. `--set num_classes=100`; num_classes defaults to the file's. IN is read weights-only; a
file that holds other Python objects needs --trust-pickle (only for files you trust). Bad input ends with
one line naming the file, key or value (exit status 2; SWTASKS_DEBUG=1 shows the traceback).
"""

from __future__ import annotations

import argparse
import sys

from swtasks.cliutil import add_override_option, run_tool


def _main(argv: list[str] | None) -> int:
    from swtasks.convert import convert_checkpoint_file, sources

    known = sources()
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--source", required=True, choices=sorted(known), help="which implementation wrote IN")
    parser.add_argument("input", metavar="IN", help="the published checkpoint")
    parser.add_argument("output", metavar="OUT", help="where to write the converted checkpoint (atomically)")
    parser.add_argument("--model", help="registry name, e.g. shiftwise_tiny (see swtasks.list_models())")
    parser.add_argument("--arch", help="variant of the source's family, e.g. tiny (shorthand for --model)")
    add_override_option(parser, help="model override (repeatable)")
    parser.add_argument("--trust-pickle", action="store_true", help="allow a full unpickle of IN (trusted files)")
    parser.add_argument("--allow-download", action="store_true",
                        help="IN may be an http(s) URL: downloaded, then read like a local file")
    args = parser.parse_args(argv)
    if args.model and args.arch:
        parser.error("give --model or --arch, not both")
    model = args.model or f"{known[args.source]}_{args.arch or 'tiny'}"
    meta = convert_checkpoint_file(
        args.input, args.output, source=args.source, model=model, trust_pickle=args.trust_pickle,
        allow_download=args.allow_download, **dict(args.overrides),
    )
    print(
        f"wrote {args.output}: {meta['architecture']}, num_classes={meta['num_classes']}, "
        f"{meta['tensors']} tensors, overrides={meta['overrides']}"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_tool(_main, argv, prog="convert_checkpoint.py")


if __name__ == "__main__":
    sys.exit(main())
