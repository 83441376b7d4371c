"""Software and hardware versions recorded in every results file."""

from __future__ import annotations

import platform
import sys
from importlib import metadata
from typing import Dict

PACKAGES = ("vla-forget", "torch", "numpy", "mani-skill", "sapien", "gymnasium", "safetensors", "imageio",
            "tensorflow-datasets", "transformers", "tokenizers", "peft", "timm")


def software_versions() -> Dict[str, str]:
    out = {"python": sys.version.split()[0], "platform": platform.platform(), "machine": platform.machine()}
    for p in PACKAGES:
        try:
            out[p] = metadata.version(p)
        except metadata.PackageNotFoundError:
            pass
    try:
        import torch

        out["cuda"] = torch.version.cuda or "none"
        if torch.cuda.is_available():
            out["gpu"] = torch.cuda.get_device_name(0)
    except Exception:  # pragma: no cover - torch is a core dependency
        pass
    return out
