"""Analysis tools: complexity (parameters, FLOPs); more (receptive field, throughput) live beside it.

Submodules are imported on use (`from swtasks.analysis.complexity import measure`), so importing this
package costs nothing.
"""

__all__ = ["complexity"]
