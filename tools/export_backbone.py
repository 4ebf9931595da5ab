#!/usr/bin/env python
"""Export the backbone of a tools/train_cls.py checkpoint as a plain state dict.

    python tools/export_backbone.py runs/demo/checkpoints/last.ckpt backbone.pth [--ema] [--reparameterize] [--no-head]

The file holds {"state_dict": {"backbone.<key>": tensor}, "meta": {...}} (an output ending in .safetensors is
written as safetensors: the tensors, and the meta as JSON string metadata; docs/deploy.md): load it in
MMDetection / MMSegmentation configs with init_cfg=dict(type='Pretrained', checkpoint='backbone.pth', prefix='backbone.'),
or in Python with swtasks.create_model(NAME, checkpoint_path='backbone.pth') (plus deploy=True for a
--reparameterize export). Sparsity masks are folded into the weights.
"""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", help="a Lightning checkpoint written by tools/train_cls.py")
    p.add_argument("output", help="where to write the backbone state dict (.pth, or .safetensors)")
    p.add_argument("--ema", action="store_true", help="export the EMA weights instead of the raw ones")
    p.add_argument("--reparameterize", action="store_true", help="fold into the deploy structure first")
    p.add_argument("--no-head", action="store_true", help="drop the classifier (head.*)")
    p.add_argument("--trust-pickle", action="store_true", help="allow a full unpickle of CHECKPOINT (trusted files)")
    p.add_argument("--allow-download", action="store_true",
                   help="CHECKPOINT may be an http(s) URL: downloaded, then read like a local file")
    args = p.parse_args(argv)

    from swtasks.cliutil import run_tool
    from swtasks.cls.backbone_weights import export_backbone
    from swtasks.cls.errors import InputError

    def export(_) -> None:
        meta = export_backbone(
            args.checkpoint, args.output, ema=args.ema, reparameterize=args.reparameterize, drop_head=args.no_head,
            trust_pickle=args.trust_pickle, allow_download=args.allow_download,
        )
        print(
            f"wrote {args.output}: {meta['backbone']} ({'EMA' if meta['ema'] else 'raw'} weights, "
            f"{'deploy' if meta['deploy'] else 'training'} structure, epoch {meta['epoch']}, "
            f"{meta['folded_sparsity_masks']} sparsity masks folded); keys prefixed 'backbone.'"
        )

    return run_tool(export, prog="export_backbone.py", user_errors=(InputError,))

if __name__ == "__main__":
    sys.exit(main())
