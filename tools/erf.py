#!/usr/bin/env python
"""Effective receptive fields of any model and any layer: a heatmap PNG per model, a side-by-side figure, and
the high-contribution area ratios at thresholds 0.2/0.3/0.5/0.99 on the terminal and in DIR/erf.csv.

    tools/erf.py MODEL [MODEL ...] --out DIR [--checkpoint [MODEL=]PATH ...] [--images N] [--image-size N|HxW]
                 [--layer MODULE] [--stage N] [--mm-part auto|backbone|neck]
    tools/erf.py shiftwise_tiny unireplknet_t slak_t convnext_t --out erf/ --images 50 --image-size 1024
    tools/erf.py shiftwise_atto --out erf/ --data longrange --images 8 --image-size 256
    tools/erf.py shiftwise_tiny --out erf/ --checkpoint sw_tiny.pth --data /data/imagenet/val
    tools/erf.py torchvision:convnext_tiny torchvision:convnext_tiny+sw51 --out erf/ --image-size 224
    tools/erf.py configs/det/mask-rcnn_shiftwise-tiny_fpn_1x_coco.py --checkpoint det.pth --image-size 512x768 \
        --layer neck.fpn_convs.0 --out erf/

MODEL: a registry name or fnmatch pattern (the output of backbone stage --stage, default 3), torchvision:NAME or
timm:NAME (+swK: converted to K x K shift-wise kernels, swtasks.layers.to_shiftwise; the last feature map
before global pooling), or an MMDetection/MMSegmentation config .py (the neck's outputs, or the backbone's
with --mm-part backbone; the last output unless --stage picks one). --layer MODULE measures the output of that
named module of every model instead (e.g. stages.2, features.5, neck.fpn_convs.0).

--data: 'noise' (default), an image folder (searched recursively), or an embedded dataset ('longrange');
random weights unless a checkpoint is given. Method: docs/analysis.md ("ERF").
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # idle OpenMP threads sleep: shared CPUs (tools/train_cls.py)


def parse_args(argv=None) -> argparse.Namespace:
    from swtasks.cliutil import add_override_option

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("models", nargs="+", help="registry names, fnmatch patterns, torchvision:NAME / timm:NAME [+swK], "
                   "or MMDetection/MMSegmentation config files (.py)")
    p.add_argument("--out", required=True, help="output folder (created)")
    p.add_argument("--checkpoint", action="append", default=[], metavar="[MODEL=]PATH",
                   help="weights for a model (repeatable); plain paths are matched to the models in order")
    p.add_argument("--images", type=int, default=50, help="images to aggregate (default 50, as the papers)")
    p.add_argument("--image-size", default="1024", help="input size N or HxW (default 1024, as the papers)")
    p.add_argument("--data", default="noise", help="noise, an image folder, or an embedded dataset (longrange)")
    p.add_argument("--stage", type=int, default=None,
                   help="registry models: stage whose centre output is used (default 3, the last); mm configs: "
                        "which of the outputs (default the last)")
    p.add_argument("--layer", default=None, metavar="MODULE",
                   help="measure the output of this named module (e.g. stages.2, neck.fpn_convs.0)")
    p.add_argument("--mm-part", choices=("auto", "backbone", "neck"), default="auto",
                   help="mm configs: the backbone's or the backbone+neck's outputs (auto: the neck if any)")
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--seed", type=int, default=0, help="noise seed")
    p.add_argument("--no-plot", action="store_true", help="write only erf.csv and the raw maps (no matplotlib)")
    p.add_argument("--no-progress", action="store_true")
    add_override_option(p, help="create_model override for every model (repeatable)")
    p.add_argument("--trust-pickle", action="store_true", help="allow a full unpickle of the checkpoints (trusted files)")
    p.add_argument("--allow-download", action="store_true",
                   help="a checkpoint may be an http(s) URL: downloaded, then read like a local file")
    return p.parse_args(argv)


def _checkpoints(specs: list[str], models: list[str]) -> dict[str, str]:
    from swtasks.analysis.errors import AnalysisError

    named = dict(s.split("=", 1) for s in specs if "=" in s and s.split("=", 1)[0] in models)
    plain = [s for s in specs if not ("=" in s and s.split("=", 1)[0] in models)]
    if plain and (named or len(plain) != len(models)):
        raise AnalysisError(f"{len(plain)} plain --checkpoint path(s) for {len(models)} model(s): give one per "
                            "model in order, or MODEL=PATH")
    return {**dict(zip(models, plain)), **named}


def _mm_entry(config: str, checkpoint: str | None, args: argparse.Namespace):
    """(label, extractor) of an MMDetection / MMSegmentation config: built by swtasks.mm (the mm extra)."""
    from swtasks.analysis.errors import MissingPackageError

    try:
        from swtasks.mm.erf import mm_extractor
    except ImportError as e:
        raise MissingPackageError(f"an MMDetection/MMSegmentation config needs the mm extra ({e.name} is missing): "
                                  "pip install 'swtasks[det]' or 'swtasks[seg]'") from None
    extractor = mm_extractor(config, checkpoint, part=args.mm_part, layer=args.layer, index=args.stage,
                             trust_pickle=args.trust_pickle, allow_download=args.allow_download)
    return Path(config).stem, extractor


def main(argv=None) -> int:
    args = parse_args(argv)
    from swtasks.cliutil import torch_threads

    with torch_threads(args.threads):
        return _run(args)


def _run(args) -> int:
    import numpy as np

    from swtasks.analysis import erf
    from swtasks.analysis.errors import AnalysisError, AnalysisInputNotFound
    from swtasks.analysis.select import resolve_models

    models: list[str] = []
    for m in args.models:  # in the order given: mm configs as they are, the rest through the registry's names
        models += [n for n in ([m] if erf.is_mm_config(m) else resolve_models([m])) if n not in models]
    checkpoints = _checkpoints(args.checkpoint, [Path(m).stem if erf.is_mm_config(m) else m for m in models])
    image_size = erf.parse_image_size(args.image_size)
    if not args.no_plot:
        erf.check_plotting()
    source = args.data
    if source != "noise" and not Path(source).exists():
        from swtasks.cls import synthetic
        from swtasks.cls.experiments import procedural_images  # the embedded dataset (swtasks.cls)

        if args.data not in synthetic.DATASETS:
            raise AnalysisInputNotFound(f"--data {args.data!r} is neither 'noise', an existing image folder, nor "
                                        f"an embedded dataset ({', '.join(sorted(synthetic.DATASETS))})")
        if not isinstance(image_size, int):
            raise AnalysisError(f"--data {args.data}: the embedded dataset makes square images; give --image-size N")
        source = procedural_images(args.data, split="val", seed=args.seed)
    trust = {"trust_pickle": args.trust_pickle, "allow_download": args.allow_download}
    entries = [_mm_entry(m, checkpoints.pop(Path(m).stem, None), args) if erf.is_mm_config(m) else m for m in models]
    results = erf.run_erf(
        entries, images=args.images, image_size=image_size, source=source, checkpoints=checkpoints,
        stage=args.stage, batch_size=args.batch_size, device=args.device, seed=args.seed, layer=args.layer,
        overrides={**dict(args.overrides), **trust},
        show_progress=not args.no_progress,
    )  # fmt: skip
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for r in results:
        np.save(out / f"erf_{erf.file_stem(r.model)}.npy", r.erf)
    erf.write_csv(results, out / "erf.csv")
    if not args.no_plot:
        erf.plot_erfs(results, out)
    print(erf.format_table(results))
    print(f"wrote {out / 'erf.csv'}" + ("" if args.no_plot else f" and heatmaps erf_<model>.png in {out}"))
    return 0


if __name__ == "__main__":
    from swtasks.cliutil import run_tool

    sys.exit(run_tool(main, prog="erf.py"))
