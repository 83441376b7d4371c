"""A bench's analysis: pure functions from its episodes (``episodes.jsonl``) and divergences to its results
(``results.json``), whose schema is :class:`Results` (versioned by :data:`RESULTS_FORMAT`).

``vla-forget analyze OUT`` rebuilds a finished bench's results, report and plots through these functions
without rolling anything out; ``tests/golden/bench-results.json`` pins their output on a small deterministic
bench. A new metric is a function (in :mod:`vla_forget.metrics` or :mod:`vla_forget.divergences`), its field
in :class:`Results`, and the line of :func:`aggregate` that fills it.
"""

from __future__ import annotations

import json
import math
import os
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Tuple, TypedDict

from vla_forget import law, metrics
from vla_forget.divergences import TV_MIN_ESS
from vla_forget.envs.lowpoly import task_visual_assets
from vla_forget.versions import software_versions

if TYPE_CHECKING:
    from vla_forget.bench import Plan

#: the version of the :class:`Results` schema (raised when a field changes meaning or goes)
RESULTS_FORMAT = 1


class Results(TypedDict, total=False):
    """The schema of ``results.json``. Per-policy maps are keyed by the policy's id in the bench (a checkpoint:
    ``RUN@update-NNNNNN``); rates are fractions, forgetting and gain fractions of the battery's or target's
    success (points / 100), divergences nats."""

    format: int
    """:data:`RESULTS_FORMAT`"""
    battery: Dict[str, Any]
    """id, name, version, tasks, content hash of the battery spec"""
    target: Optional[Dict[str, Any]]
    """id, task, version of the target (None: no target)"""
    visual_assets: Dict[str, Any]
    """the low-poly mesh set the v2 tasks drew (name, hash, ground)"""
    base: str
    policies: List[Dict[str, Any]]
    """id, checkpoint hash, kind and role of each policy"""
    seeds: Dict[str, List[int]]
    """the seeds of each task"""
    protocol: Dict[str, Any]
    """decoding, image size, state rule and counts: what makes two benches comparable"""
    software: Dict[str, Any]
    success: Dict[str, Dict[str, Dict[str, Any]]]
    """policy -> task -> success at the end of the episode (rate, n, Wilson interval)"""
    success_once: Dict[str, Dict[str, Dict[str, Any]]]
    """policy -> task -> success at any step"""
    battery_mean_success: Dict[str, float]
    forgetting: Dict[str, Optional[float]]
    """policy -> base's battery mean minus the policy's"""
    forgetting_detail: Dict[str, Dict[str, Any]]
    """... with its interval from the episode outcomes (paired by seed)"""
    forgetting_once: Dict[str, Optional[float]]
    gain: Dict[str, Optional[float]]
    """policy -> its target success minus the base's"""
    gain_detail: Dict[str, Dict[str, Any]]
    gain_once: Dict[str, Optional[float]]
    kl_to_base: Dict[str, Optional[Dict[str, Any]]]
    """policy -> forward and reverse KL and TV to the base on the main state set, each with its standard error
    (TV with its effective sample size, None where unreliable), every state set under ``detail``"""
    divergences: Dict[str, Any]
    """the full divergence computation (state sets, phases, settings)"""
    episodes: int
    wall_s: float
    checkpoints: List[Dict[str, Any]]
    """with --checkpoints: one row per checkpoint (run, method, update, its figures)"""
    across_seeds: List[Dict[str, Any]]
    """with --checkpoints: the checkpoints that differ only by seed, with their spread"""
    law: Dict[str, Any]
    """the forgetting law fits (pooled, by method, per predictor)"""
    matched: List[Dict[str, Any]]
    """forgetting of two methods at matched target success"""


def aggregate(plan: "Plan", records: List[Dict[str, Any]], divergences: Dict[str, Any], wall_s: float) -> Results:
    """``results.json`` (:class:`Results`) of a bench: its ``plan``, its episode ``records`` and the ``divergences``
    that :func:`vla_forget.bench.compute_divergences` computed; nothing is rolled out or read."""
    wanted = {(r.key, t, s) for r in plan.refs for t, seeds, _ in plan.tasks() for s in seeds}
    recs = [r for r in records if (r["policy"], r["task"], r["seed"]) in wanted]
    at_end = metrics.count_rates(recs, "success_at_end")
    once = metrics.count_rates(recs, "success_once")
    by_policy: Dict[str, List[Dict[str, Any]]] = {}
    for r in recs:
        by_policy.setdefault(r["policy"], []).append(r)
    base = plan.base.key
    battery_tasks = plan.battery.task_ids
    target_task = plan.target.task.task if plan.target else None

    def table(rates):
        return {p: {t: r.to_dict() for t, r in sorted(tasks.items())} for p, tasks in rates.items()}

    forgetting, forgetting_once, gain, gain_once, kl = {}, {}, {}, {}, {}
    for ref in plan.refs:
        p = ref.key
        forgetting[p] = metrics.forgetting_from_episodes(by_policy.get(base, []), by_policy.get(p, []), battery_tasks)
        forgetting_once[p] = metrics.forgetting_from_episodes(by_policy.get(base, []), by_policy.get(p, []), battery_tasks,
                                                              key="success_once")
        if target_task:
            gain[p] = metrics.gain(at_end.get(base, {}).get(target_task), at_end.get(p, {}).get(target_task))
            gain_once[p] = metrics.gain(once.get(base, {}).get(target_task), once.get(p, {}).get(target_task))
        dv = (divergences.get("policies") or {}).get(p)
        if p == base:
            kl[p] = {"forward": 0.0, "reverse": 0.0, "tv": 0.0, "n_states": divergences.get("n_states", {}).get("target", 0), "note": "base"}
        else:
            kl[p] = kl_entry(dv, plan.config.kl_states) if dv else None
    battery_mean = {p: (sum(tasks[t].rate for t in battery_tasks if t in tasks) / max(1, sum(t in tasks for t in battery_tasks)))
                    for p, tasks in at_end.items()}
    rows = {r.key: _policy_row(r.key, at_end, battery_mean, forgetting, gain, kl, target_task) for r in plan.refs}
    checkpoints = [{**{k: c[k] for k in ("key", "run", "method", "update", "env_steps", "samples_seen", "wall_time_s",
                                         "policy", "checkpoint_hash", "path")},
                    "seed": (c.get("hparams") or {}).get("seed"), **rows[c["policy"]]}
                   for c in plan.checkpoints]
    law_points = [dict(rows[r.key], policy=r.key, method=(r.checkpoint or {}).get("method")) for r in plan.refs if r.key != base]
    extra: Dict[str, Any] = {"checkpoints": checkpoints,
                             "across_seeds": across_seeds(plan.checkpoints, checkpoints, base)} if plan.checkpoints else {}
    return {
        "format": RESULTS_FORMAT,
        "battery": {"id": plan.battery.full_id, "name": plan.battery.id, "version": plan.battery.version,
                    "tasks": battery_tasks, "hash": plan.battery.content_hash()},
        "target": {"id": plan.target.full_id, "task": target_task, "version": plan.target.version} if plan.target else None,
        # the v2 tasks' low-poly mesh set (name, hash, ground): the pixels a policy saw depend on it
        "visual_assets": task_visual_assets([*battery_tasks, *([target_task] if target_task else [])]),
        "base": base,
        "policies": [{"id": r.key, "checkpoint_hash": r.hash, "kind": r.kind, "role": r.role} for r in plan.refs],
        "seeds": {t: seeds for t, seeds, _ in plan.tasks()},
        "protocol": plan.protocol(),
        "software": software_versions(),
        "success": table(at_end),
        "success_once": table(once),
        "battery_mean_success": battery_mean,
        "forgetting": {p: v["value"] for p, v in forgetting.items()},
        "forgetting_detail": forgetting,
        "forgetting_once": {p: v["value"] for p, v in forgetting_once.items()},
        "gain": {p: v["value"] for p, v in gain.items()},
        "gain_detail": gain,
        "gain_once": {p: v["value"] for p, v in gain_once.items()},
        "kl_to_base": kl,
        "divergences": divergences,
        "episodes": len(recs),
        "wall_s": round(wall_s, 1),
        **extra,
        "law": _law(law_points),
        "matched": _matched(law_points, by_policy, battery_tasks),
    }


def kl_entry(detail: Dict[str, Any], kl_states: str = "base") -> Dict[str, Any]:
    """``kl_to_base[policy]``: the figures on the main state set — the base's target states, or with
    ``kl_states`` 'policy' the policy's own; the battery's when there is no target — each with its standard
    error, TV with its effective sample size (None as a number when unreliable), and every set under ``detail``."""
    order = ("target_policy", "target", "battery") if kl_states == "policy" else ("target", "target_policy", "battery")
    name = next(n for n in order if n in detail)
    m = detail[name]
    reliable = bool(m.get("tv_reliable"))
    return {
        "forward": m["forward"], "forward_se": m["forward_se"],
        "reverse": m.get("reverse"), "reverse_se": m.get("reverse_se"),
        "tv": m["tv"] if reliable else None, "tv_se": m["tv_se"] if reliable else None,
        "tv_ess": m["tv_ess"], "tv_reliable": reliable,
        **({} if reliable else {"tv_note": f"unreliable: effective sample size {100 * m['tv_ess']:.2g} % of the samples, "
                                           f"below {100 * TV_MIN_ESS:.0f} %; the policies are too far apart for TV's "
                                           "importance weights"}),
        "n_states": m["n_states"], "n_samples": m["n_samples"], "state_set": name,
        "forward_by_phase": m.get("forward_by_phase"), "detail": detail,
    }


def across_seeds(plan_rows: List[Dict[str, Any]], rows: List[Dict[str, Any]], base: str) -> List[Dict[str, Any]]:
    """Checkpoints of runs that differ only in their seed, side by side: one group per (method, hyper-parameters
    but the seed, update) holding two or more seeds, with the mean, minimum and maximum of target success,
    forgetting and forward KL over the seeds. ``label`` names the hyper-parameters that tell a method's groups
    apart (empty when the method has one configuration). Copies of the base (update 0) are left out."""
    groups: Dict[Tuple[str, str, int], List[Tuple[Dict[str, Any], Dict[str, Any]]]] = {}
    for c, r in zip(plan_rows, rows):
        hp = {k: v for k, v in (c.get("hparams") or {}).items() if k != "seed"}
        if r["policy"] == base or (c.get("hparams") or {}).get("seed") is None:
            continue
        groups.setdefault((c.get("method") or "", json.dumps(hp, sort_keys=True), int(c["update"])), []).append((c, r))
    configs: Dict[str, List[Dict[str, Any]]] = {}
    for method, key, _ in groups:
        hp = json.loads(key)
        if hp not in configs.setdefault(method, []):
            configs[method].append(hp)

    def label(method: str, hp: Dict[str, Any]) -> str:
        others = configs[method]
        varying = sorted(k for k in hp if any(o.get(k) != hp.get(k) for o in others))
        return ", ".join(f"{k}={_short_value(hp[k])}" for k in varying)

    def stats(values: List[Any]) -> Dict[str, Any]:
        v = [x for x in values if isinstance(x, (int, float)) and math.isfinite(x)]
        return {"mean": sum(v) / len(v), "min": min(v), "max": max(v)} if v else {"mean": None, "min": None, "max": None}

    out = []
    for (method, hp, update), members in sorted(groups.items()):
        seeds = sorted({c["hparams"]["seed"] for c, _ in members})
        if len(seeds) < 2:
            continue
        out.append({"method": method, "label": label(method, json.loads(hp)), "update": update, "seeds": seeds,
                    "runs": [c["run"] for c, _ in members], "policies": [r["policy"] for _, r in members],
                    **{k: stats([r.get(k) for _, r in members]) for k in ("target_success", "forgetting", "forward_kl")}})
    return out


def _short_value(v: Any) -> Any:
    """A hyper-parameter as a label shows it: a path (or a list of paths, such as sft's --data) by its last
    component, so that the label names the dataset and not where it lies on one machine."""
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(str(_short_value(x)) for x in v) + "]"
    if isinstance(v, str) and os.sep in v:
        return os.path.basename(v.rstrip(os.sep)) or v
    return v


def _num_or_none(x: Any) -> Any:
    """NaN (an undefined rate or difference) as None, for JSON."""
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else x


def _matched(points: List[Dict[str, Any]], by_policy: Dict[str, List[Dict[str, Any]]], battery_tasks: List[str]) -> List[Dict[str, Any]]:
    """Per pair of methods, forgetting at matched target success (law.matched_pairs), with the difference's interval.

    ``forgetting_difference`` is A's forgetting minus B's, i.e. B's battery success minus A's, with the
    interval of forgetting's own (per task Newcombe, paired by seed; MOVER over tasks).
    """
    rows = {p["policy"]: p for p in points}
    out = []
    for m in law.matched_pairs(points):
        if "a" in m:
            a, b = rows[m["a"]], rows[m["b"]]
            d = metrics.forgetting_from_episodes(by_policy.get(m["b"], []), by_policy.get(m["a"], []), battery_tasks)
            m = {**m, **{f"{side}_{k}": r.get(k) for side, r in (("a", a), ("b", b))
                         for k in ("target_success", "forgetting", "forgetting_ci", "forward_kl")},
                 "forgetting_difference": _num_or_none(d["value"]),
                 "forgetting_difference_ci": [_num_or_none(d["ci_low"]), _num_or_none(d["ci_high"])],
                 "tolerance": law.MATCH_TOLERANCE}
        out.append(m)
    return out


def _law(points: List[Dict[str, Any]]) -> Dict[str, Any]:
    """The forgetting law over every evaluated policy but the base (aliases counted once)."""
    section = law.law_section(points)
    section["by_method"] = law.per_method(points)
    sets = {p["kl_state_set"] for p in points if p.get("forward_kl") is not None}
    section["states"] = sets.pop() if len(sets) == 1 else ("mixed" if sets else None)
    unreliable = sum(1 for p in points if p.get("forward_kl") is not None and p.get("tv") is None and p.get("tv_ess") is not None)
    if unreliable:
        section["predictors"]["tv"]["excluded"] = unreliable
        section["predictors"]["tv"]["reason"] = (f"{unreliable} checkpoint(s) left out: their TV is unreliable "
                                                 f"(effective sample size below {100 * TV_MIN_ESS:.0f} %)")
    section["points"] = [{k: p.get(k) for k in ("policy", "method", "forward_kl", "forgetting", "target_success",
                                                "battery_success")} for p in points]
    return section


def _policy_row(p: str, at_end, battery_mean, forgetting, gain, kl, target_task) -> Dict[str, Any]:
    """The numbers of one policy that the checkpoints table, the law and the plots use."""
    t = at_end.get(p, {}).get(target_task) if target_task else None
    k = kl.get(p) or {}
    battery_kl = ((k.get("detail") or {}).get("battery") or {}).get("forward")
    f = forgetting.get(p) or {}
    return {
        "target_success": _num_or_none(t.rate) if t else None,
        "target_n": t.n if t else 0,
        "battery_success": _num_or_none(battery_mean.get(p)),
        "forgetting": _num_or_none(f.get("value")),
        "forgetting_ci": [_num_or_none(f.get("ci_low")), _num_or_none(f.get("ci_high"))] if f else None,
        "gain": _num_or_none((gain.get(p) or {}).get("value")),
        "forward_kl": k.get("forward"),
        "reverse_kl": k.get("reverse"),
        "tv": k.get("tv"),
        "tv_ess": k.get("tv_ess"),
        "forward_kl_battery": battery_kl if k.get("note") != "base" else 0.0,
        "kl_state_set": k.get("state_set", "target" if k.get("note") == "base" else None),
    }
