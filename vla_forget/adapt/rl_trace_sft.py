"""SFT on RL traces (*Retaining by Doing*): supervised training on the successful rollouts an RL run saved.

An RL run (``ppo``, ``reinforce``, ``grpo``) keeps its successful episodes in
``RUN/traces/update-NNNNNN/``: RLDS datasets, one per checkpoint interval,
whose actions are the RL policy's sampled tokens decoded (they re-encode to
the same tokens). This method trains the base on them with the SFT loop of
:mod:`vla_forget.adapt.sft` — token cross-entropy, one AdamW step per update —
from the traces of every update, or of updates ``<= traces_until`` only
(``--traces-until``), so that the data match a chosen RL checkpoint.
"""

from __future__ import annotations

import json
import os
from typing import Any, Dict, Optional

from vla_forget.adapt import RL_METHODS, sft
from vla_forget.adapt.common import RUN_JSON, AdaptError, resolve
from vla_forget.adapt.configs import RLTraceSFTConfig
from vla_forget.adapt.rollouts import trace_datasets


def train(cfg: RLTraceSFTConfig, *, resume: bool = False, stop_at: Optional[int] = None) -> Dict[str, Any]:
    """SFT of ``cfg.base`` on the successful traces of the RL run ``cfg.traces``."""
    cfg = resolve(cfg)
    source = cfg.traces
    path = os.path.join(source, RUN_JSON)
    if not os.path.exists(path):
        raise AdaptError(f"--traces {source}: not an adaptation run folder ({RUN_JSON} is missing)")
    with open(path) as f:
        info = json.load(f)
    if info.get("method") not in RL_METHODS:
        raise AdaptError(f"--traces {source} is a {info.get('method')!r} run; traces come from RL runs "
                         f"({', '.join(RL_METHODS)})")
    data = trace_datasets(source, cfg.traces_until)
    if not data:
        until = "" if cfg.traces_until is None else f" up to update {cfg.traces_until}"
        raise AdaptError(f"--traces {source} holds no successful rollouts{until} (RUN/traces/update-NNNNNN/ are "
                         "written at the RL run's checkpoints when its rollouts succeed)")
    return sft.train(cfg, resume=resume, stop_at=stop_at, data=data, data_option="--traces")
