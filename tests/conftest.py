import os

import pytest

os.environ.setdefault("MS_SKIP_ASSET_DOWNLOAD_PROMPT", "1")


def _cuda_reason():
    try:
        import torch
    except ImportError:  # pragma: no cover
        return "torch is not installed"
    if not torch.cuda.is_available():
        return "needs CUDA (a GPU machine with the NVIDIA driver); this machine has none"
    return None


def pytest_collection_modifyitems(config, items):
    reason = None
    for item in items:
        if "gpu" in item.keywords:
            reason = reason or _cuda_reason()
            if reason:
                item.add_marker(pytest.mark.skip(reason=reason))
