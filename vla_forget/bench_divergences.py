"""The divergences of a bench: the recorded state sets and the model passes over them.

:func:`compute_divergences` gives forward KL, reverse KL and TV of every token policy to the base on each
recorded state set (the base's target and battery episodes, and with ``--kl-states policy|both`` each
policy's own target episodes), every pass cached by content. :func:`state_sets` says which sets a bench
records; :func:`sample` and :func:`teacher_forced` are the two model passes. The estimator itself is
:mod:`vla_forget.divergences`; its exact meaning is in docs/metrics.md.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Dict, List, Tuple

import numpy as np
import torch

from vla_forget.cache import BaseOutputCache, content_key
from vla_forget.divergences import TV_MIN_ESS, reverse_on_policy_samples, summarize, token_divergences
from vla_forget.policies import load_policy
from vla_forget.policies.base import Observation, views_for
from vla_forget.states import load_states, phase_of
from vla_forget.video import slug

if TYPE_CHECKING:
    from vla_forget.bench import Plan, PolicyRef


@dataclass
class StateSet:
    """States recorded for the divergences: those of ``recorder``'s episodes on ``task``."""

    name: str  # "target" or "battery" (the base's episodes), "target_policy" (the policy's own)
    recorder: PolicyRef
    task: str
    seeds: List[int]
    states_dir: str
    wrist_camera: bool  # recorded with the wrist camera too (a policy measured on them reads it)


def state_sets(plan: Plan, out: str) -> List[StateSet]:
    """Every recorded state set of a bench: the base's on the target and battery tasks, and with ``kl_states``
    policy or both each token policy's own on the target task."""
    cfg = plan.config
    if not plan.base.has_distribution or cfg.kl_states_per_task <= 0:
        return []
    token = [r for r in plan.refs if r.has_distribution]
    sets: List[StateSet] = []
    target_task = plan.target.task.task if plan.target else None
    any_wrist = any(r.wrist_camera for r in token)
    for task, seeds, _ in plan.tasks():
        sets.append(StateSet("target" if task == target_task else "battery", plan.base, task, seeds,
                             os.path.join(out, "states"), any_wrist))
        if task == target_task and cfg.kl_states in ("policy", "both"):
            for r in token:
                if r.key != plan.base.key:
                    sets.append(StateSet("target_policy", r, task, seeds, os.path.join(out, "states-policy", slug(r.key, 80)),
                                         r.wrist_camera or plan.base.wrist_camera))
    return sets


def repeat(obs, k: int):
    return Observation(image=obs.image.repeat_interleave(k, 0), state=obs.state.repeat_interleave(k, 0),
                       instruction=[s for s in obs.instruction for _ in range(k)])


def sample(policy, obs, S: int, seed: int, batch_size: int, device: str):
    """``S`` token sequences per state sampled from ``policy`` (state-major), with its logits on them."""

    gen = torch.Generator(device=device).manual_seed(seed)
    toks, logits = [], []
    for i in range(0, obs.batch_size, batch_size):
        sub = repeat(views_for(policy, obs.index(slice(i, i + batch_size))), S).to(device)
        t, lg = policy.sample_tokens(sub, generator=gen)
        toks.append(t.cpu())
        logits.append(lg.float().cpu())
    return {"tokens": torch.cat(toks), "logits": torch.cat(logits)}


def teacher_forced(policy, obs, tokens, S: int, batch_size: int, device: str):
    """``policy``'s logits on ``tokens`` (``S`` per state, state-major)."""

    out = []
    with torch.no_grad():
        for i in range(0, obs.batch_size, batch_size):
            sub = repeat(views_for(policy, obs.index(slice(i, i + batch_size))), S).to(device)
            out.append(policy.action_logits(sub, tokens[i * S: i * S + sub.batch_size].to(device)).float().cpu())
    return torch.cat(out)


def load_state_set(plan: Plan, sets: List[StateSet]):
    """The recorded states of ``sets`` (one name) as one ``(Observation, meta)``; None when none are recorded."""

    parts = [load_states(s.states_dir, s.task, s.seeds, plan.config.kl_states_per_task) for s in sets]
    parts = [p for p in parts if p is not None]
    if not parts:
        return None
    obs = Observation(image=torch.cat([o.image for o, _ in parts]), state=torch.cat([o.state for o, _ in parts]),
                      instruction=[s for o, _ in parts for s in o.instruction])
    meta = {k: np.concatenate([m[k] for _, m in parts]) for k in parts[0][1]}
    return obs, meta


def compute_divergences(plan: Plan, out: str, cache=None, batch_size: int = 64) -> Dict[str, Any]:
    """Forward KL, reverse KL and TV of every token policy to the base, on each recorded state set.

    Model passes, each cached by content so that a resumed or repeated bench redoes none of them:
    the base samples ``kl_samples_per_state`` prefixes on each state set (its logits come with them);
    each policy is teacher-forced on them (forward KL, TV) and samples its own (reverse KL); the base is
    teacher-forced on the policy's samples. The policies' samples live in a scratch folder until the base
    has seen them; the reverse KL per sample is what is cached.
    """


    cfg = plan.config
    result: Dict[str, Any] = {
        "estimator": "chain rule, exact per token; forward KL and TV on prefixes sampled from the base, reverse KL "
                     "on prefixes sampled from the policy; temperature-1 distributions, nats",
        "state_rule": cfg.kl_state_rule, "kl_states": cfg.kl_states, "tv_min_ess": TV_MIN_ESS}
    if not plan.base.has_distribution:
        result["skipped"] = f"the base {plan.base.key} has no action distribution"
        return result
    cache = cache or BaseOutputCache()
    spec = state_sets(plan, out)
    # the state sets: (set name, recorder key) -> (Observation, meta, content key)
    groups: Dict[Tuple[str, str], List[StateSet]] = {}
    for ss in spec:
        groups.setdefault((ss.name, ss.recorder.key), []).append(ss)
    sets: Dict[Tuple[str, str], Tuple[Any, Dict[str, Any], str]] = {}
    for gk, members in groups.items():
        loaded = load_state_set(plan, members)
        if loaded is not None:
            obs, meta = loaded
            sets[gk] = (obs, meta, content_key("states-v2", cfg.kl_state_rule, obs.image, obs.state, obs.instruction,
                                               torch.from_numpy(meta["step"])))
    if not sets:
        result["skipped"] = "no recorded base states"
        return result
    result["n_states"] = {name if rec == plan.base.key else f"{name}:{rec}": o.batch_size
                          for (name, rec), (o, _, _) in sets.items()}
    others = [r for r in plan.refs if r.key != plan.base.key and r.has_distribution]
    if not others:
        result["skipped"] = "no policy besides the base has an action distribution"
        return result

    S = cfg.kl_samples_per_state
    base_key = lambda ck: content_key("base-outputs-v2", plan.base.hash, ck, S, cfg.seed)  # noqa: E731
    base_outputs: Dict[Tuple[str, str], Dict[str, torch.Tensor]] = {}
    counts = {"base_passes": 0, "policy_sample_passes": 0, "base_reverse_passes": 0}
    base = None
    for gk, (obs, _, ck) in sets.items():
        def compute(obs=obs):
            nonlocal base
            base = base if base is not None else load_policy(plan.base.spec, device=cfg.device).eval()
            counts["base_passes"] += 1
            return sample(base, obs, S, cfg.seed, batch_size, cfg.device)

        base_outputs[gk], _ = cache.get_or_compute(base_key(ck), compute)
    base = None  # free its memory before the policies load (OpenVLA-7B is 15 GB)

    def sets_of(ref: PolicyRef):
        return [(name, rec) for (name, rec) in sets if rec == plan.base.key or rec == ref.key]

    reverse_key = lambda ref, ck: content_key("reverse-v1", plan.base.hash, ref.hash, ck, S, cfg.seed)  # noqa: E731
    per_sample: Dict[Tuple[str, str, str], Dict[str, torch.Tensor]] = {}
    reverse: Dict[Tuple[str, str, str], Dict[str, torch.Tensor]] = {}
    with tempfile.TemporaryDirectory(prefix="vla-forget-samples-") as scratch:
        from safetensors.torch import load_file, save_file

        pending: List[Tuple[PolicyRef, Tuple[str, str], str]] = []
        for ref in others:
            pol = load_policy(ref.spec, device=cfg.device).eval()
            for gk in sets_of(ref):
                obs, _, ck = sets[gk]
                toks, bl = base_outputs[gk]["tokens"], base_outputs[gk]["logits"]
                per_sample[(ref.key, *gk)] = token_divergences(bl, teacher_forced(pol, obs, toks, S, batch_size, cfg.device), toks)
                hit = cache.load(reverse_key(ref, ck))
                if hit is not None:
                    reverse[(ref.key, *gk)] = hit
                    continue
                counts["policy_sample_passes"] += 1
                path = os.path.join(scratch, f"{len(pending)}.safetensors")
                save_file(sample(pol, obs, S, cfg.seed, batch_size, cfg.device), path)
                pending.append((ref, gk, path))
            del pol
        if pending:
            base = load_policy(plan.base.spec, device=cfg.device).eval()
            for ref, gk, path in pending:
                obs, _, ck = sets[gk]
                own = load_file(path)

                def compute(own=own, obs=obs):
                    counts["base_reverse_passes"] += 1
                    bl = teacher_forced(base, obs, own["tokens"], S, batch_size, cfg.device)
                    return reverse_on_policy_samples(own["logits"], bl)

                reverse[(ref.key, *gk)], _ = cache.get_or_compute(reverse_key(ref, ck), compute)
            base = None
    result.update(counts, cache_hits=cache.hits)

    per_policy: Dict[str, Any] = {}
    for ref in plan.refs:
        if ref.key == plan.base.key:
            continue
        if not ref.has_distribution:
            per_policy[ref.key] = None
            continue
        entry: Dict[str, Any] = {}
        for gk in sets_of(ref):
            obs, meta, _ = sets[gk]
            phases = None if (meta["step"] < 0).any() else phase_of(meta["step"], meta["length"]).tolist()
            entry[gk[0]] = summarize(per_sample[(ref.key, *gk)], S, reverse=reverse.get((ref.key, *gk)), phases=phases)
        per_policy[ref.key] = entry
    result["policies"] = per_policy
    return result
