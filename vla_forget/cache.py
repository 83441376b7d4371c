"""Content-addressed cache of the model passes of the divergences on a recorded state set.

The key hashes the base checkpoint, the exact states (images, proprio,
instructions) and the sampling settings, so benching N checkpoints against
one base costs one base-side pass (sampling the token prefixes, which also
yields the base's teacher-forced logits) plus N policy passes, not 2N; a
second bench of the same base on the same states costs no base pass at all.
The reverse KL of each policy (its own samples, the base teacher-forced on
them) is cached the same way, keyed by both checkpoints.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Callable, Dict, Optional, Tuple

import torch


def cache_home() -> str:
    return os.environ.get("VLA_FORGET_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "vla-forget")


def content_key(*parts: object) -> str:
    h = hashlib.sha256()
    for p in parts:
        if isinstance(p, torch.Tensor):
            t = p.detach().cpu().contiguous()
            h.update(str((tuple(t.shape), str(t.dtype))).encode())
            h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        else:
            h.update(json.dumps(p, sort_keys=True, default=str).encode())
        h.update(b"|")
    return h.hexdigest()[:32]


class BaseOutputCache:
    """Tensors by content key, stored as safetensors files in ``root``."""

    def __init__(self, root: str | None = None):
        self.root = root or os.path.join(cache_home(), "base-outputs")
        self.hits = 0
        self.misses = 0

    def path(self, key: str) -> str:
        return os.path.join(self.root, f"{key}.safetensors")

    def load(self, key: str) -> Optional[Dict[str, torch.Tensor]]:
        """The stored tensors of ``key`` (counted as a hit), or None; a torn file is removed."""
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        path = self.path(key)
        if not os.path.exists(path):
            return None
        try:
            out = load_file(path)
        except (SafetensorError, OSError):
            os.remove(path)  # a torn write from an interrupted run: recompute
            return None
        self.hits += 1
        return out

    def get_or_compute(self, key: str, compute: Callable[[], Dict[str, torch.Tensor]]) -> Tuple[Dict[str, torch.Tensor], bool]:
        from safetensors.torch import save_file

        out = self.load(key)
        if out is not None:
            return out, True
        path = self.path(key)
        out = compute()
        os.makedirs(self.root, exist_ok=True)
        tmp = f"{path}.{os.getpid()}.tmp"
        save_file({k: v.detach().cpu().contiguous() for k, v in out.items()}, tmp)
        os.replace(tmp, path)
        self.misses += 1
        return out, False
