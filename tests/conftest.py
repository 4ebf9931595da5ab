"""Test-suite configuration shared by every test file.

- Without a CUDA device the Triton kernels run under the Triton interpreter (TRITON_INTERPRET=1), which must
  be set before any module that defines @triton.jit kernels is imported: this file is imported first.
- OMP_WAIT_POLICY=PASSIVE (see below).
- `gpu` tests are skipped without CUDA; `slow` tests run unless `-m "not slow"` is given.
- Shared fixtures (`folder`, `seed`) live here; shared functions in tests/helpers.py.
"""

from __future__ import annotations

import os

# Idle OpenMP threads sleep instead of spinning: on a small, shared machine spinning makes every tiny op
# wait for a core (a 2-thread BatchNorm on a toy tensor took 35 ms instead of 0.2 ms under load).
# Must be set before torch (and its OpenMP runtime) is loaded.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest  # noqa: E402
import torch  # noqa: E402

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# Keep the 2-core CI machine responsive and results reproducible.
THREADS = min(2, os.cpu_count() or 1)
torch.set_num_threads(THREADS)


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture(autouse=True)
def _thread_count_unchanged():
    """Every test must leave the suite's thread count (set above) as it found it; after one that changed it the
    count is restored, so the next test starts right. A tool's main() that set ``--threads`` in-process and did
    not restore it changed later tests' floating-point sums (a bitwise resume test compared a 1-thread run with
    a 2-thread one)."""
    yield
    after = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    assert after == THREADS, f"the test left torch on {after} threads (the suite runs on {THREADS})"


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """A tiny image folder (3 classes, 6 training and 3 validation images each, 32 px) for the CLI tests."""
    from swtasks.cls.synthetic import write_image_folder

    root = tmp_path_factory.mktemp("cli") / "data"
    return write_image_folder(str(root), num_classes=3, train_per_class=6, val_per_class=3, image_size=32)


@pytest.fixture
def seed():
    torch.manual_seed(0)
    return 0
