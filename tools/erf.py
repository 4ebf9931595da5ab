#!/usr/bin/env python
"""Effective receptive fields of registry models: a heatmap PNG per model, a side-by-side figure, and the
high-contribution area ratios at thresholds 0.2/0.3/0.5/0.99 on the terminal and in DIR/erf.csv.

    tools/erf.py MODEL [MODEL ...] --out DIR [--checkpoint [MODEL=]PATH ...] [--images N] [--image-size N]
    tools/erf.py shiftwise_tiny unireplknet_t slak_t convnext_t --out erf/ --images 50 --image-size 1024
    tools/erf.py shiftwise_atto --out erf/ --data longrange --images 8 --image-size 256
    tools/erf.py shiftwise_tiny --out erf/ --checkpoint sw_tiny.pth --data /data/imagenet/val

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
    p.add_argument("models", nargs="+", help="registry names or fnmatch patterns")
    p.add_argument("--out", required=True, help="output folder (created)")
    p.add_argument("--checkpoint", action="append", default=[], metavar="[MODEL=]PATH",
                   help="weights for a model (repeatable); plain paths are matched to the models in order")
    p.add_argument("--images", type=int, default=50, help="images to aggregate (default 50, as the papers)")
    p.add_argument("--image-size", type=int, default=1024, help="input size (default 1024, as the papers)")
    p.add_argument("--data", default="noise", help="noise, an image folder, or an embedded dataset (longrange)")
    p.add_argument("--stage", type=int, default=3, help="stage whose centre output is used (default 3, the last)")
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


def main(argv=None) -> int:
    args = parse_args(argv)
    import numpy as np
    import torch

    from swtasks.analysis import erf
    from swtasks.analysis.errors import AnalysisInputNotFound
    from swtasks.analysis.select import resolve_models

    if args.threads:
        torch.set_num_threads(args.threads)
    models = resolve_models(args.models, torchvision=False)
    checkpoints = _checkpoints(args.checkpoint, models)
    if not args.no_plot:
        erf.check_plotting()
    source = args.data
    if source != "noise" and not Path(source).exists():
        from swtasks.cls import synthetic
        from swtasks.cls.experiments import procedural_images  # the embedded dataset (swtasks.cls)

        if args.data not in synthetic.DATASETS:
            raise AnalysisInputNotFound(f"--data {args.data!r} is neither 'noise', an existing image folder, nor "
                                        f"an embedded dataset ({', '.join(sorted(synthetic.DATASETS))})")
        source = procedural_images(args.data, split="val", seed=args.seed)
    results = erf.run_erf(
        models, images=args.images, image_size=args.image_size, source=source, checkpoints=checkpoints,
        stage=args.stage, batch_size=args.batch_size, device=args.device, seed=args.seed,
        overrides={**dict(args.overrides), "trust_pickle": args.trust_pickle, "allow_download": args.allow_download},
        show_progress=not args.no_progress,
    )  # fmt: skip
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for r in results:
        np.save(out / f"erf_{r.model}.npy", r.erf)
    erf.write_csv(results, out / "erf.csv")
    if not args.no_plot:
        erf.plot_erfs(results, out)
    print(erf.format_table(results))
    print(f"wrote {out / 'erf.csv'}" + ("" if args.no_plot else f" and heatmaps erf_<model>.png in {out}"))
    return 0


if __name__ == "__main__":
    from swtasks.cliutil import run_tool

    sys.exit(run_tool(main, prog="erf.py"))
