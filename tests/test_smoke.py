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
