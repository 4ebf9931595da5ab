"""Compatibility of mmengine 0.10.x with setuptools >= 81 (which no longer ships ``pkg_resources``).

mmengine resolves ``_base_ = 'mmdet::...'`` (configs inheriting from the ones inside the installed mmdet /
mmseg packages) with ``is_installed`` / ``get_installed_path``, which import ``pkg_resources``. Without it
every such config fails to load with ``ModuleNotFoundError: No module named 'pkg_resources'``. When (and
only when) ``pkg_resources`` is absent, :func:`patch_mmengine_package_utils` replaces those two functions
by equivalents built on :mod:`importlib.metadata` - in ``mmengine.utils.package_utils`` and wherever
mmengine imported them by name. With ``pkg_resources`` present nothing is changed.

Importing :mod:`swtasks.mm` applies it, so ``tools/{train,test}_{det,seg}.py`` and any code that imports
``swtasks.mm`` before ``Config.fromfile`` work either way. MMDetection's / MMSegmentation's own
``tools/train.py`` do not import swtasks before reading the config: use ``setuptools<81`` with those.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os.path as osp
import sys

__all__ = ["get_installed_path", "is_installed", "patch_mmengine_package_utils"]


def _distribution(package: str):
    try:
        return importlib.metadata.distribution(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def is_installed(package: str) -> bool:
    """Whether ``package`` is installed (a distribution of that name, or an importable module)."""
    if _distribution(package) is not None:
        return True
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return False
    return spec is not None and spec.origin is not None


def _module_name(dist, package: str) -> str:
    top = dist.read_text("top_level.txt")
    if top and top.split():
        return top.split()[0]
    return package.replace("-", "_")


def get_installed_path(package: str) -> str:
    """The directory of the installed package ``package`` (as mmengine's function of the same name)."""
    dist = _distribution(package)
    if dist is None:
        spec = importlib.util.find_spec(package)
        if spec is None:
            raise importlib.metadata.PackageNotFoundError(package)
        if spec.origin is None:
            raise RuntimeError(f"{package} is a namespace package, which is invalid for `get_install_path`")
        return osp.dirname(spec.origin)
    # the module directory: the name itself, else the distribution's top-level module
    for name in (package, _module_name(dist, package)):
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.origin is not None:
            return osp.dirname(spec.origin)
    location = str(dist.locate_file(""))
    return osp.join(location, _module_name(dist, package))


_PATCHED = False


def patch_mmengine_package_utils() -> bool:
    """Install the replacements when ``pkg_resources`` is missing; returns whether anything was patched."""
    global _PATCHED
    if _PATCHED:
        return True
    if importlib.util.find_spec("pkg_resources") is not None:
        return False
    import mmengine.utils.package_utils as pu

    pu.is_installed = is_installed
    pu.get_installed_path = get_installed_path
    # modules that imported the functions by name (`from mmengine.utils import is_installed`)
    import mmengine.config.config  # noqa: F401
    import mmengine.utils  # noqa: F401

    for modname in ("mmengine.utils", "mmengine.config.config", "mmengine.hub.hub"):
        mod = sys.modules.get(modname)
        if mod is None:
            continue
        for fn in (is_installed, get_installed_path):
            if hasattr(mod, fn.__name__):
                setattr(mod, fn.__name__, fn)
    _PATCHED = True
    return True
