"""The installed stack: every dependency imports, at the versions the project was measured with."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest
from packaging.version import Version

# (module, minimum, maximum-exclusive) - ranges, matching pyproject.toml
STACK = [
    ("torch", "2.4", "2.15"),
    ("torchvision", "0.19", "0.30"),
    ("triton", "3.0", "4.0"),
    ("lightning", "2.4", "2.7"),
    ("torchmetrics", "1.4", None),
    ("mmengine", "0.10.7", "0.11"),
    ("mmcv", "2.0.0rc4", "2.2.0"),
    ("mmdet", "3.3.0", "3.4"),
    ("mmseg", "1.2.2", "1.3"),
    ("pycocotools", None, None),
]


@pytest.mark.parametrize(("module", "low", "high"), STACK, ids=[s[0] for s in STACK])
def test_dependency_imports_with_supported_version(module, low, high):
    mod = importlib.import_module(module)
    if module == "pycocotools":
        from pycocotools.coco import COCO  # noqa: F401
        from pycocotools.cocoeval import COCOeval  # noqa: F401

        return
    version = Version(mod.__version__.split("+")[0])
    if low is not None:
        assert version >= Version(low), f"{module} {version} is older than {low}"
    if high is not None:
        assert version < Version(high), f"{module} {version} is not below {high}"


def test_compiled_and_framework_modules_import():
    import mmdet.models  # noqa: F401
    import mmseg.models  # noqa: F401
    from mmcv.ops import RoIAlign, nms  # compiled ops: proves the source build worked

    assert callable(nms) and RoIAlign is not None


def test_package_version_and_cheap_import():
    import swtasks

    assert Version(swtasks.__version__) >= Version("0.1.0")
    # `import swtasks` must not pull in the heavy frameworks (DESIGN.md).
    code = (
        "import sys, swtasks; heavy = [m for m in ('lightning', 'mmdet', 'mmseg', 'mmengine', 'triton') "
        "if m in sys.modules]; print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"import swtasks imported {out.stdout.strip()}"


def test_core_works_without_the_optional_frameworks(tmp_path):
    """The core install (torch, torchvision, numpy, triton) is enough for the registry, the operator,
    checkpoints and verified re-parameterisation: run them in a process where lightning, torchmetrics
    and every mm* package cannot be imported at all."""
    code = f"""
import importlib.abc, sys
BLOCKED = ("lightning", "pytorch_lightning", "torchmetrics", "mmengine", "mmcv", "mmdet", "mmseg", "pycocotools")
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"{{name}} is not installed (blocked by the test)")
        return None
sys.meta_path.insert(0, Block())
import torch, swtasks
from swtasks.checkpoint import save_weights
from swtasks.models.deploy import reparameterize_verified
m = swtasks.create_model("shiftwise_atto", num_classes=3, depths=(1, 1, 1, 1))
y = m(torch.randn(1, 3, 64, 64))
save_weights({str(tmp_path / "w.pth")!r}, m.state_dict(), {{"num_classes": 3}})
m2 = swtasks.create_model("shiftwise_atto", num_classes=3, depths=(1, 1, 1, 1), checkpoint_path={str(tmp_path / "w.pth")!r})
print(tuple(y.shape), reparameterize_verified(m2.eval())["relative_error"] < 1e-4)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["(1,", "3)", "True"], out.stdout
