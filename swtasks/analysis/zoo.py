"""The model-zoo table: parameters, MACs, published top-1, measured speed relative to the baseline model of a
benchmark run, and the ERF area ratio, one row per registry model.

It joins what the other analysis tools write - `tools/benchmark.py --csv` (speed, measured interleaved in one
run, so the ratios hold) and `tools/erf.py` (DIR/erf.csv) - with parameters and MACs counted here
(swtasks.analysis.complexity). Published top-1: a family may record it in its pretrained_cfg as
`published_top1`; otherwise the ImageNet-1K numbers below (from the papers, as collected in docs/models.md)
are used. Missing inputs leave '-' in their columns.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence

from .errors import AnalysisError, AnalysisInputNotFound

__all__ = ["PUBLISHED_TOP1", "zoo_table"]

# ImageNet-1K top-1 at 224 px of the published models (the registry name of the variant that reproduces them).
PUBLISHED_TOP1 = {
    "shiftwise_tiny": 83.39,
    "unireplknet_a": 77.0,
    "unireplknet_f": 78.6,
    "unireplknet_p": 80.2,
    "unireplknet_n": 81.6,
    "unireplknet_t": 83.2,
    "unireplknet_s": 83.9,
    "slak_t": 82.5,
    "convnext_t": 82.1,
    # KernelWarehouse paper (its own ResNet/MobileNetV2 training recipe; the baselines are its re-trained ones)
    "kw_resnet18_1d4x": 72.73,
    "kw_resnet18_1d2x": 73.33,
    "kw_resnet18_1x": 74.77,
    "kw_resnet18_2x": 75.19,
    "kw_resnet18_4x": 76.05,
    "kw_resnet50_1x": 80.38,
    "kw_resnet50_4x": 81.05,
    "kw_mobilenetv2_100_1x": 74.68,
    "kw_mobilenetv2_100_4x": 75.92,
    "kw_convnext_t_1x": 82.51,
    "resnet18": 70.44,
    "resnet50": 78.44,
    "mobilenetv2_100": 72.04,
}


def _read_csv(path: str | os.PathLike | None) -> list[dict]:
    if not path:
        return []
    if not os.path.isfile(path):
        raise AnalysisInputNotFound(f"{path} does not exist or is not a file")
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _rel(rows: list[dict], model: str, structure: str, mode: str) -> str:
    for r in rows:
        if (r["model"], r["structure"], r["mode"]) == (model, structure, mode) and r.get("rel_to_baseline"):
            return f"{float(r['rel_to_baseline']):.2f}x"
    return "-"


def zoo_table(models: Sequence[str], benchmark_csv: str | os.PathLike | None = None,
              erf_csv: str | os.PathLike | None = None, erf_threshold: float = 0.2,
              image_size: int = 224) -> str:
    """The markdown table (see the module docstring)."""
    from swtasks.models import get_data_config

    from .complexity import measure
    from .progress import progress

    bench, erfs = _read_csv(benchmark_csv), {r["model"]: r for r in _read_csv(erf_csv)}
    baseline = next((r["baseline"] for r in bench if r.get("baseline")), "")
    col = f"t{erf_threshold}"
    if erfs and col not in next(iter(erfs.values())):
        raise AnalysisError(f"{erf_csv} has no column {col!r}")
    base = f" vs {baseline}" if baseline else ""
    head = ["model", "params (M)", f"GMACs @{image_size}", "published top-1", f"inference, deploy{base}",
            f"training step{base}", f"ERF area ratio (t={erf_threshold})"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name in progress(models, desc="zoo"):
        row = measure(name, input_size=image_size)
        top1 = get_data_config(name).get("published_top1", PUBLISHED_TOP1.get(name))
        erf = erfs.get(name, {}).get(col)
        lines.append("| " + " | ".join([
            name, f"{row.params / 1e6:.1f}", f"{row.macs / 1e9:.2f}", "-" if top1 is None else f"{top1:.2f}",
            _rel(bench, name, "deploy", "inference"), _rel(bench, name, "train", "train_step"),
            "-" if erf is None else f"{float(erf):.3f}",
        ]) + " |")  # fmt: skip
    return "\n".join(lines)
