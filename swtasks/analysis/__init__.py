"""Analysis tools (docs/analysis.md): complexity (parameters, MACs), effective receptive fields (erf),
throughput / latency / memory benchmark (benchmark) with a profiler breakdown (profile), the model-zoo table
(zoo), and their shared helpers (select: model arguments; progress: progress bars).

This floor sits below swtasks.cls: it imports torch, torchvision, numpy and swtasks.models, never lightning
(matplotlib and tqdm are optional and imported on use). Submodules are imported on use
(`from swtasks.analysis.benchmark import run_benchmark`), so importing this package costs nothing.
"""

__all__ = ["benchmark", "complexity", "erf", "profile", "progress", "select", "zoo"]
