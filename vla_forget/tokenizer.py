"""OpenVLA's action tokenizer and BOUNDS_Q99 normalisation: the one implementation.

Conventions (OpenVLA ``prismatic/vla/action_tokenizer.py`` and
``prismatic/vla/datasets/rlds/utils/data_utils.py``):

* normalisation ``a_n = 2 (a - q01) / (q99 - q01) - 1`` clipped to [-1, 1] on the
  dimensions whose ``mask`` is true; masked-out dimensions (the gripper) are
  passed through (clipped to [-1, 1] before binning, as OpenVLA does);
  a dimension whose ``q01 == q99`` (a constant action) normalises to 0 and
  un-normalises to q01;
* 256 uniform bin edges over [-1, 1]: ``bins = linspace(-1, 1, 256)``;
  ``d = digitize(a_n, bins)`` is in 1..256 and the language-model token id is
  ``vocab_size - d``. This module calls ``b = d - 1`` (0..255) the *bin index*;
  every policy speaks bin indices, and the OpenVLA adapter maps them to the
  last 256 vocabulary ids with :meth:`ActionTokenizer.bins_to_token_ids`;
* decoding returns the centre of the bin: ``centres[min(b, 254)]`` with
  ``centres = (bins[:-1] + bins[1:]) / 2`` (255 centres; the 256th bin only
  holds a_n == 1 exactly and decodes to the last centre, as in OpenVLA).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Union

import numpy as np

from vla_forget.errors import VlaForgetError

N_BINS = 256
ACTION_DIM = 7
ACTION_NAMES = ("dx", "dy", "dz", "droll", "dpitch", "dyaw", "gripper")
STATS_FILENAME = "dataset_statistics.json"

ArrayLike = Union[np.ndarray, Sequence[float]]


class StatisticsError(VlaForgetError, ValueError):
    """Dataset statistics that are missing, malformed or of the wrong shape."""


@dataclass
class ActionStatistics:
    """Per-dimension statistics of the action, as OpenVLA stores them."""

    q01: np.ndarray
    q99: np.ndarray
    mask: np.ndarray
    mean: Optional[np.ndarray] = None
    std: Optional[np.ndarray] = None
    min: Optional[np.ndarray] = None
    max: Optional[np.ndarray] = None

    def __post_init__(self) -> None:
        self.q01 = np.asarray(self.q01, dtype=np.float64)
        self.q99 = np.asarray(self.q99, dtype=np.float64)
        self.mask = np.asarray(self.mask, dtype=bool)
        for name in ("mean", "std", "min", "max"):
            v = getattr(self, name)
            if v is not None:
                setattr(self, name, np.asarray(v, dtype=np.float64))
        dims = {self.q01.shape, self.q99.shape, self.mask.shape}
        if len(dims) != 1 or self.q01.ndim != 1:
            raise StatisticsError(
                f"action statistics have inconsistent shapes: q01 {self.q01.shape}, q99 {self.q99.shape}, mask {self.mask.shape}"
            )
        if np.any(self.q99 < self.q01):
            bad = np.nonzero(self.q99 < self.q01)[0].tolist()
            raise StatisticsError(f"action statistics have q99 < q01 in dimensions {bad}")

    @property
    def dim(self) -> int:
        return int(self.q01.shape[0])

    @classmethod
    def from_actions(cls, actions: np.ndarray, mask: Optional[ArrayLike] = None) -> "ActionStatistics":
        """Statistics of an ``[N, D]`` array of actions (OpenVLA's defaults: gripper, the last dim, unmasked)."""
        a = np.asarray(actions, dtype=np.float64)
        if a.ndim != 2 or a.shape[0] == 0:
            raise StatisticsError(f"need a non-empty [N, D] array of actions, got shape {a.shape}")
        if mask is None:
            mask = np.ones(a.shape[1], dtype=bool)
            mask[-1] = False
        return cls(
            q01=np.quantile(a, 0.01, axis=0),
            q99=np.quantile(a, 0.99, axis=0),
            mask=np.asarray(mask, dtype=bool),
            mean=a.mean(0),
            std=a.std(0),
            min=a.min(0),
            max=a.max(0),
        )

    def to_dict(self) -> Dict[str, List[float]]:
        out: Dict[str, Any] = {}
        for name in ("mean", "std", "max", "min", "q01", "q99"):
            v = getattr(self, name)
            if v is not None:
                out[name] = [float(x) for x in v]
        out["mask"] = [bool(x) for x in self.mask]
        return out

    @classmethod
    def from_dict(cls, d: Dict[str, Any], where: str = "statistics") -> "ActionStatistics":
        missing = [k for k in ("q01", "q99") if k not in d]
        if missing:
            raise StatisticsError(f"{where}: action statistics lack {', '.join(missing)}")
        mask = d.get("mask", [True] * (len(d["q01"]) - 1) + [False])
        return cls(
            q01=d["q01"], q99=d["q99"], mask=mask,
            mean=d.get("mean"), std=d.get("std"), min=d.get("min"), max=d.get("max"),
        )


def load_dataset_statistics(path: str) -> Dict[str, Dict[str, Any]]:
    """Read a ``dataset_statistics.json`` (``{unnorm_key: {"action": {...}, ...}}``)."""
    if os.path.isdir(path):
        path = os.path.join(path, STATS_FILENAME)
    if not os.path.exists(path):
        raise StatisticsError(f"missing dataset statistics: {path} does not exist")
    try:
        with open(path) as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise StatisticsError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(data, dict) or not data:
        raise StatisticsError(f"{path}: expected a non-empty object of {{unnorm_key: statistics}}")
    return data


def select_statistics(all_stats: Dict[str, Dict[str, Any]], unnorm_key: Optional[str], where: str = "statistics") -> ActionStatistics:
    """Pick the statistics of one dataset by ``unnorm_key`` (OpenVLA's rule: optional only if there is one)."""
    keys = sorted(all_stats)
    if unnorm_key is None:
        if len(keys) != 1:
            raise StatisticsError(f"{where} hold several datasets; choose an unnorm_key from: {', '.join(keys)}")
        unnorm_key = keys[0]
    if unnorm_key not in all_stats:
        raise StatisticsError(f"unknown unnorm_key {unnorm_key!r} in {where}; available keys: {', '.join(keys)}")
    entry = all_stats[unnorm_key]
    if "action" not in entry:
        raise StatisticsError(f"{where}: entry {unnorm_key!r} has no 'action' statistics")
    return ActionStatistics.from_dict(entry["action"], where=f"{where}[{unnorm_key!r}]")


class ActionTokenizer:
    """Continuous 7-D actions <-> 7 bin indices in 0..255, OpenVLA's exact scheme."""

    n_bins = N_BINS

    def __init__(self, stats: Optional[ActionStatistics] = None, n_bins: int = N_BINS):
        self.n_bins = n_bins
        self.bins = np.linspace(-1.0, 1.0, n_bins)
        self.centres = (self.bins[:-1] + self.bins[1:]) / 2.0
        self.stats = stats

    # --- normalisation --------------------------------------------------
    def normalize(self, actions: ArrayLike) -> np.ndarray:
        a = np.asarray(actions, dtype=np.float64)
        if self.stats is None:
            return np.clip(a, -1.0, 1.0)
        s = self.stats
        if a.shape[-1] != s.dim:
            raise ValueError(f"actions have {a.shape[-1]} dimensions, statistics have {s.dim}")
        rng = s.q99 - s.q01
        safe = np.where(rng > 1e-8, rng, 1.0)
        n = np.where(rng > 1e-8, 2.0 * (a - s.q01) / safe - 1.0, 0.0)
        n = np.clip(n, -1.0, 1.0)
        return np.where(s.mask, n, np.clip(a, -1.0, 1.0))

    def unnormalize(self, normalized: ArrayLike) -> np.ndarray:
        n = np.asarray(normalized, dtype=np.float64)
        if self.stats is None:
            return n
        s = self.stats
        if n.shape[-1] != s.dim:
            raise ValueError(f"actions have {n.shape[-1]} dimensions, statistics have {s.dim}")
        a = 0.5 * (n + 1.0) * (s.q99 - s.q01) + s.q01
        return np.where(s.mask, a, n)

    # --- binning --------------------------------------------------------
    def bin_normalized(self, normalized: ArrayLike) -> np.ndarray:
        n = np.clip(np.asarray(normalized, dtype=np.float64), -1.0, 1.0)
        return (np.digitize(n, self.bins) - 1).astype(np.int64)

    def debin(self, bins: ArrayLike) -> np.ndarray:
        b = np.clip(np.asarray(bins, dtype=np.int64), 0, self.n_bins - 2)
        return self.centres[b]

    def encode(self, actions: ArrayLike) -> np.ndarray:
        """Continuous actions ``[..., 7]`` -> bin indices ``[..., 7]`` in 0..255."""
        return self.bin_normalized(self.normalize(actions))

    def decode(self, bins: ArrayLike) -> np.ndarray:
        """Bin indices ``[..., 7]`` -> continuous actions ``[..., 7]`` (bin centres, un-normalised)."""
        return self.unnormalize(self.debin(bins))

    # --- OpenVLA vocabulary ids ----------------------------------------
    def bins_to_token_ids(self, bins: ArrayLike, vocab_size: int) -> np.ndarray:
        """Bin index b (0..255) -> language-model token id ``vocab_size - (b + 1)``."""
        return vocab_size - (np.asarray(bins, dtype=np.int64) + 1)

    def token_ids_to_bins(self, token_ids: ArrayLike, vocab_size: int) -> np.ndarray:
        b = vocab_size - np.asarray(token_ids, dtype=np.int64) - 1
        if np.any((b < 0) | (b >= self.n_bins)):
            raise ValueError(f"token ids outside the last {self.n_bins} ids of a vocabulary of {vocab_size}")
        return b
