"""Shared pytest setup. Kept first: the Triton interpreter must be switched on before any kernel module
(rd3fast.kernels) is imported, and only where there is no CUDA device to run the compiled kernels."""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


# Without `pip install -e .` (the GPU machine runs the checkout with PYTHONPATH=.), the top-level kernels/
# folder is not importable as rd3fast.kernels: let the rd3fast package also search the repository root, so
# that `import rd3fast.kernels` finds ./kernels (benchmarks/gpu_check.sh additionally symlinks it).
import importlib.util  # noqa: E402
from pathlib import Path  # noqa: E402

import rd3fast  # noqa: E402  (imports no kernel module)

if importlib.util.find_spec("rd3fast.kernels") is None:
    rd3fast.__path__.append(str(Path(__file__).resolve().parents[1]))


def pytest_collection_modifyitems(config, items):  # noqa: ANN001 - pytest's hook signature
    """Tests marked ``serial`` (fault injection that kills processes, a local Ray cluster) share one xdist
    group: with ``-n auto --dist loadgroup`` (README, .ci/run) they run one after another in one worker, never
    two at once; without xdist the marker changes nothing."""
    import pytest

    for item in items:
        if item.get_closest_marker("serial") is not None:
            item.add_marker(pytest.mark.xdist_group("serial"))
