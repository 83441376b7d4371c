"""`vla-forget bench`: roll out policies on a battery and a target, then measure.

Run folder layout (``--out DIR``)::

    config.json        the resolved configuration (battery and target specs, seeds, policies)
    episodes.jsonl     one record per finished episode, appended as they finish
    states/            the base policy's recorded observations (per task, per seed; vla_forget.states)
    states-policy/     with --kl-states policy|both: each policy's own target-task observations
    videos/POLICY/     mp4 per (task, seed) for the first videos_per_task seeds
    results.json       success matrix, forgetting, gain, divergences, versions; with
                       checkpoints: a ``checkpoints`` section and the forgetting ``law`` fit
    report.md          the same as tables
    report.html        the same for a browser, with the video gallery (vla_forget.report_html)
    pareto.png, forgetting_vs_kl.png   plots (with the ``plots`` extra)

An interrupted run keeps every finished episode; ``--resume`` redoes nothing
that finished.

``checkpoints`` (run or sweep folders of ``vla-forget adapt`` / ``vla-forget
sweep``) adds every finished checkpoint in them as a policy keyed
``RUN@update-NNNNNN``. A checkpoint identical to the base (the run's
``update-000000`` copy) or to an earlier checkpoint is not rolled out again: it
is an alias of that policy. Resuming may find new checkpoints of runs that were
still training; they are added, and so are the checkpoints of run or sweep
folders given to the resumed run as extra ``--checkpoints`` (more seeds): only
the new policies are rolled out.

The divergences' state sets and model passes are :mod:`vla_forget.bench_divergences`; the analysis of the
episodes is :mod:`vla_forget.analysis`.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Dict, Iterable, List, Optional, Tuple

from tqdm import tqdm

import vla_forget.envs  # TASKS and task_unavailable_reason read at call time: tests and plug-ins replace them
from vla_forget import rollout
from vla_forget.executors import executor_problem, run_jobs
from vla_forget.analysis import RESULTS_FORMAT, across_seeds, aggregate, kl_entry  # noqa: F401 (names of bench before the split)
from vla_forget.bench_divergences import StateSet, compute_divergences, load_state_set, state_sets  # noqa: F401
from vla_forget.checkpoints import CheckpointDiscoveryError, find_checkpoints
from vla_forget.config import KL_STATE_SETS, BenchConfig  # noqa: F401 (bench's config, light for the CLI)
from vla_forget.errors import VlaForgetError
from vla_forget.jsonio import write_json
from vla_forget.policies import load_policy
from vla_forget.policies.base import PromptStyleError, TokenPolicy
from vla_forget.report import write_report
from vla_forget.report_html import REPORT_HTML, write_html
from vla_forget.rollout import EpisodeJob
from vla_forget.runfolder import RunFolder, RunKind
from vla_forget.spec import DEFAULT_DECODING, Battery, Decoding, Target, load_battery, load_target
from vla_forget.states import RULES, expected_slots, recorded_slots, state_path
from vla_forget.video import slug

SHARE_RENDER_ENV_EPISODES = 4


class BenchError(VlaForgetError, RuntimeError):
    """A bench run that cannot start or continue; the message says what to do."""


#: bench folders: their settings in ``config.json`` (format :data:`RESULTS_FORMAT`); a resume may change the
#: divergence options (they are said) and, silently, where and how it runs
RUN_KIND = RunKind("bench", "a run", "config.json", changeable=BenchConfig.DIVERGENCE_ONLY, ignored=BenchConfig.VOLATILE,
                   added=BenchConfig.LEGACY, error=BenchError, format=RESULTS_FORMAT)



@dataclass
class PolicyRef:
    key: str
    spec: str
    hash: str
    kind: str
    role: str  # "base" or "policy" or "base+policy"
    has_distribution: bool
    needs_image: bool = True
    checkpoint: Optional[Dict[str, Any]] = None  # run, method, update, env_steps, ... of an adaptation checkpoint
    # not saved in config.json's policies (each follows from the hash): recorded in results.json's protocol
    wrist_camera: bool = False  # reads the wrist camera too
    input_image_size: Optional[int] = None  # the camera size the policy declares
    prompt_style: Optional[str] = None  # the prompt style in use (policies that have styles)
    unnorm_key: Optional[str] = None  # the action statistics it decodes with

#: PolicyRef fields left out of config.json (older runs' config.json lack them; each follows from the hash)
REF_DERIVED = ("wrist_camera", "input_image_size", "prompt_style", "unnorm_key")


def with_prompt(spec: str, style: Optional[str]) -> str:
    """``spec`` with the option ``prompt=STYLE`` (``load_policy`` reads options after ``#``)."""
    if not style:
        return spec
    return f"{spec},prompt={style}" if "#" in spec else f"{spec}#prompt={style}"


def _policy_ref(spec: str, role: str, key: Optional[str] = None, prompt: Optional[str] = None) -> PolicyRef:
    key = key or spec.rstrip("/")
    spec = with_prompt(spec, prompt)
    try:
        p = load_policy(spec)
    except PromptStyleError as e:
        raise BenchError(f"--prompt {prompt}: {key}: {e}") from None
    size = getattr(p, "input_image_size", None)
    return PolicyRef(key=key, spec=spec, hash=p.checkpoint_hash(), kind=type(p).__name__, role=role,
                     has_distribution=isinstance(p, TokenPolicy), needs_image=bool(getattr(p, "needs_image", True)),
                     wrist_camera=bool(getattr(p, "wrist_camera", False)),
                     input_image_size=int(size) if size else None, prompt_style=getattr(p, "prompt_style", None),
                     unnorm_key=getattr(p, "unnorm_key", None))


# --------------------------------------------------------------------------
# run-folder I/O

def read_episodes(path: str, *, repair: bool = False) -> List[Dict[str, Any]]:
    """Episode records. A torn last line (a kill during a write) is dropped with a warning; with ``repair`` it is
    also cut from the file, so that records appended next start on a line of their own."""
    out: List[Dict[str, Any]] = []
    if not os.path.exists(path):
        return out
    with open(path, "rb") as f:
        lines = f.read().split(b"\n")
    for i, raw in enumerate(lines):
        line = raw.strip()
        if not line:
            continue
        try:
            out.append(json.loads(line))
        except (json.JSONDecodeError, UnicodeDecodeError):
            if not any(x.strip() for x in lines[i + 1:]):
                print(f"warning: dropping a partly written last line of {path}; that episode will be redone", file=sys.stderr)
                if repair:
                    with open(path, "r+b") as f:
                        f.truncate(sum(len(x) + 1 for x in lines[:i]))
            else:
                raise BenchError(f"{path}: line {i + 1} is not valid JSON; the file is corrupt (fix or remove that line)")
    return out


def _append(path: str, record: Dict[str, Any]) -> None:
    line = json.dumps(record, sort_keys=True) + "\n"
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_json(path: str, data: Any) -> None:
    write_json(path, data, indent=2, sort_keys=True)


# --------------------------------------------------------------------------
# planning

@dataclass
class Plan:
    config: BenchConfig
    battery: Battery
    target: Optional[Target]
    refs: List[PolicyRef]
    base: PolicyRef
    checkpoints: List[Dict[str, Any]] = field(default_factory=list)
    """one row per discovered checkpoint: its key, run metadata and the evaluated policy key (itself or an alias)"""

    notes: List[str] = field(default_factory=list)
    """what the run decided on the user's behalf and should say (e.g. an image size a policy was not trained at)"""
    image_size_source: str = "--image-size"

    def tasks(self) -> List[Tuple[str, List[int], Optional[int]]]:
        out = [(t.task, t.seeds, t.max_episode_steps) for t in self.battery.tasks]
        if self.target is not None:
            out.append((self.target.task.task, self.target.task.seeds, self.target.task.max_episode_steps))
        return out

    def decoding(self, task: str) -> Tuple[Decoding, str]:
        """How policies act in ``task``'s episodes, and what decided it: --greedy / --temperature, else the
        target's or the battery's ``decoding``, else the default (sampling at temperature 1)."""
        if self.config.greedy:
            return Decoding(greedy=True), "--greedy"
        if self.config.temperature is not None:
            return Decoding(temperature=float(self.config.temperature)), "--temperature"
        spec = self.target if (self.target is not None and task == self.target.task.task) else self.battery
        if spec.decoding is not None:
            return spec.decoding, f"{'target' if spec is self.target else 'battery'} {spec.full_id}"
        return DEFAULT_DECODING, "default"

    def protocol(self) -> Dict[str, Any]:
        """What the numbers were taken under, for results.json: camera size, decoding per task, prompt per policy."""
        decoding = {}
        for task, _, _ in self.tasks():
            d, source = self.decoding(task)
            decoding[task] = {**d.to_dict(), "source": source}
        return {"image_size": self.config.image_size, "image_size_source": self.image_size_source,
                "decoding": decoding,
                "prompt": {r.key: r.prompt_style for r in self.refs if r.prompt_style is not None},
                "input_image_size": {r.key: r.input_image_size for r in self.refs if r.input_image_size is not None},
                "divergences": "temperature-1 distributions, whatever the decoding; nats"}

    def resolved(self) -> Dict[str, Any]:
        cfg = {k: v for k, v in asdict(self.config).items() if k not in BenchConfig.VOLATILE}
        out = {
            "format": RESULTS_FORMAT,
            "config": cfg,
            "battery": self.battery.to_dict(),
            "target": self.target.to_dict() if self.target else None,
            "policies": [{k: v for k, v in asdict(r).items() if k not in REF_DERIVED} for r in self.refs],
            "base": self.base.key,
        }
        if self.checkpoints:
            out["aliases"] = {c["key"]: c["policy"] for c in self.checkpoints if c["key"] != c["policy"]}
        return out


def make_plan(config: BenchConfig) -> Plan:
    _check_options(config)
    battery = load_battery(config.battery)
    if config.episodes is not None:
        if config.episodes < 1:
            raise BenchError(f"--episodes must be >= 1, got {config.episodes}")
        battery = battery.with_episodes(config.episodes)
    target: Optional[Target] = None
    tref = config.target if config.target is not None else battery.target
    if tref and tref.lower() != "none":
        target = load_target(tref)
        if target.task.task in battery.task_ids:
            raise BenchError(f"target task {target.task.task!r} is also in battery {battery.full_id}: forgetting would be "
                             "meaningless; choose another target or battery")
        if config.target_episodes is not None:
            target.task.seeds = target.task.seeds[: config.target_episodes] if config.target_episodes <= len(target.task.seeds) \
                else list(range(target.task.seeds[0], target.task.seeds[0] + config.target_episodes))
    if len(set(p.rstrip("/") for p in config.policies)) != len(config.policies):
        raise BenchError(f"a policy is listed twice: {config.policies}")
    refs: List[PolicyRef] = []
    base_key = config.base.rstrip("/")
    for spec in config.policies:
        refs.append(_policy_ref(spec, "base+policy" if spec.rstrip("/") == base_key else "policy", prompt=config.prompt))
    base = next((r for r in refs if r.key == base_key), None)
    if base is None:
        base = _policy_ref(config.base, "base", prompt=config.prompt)
        refs.insert(0, base)
    plan = Plan(config, battery, target, refs, base, _add_checkpoints(config, refs))
    _resolve_image_size(plan)
    _check_action_units(plan)
    return plan


def _check_action_units(plan: Plan) -> None:
    """A note for each policy that decodes its actions with other statistics than a task's actions are in (the
    SimplerEnv tasks name OpenVLA's ``unnorm_key`` of their robot): its actions would be in the wrong units."""

    wrong: Dict[Tuple[str, str], List[str]] = {}
    for task, _, _ in plan.tasks():
        want = (vla_forget.envs.TASKS.get(task).metadata or {}).get("unnorm_key")
        for r in plan.refs:
            if want and r.has_distribution and r.unnorm_key and r.unnorm_key != want:
                wrong.setdefault((r.key, want), []).append(task)
    for (key, want), tasks in wrong.items():
        have = next(r.unnorm_key for r in plan.refs if r.key == key)
        plan.notes.append(f"warning: {key} decodes actions with the {have!r} statistics, but {', '.join(tasks)} "
                          f"take{'s' if len(tasks) == 1 else ''} actions in {want!r}'s units (give the policy "
                          f"#unnorm_key={want} unless its own statistics are of that robot)")


def check_tasks_available(tasks: Iterable[str]) -> None:
    """Every SimplerEnv / Bridge task of the run can run here (simulator, assets, SimplerEnv's interpreter and its
    preflight), and every v2 tabletop task's low-poly mesh set is the recorded one, checked before the first episode: else one error listing each task's reason and fix."""

    reasons = []
    for task in dict.fromkeys(tasks):
        meta = vla_forget.envs.TASKS.get(task).metadata or {}
        if meta.get("backend") in ("simpler", "bridge") or "visual_assets" in meta:  # v2: the low-poly meshes
            why = vla_forget.envs.task_unavailable_reason(task)
            if why:
                reasons.append(why)
    if reasons:
        raise BenchError("cannot run these tasks here (nothing was run):\n  - " + "\n  - ".join(reasons))

def _resolve_image_size(plan: Plan) -> None:
    """``image_size`` None -> the base's declared input size (else the first policy's, else 128); a note for
    every policy that declares another size (it sees the camera rescaled)."""
    cfg = plan.config
    if cfg.image_size is None:
        declared = [r for r in [plan.base] + plan.refs if r.input_image_size]
        if declared:
            cfg.image_size = int(declared[0].input_image_size)
            plan.image_size_source = f"the input size of {declared[0].key}"
        else:
            from vla_forget.envs import DEFAULT_IMAGE_SIZE

            cfg.image_size = DEFAULT_IMAGE_SIZE
            plan.image_size_source = "default (no policy declares an input size)"
        if cfg.image_size > 1024:
            raise BenchError(f"{plan.image_size_source} is {cfg.image_size} px, larger than any supported camera (at "
                             "most 1024); give --image-size")
    for r in plan.refs:
        if r.input_image_size and r.input_image_size != cfg.image_size:
            plan.notes.append(f"warning: {r.key} takes {r.input_image_size} px images but the cameras render at "
                              f"{cfg.image_size} px ({plan.image_size_source}); it sees them rescaled. Give "
                              f"--image-size {r.input_image_size} to render at its size")


def _check_options(config: BenchConfig) -> None:
    """Options that would fail deep in a worker or a library, refused before any work with what to give instead."""

    positive = {"image_size": "--image-size", "kl_samples_per_state": "--kl-samples-per-state",
                "kl_state_stride": "kl_state_stride", "num_envs": "--num-envs"}
    for name, flag in positive.items():
        v = getattr(config, name)
        if name == "image_size" and v is None:
            continue  # from the base policy
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise BenchError(f"{flag} must be a whole number >= 1, got {v!r}")
    for name, flag in {"kl_states_per_task": "--kl-states-per-task", "videos_per_task": "--videos-per-task",
                       "workers": "--workers"}.items():
        v = getattr(config, name)
        if not isinstance(v, int) or isinstance(v, bool) or v < 0:
            raise BenchError(f"{flag} must be a whole number >= 0, got {v!r}")
    problem = executor_problem(config.executor, config.workers, config.num_envs)
    if problem:
        raise BenchError(problem)
    r = config.review_size
    if not isinstance(r, int) or isinstance(r, bool) or not (r == 0 or 64 <= r <= 1024):
        raise BenchError(f"--review-size must be 0 (the policy camera's frames) or 64..1024 pixels, got {r!r}")
    if config.image_size is not None and config.image_size > 1024:
        raise BenchError(f"--image-size {config.image_size} is larger than any supported camera (at most 1024)")
    if config.kl_state_rule not in RULES:
        raise BenchError(f"unknown kl_state_rule {config.kl_state_rule!r}; choose one of {', '.join(RULES)}")
    if config.kl_states not in KL_STATE_SETS:
        raise BenchError(f"--kl-states must be one of {', '.join(KL_STATE_SETS)}, got {config.kl_states!r}")
    t = config.temperature
    if t is not None and (isinstance(t, bool) or not isinstance(t, (int, float)) or not t > 0 or not math.isfinite(t)):
        raise BenchError(f"--temperature must be a number > 0, got {t!r} (for greedy actions give --greedy)")
    if t is not None and config.greedy:
        raise BenchError("--greedy and --temperature both given: choose one (greedy actions, or sampling at a temperature)")


def _add_checkpoints(config: BenchConfig, refs: List[PolicyRef]) -> List[Dict[str, Any]]:
    """Append a ref per distinct checkpoint in ``config.checkpoints``; returns one row per checkpoint."""

    rows: List[Dict[str, Any]] = []
    by_hash = {}
    for r in refs:
        by_hash.setdefault(r.hash, r.key)
    keys = {r.key for r in refs}
    for folder in config.checkpoints:
        try:
            found = find_checkpoints(folder, config.checkpoint_stride)
        except CheckpointDiscoveryError as e:
            raise BenchError(str(e)) from None
        for ck in found:
            if ck.key in keys:
                raise BenchError(f"two checkpoints are both called {ck.key} (runs of the same name in different "
                                 "folders); bench them separately")
            keys.add(ck.key)
            meta = {"run": ck.run, "method": ck.method, "update": ck.update, "env_steps": ck.env_steps,
                    "samples_seen": ck.samples_seen, "wall_time_s": ck.wall_time_s, "path": ck.path}
            ref = _policy_ref(ck.path, "policy", key=ck.key, prompt=config.prompt)
            ref.checkpoint = meta
            policy = by_hash.get(ref.hash)
            if policy is None:
                refs.append(ref)
                by_hash[ref.hash] = policy = ref.key
            rows.append({"key": ck.key, "policy": policy, "checkpoint_hash": ref.hash, **meta, "hparams": ck.hparams})
    return rows


def _check_resume(out: str, plan: Plan, resume: bool) -> List[str]:
    """Refuse to overwrite a run without ``resume``, and a resumption whose configuration changed. Changes of
    :attr:`BenchConfig.DIVERGENCE_ONLY` fields are allowed: they are returned, one line each, to be said."""
    folder = RunFolder(out, RUN_KIND)
    folder.refuse_unless_resume(resume, started=folder.has_config() or os.path.exists(folder.file("episodes.jsonl")))
    if not (resume and folder.has_config()):
        return []
    old = folder.read_config()
    new = json.loads(json.dumps(plan.resolved()))
    defaults = json.loads(json.dumps({k: v for k, v in asdict(BenchConfig([], "", "")).items()}))
    saved = dict(old.get("config", {}))
    if _extends(saved.get("checkpoints"), new["config"].get("checkpoints")):
        saved["checkpoints"] = new["config"]["checkpoints"]  # more runs or seeds in the same folders: add them
    if _extends(saved.get("policies"), new["config"].get("policies"), empty_ok=True):
        saved["policies"] = new["config"]["policies"]  # more --policy: add them (only their episodes run)
    said, detail = folder.resume_changes(new["config"], saved, defaults=defaults, prefix="config.")
    old["policies"] = [{"checkpoint": None, **o} for o in old.get("policies") or []]  # older runs lack the field
    for k in new:
        if k == "config" or old.get(k) == new[k]:
            continue
        if k == "policies" and _grown(old[k], new[k]):
            continue  # new checkpoints of runs still training, added runs or added --policy: add them
        if k == "aliases" and all(new[k].get(a) == p for a, p in (old.get(k) or {}).items()):
            continue
        detail.append(k)
    if detail:
        raise BenchError(f"--resume: {out} was started with a different configuration ({'; '.join(detail)}). "
                         "Resume with the same arguments, or choose another --out")
    return said


def _extends(old: Optional[List[str]], new: Optional[List[str]], empty_ok: bool = False) -> bool:
    """Whether the ``--checkpoints`` folders (or ``--policy`` entries) ``new`` keep every one of ``old`` and add
    more; ``empty_ok``: ``old`` may be empty (a bench of checkpoints only, given its first ``--policy``)."""
    return (bool(old) or empty_ok) and bool(new) and set(old or []) <= set(new)


def _grown(old: List[Dict[str, Any]], new: List[Dict[str, Any]]) -> bool:
    """Whether ``new`` keeps every policy of ``old`` unchanged and only adds policies (checkpoints, or the added
    ``--policy`` entries that the config's own comparison let through)."""
    by_key = {p["key"]: p for p in new}
    return all(by_key.get(o["key"]) == o for o in old)


def plan_jobs(plan: Plan, out: str, done: Iterable[Tuple[str, str, int]]) -> List[EpisodeJob]:
    """The episodes still to run, task-major (workers reuse their env across policies). An episode that finished
    but whose states are missing or were recorded under other settings (another rule, another count) is run
    again for its states only (``record=False``): its record is kept as it is."""

    cfg = plan.config
    done_set = set(done)
    jobs: List[EpisodeJob] = []
    any_images = any(r.needs_image for r in plan.refs)
    recording = {(s.recorder.key, s.task): s for s in state_sets(plan, out)}
    for task, seeds, max_steps in plan.tasks():
        decoding, _ = plan.decoding(task)
        # With few episodes per task, one rendering env per worker serves every policy: creating a
        # second, state-only env (seconds) would cost more than rendering the few extra steps.
        render = True if (any_images and len(seeds) <= SHARE_RENDER_ENV_EPISODES) else None
        for ref in plan.refs:
            rec = recording.get((ref.key, task))
            slots = expected_slots(cfg.kl_state_rule, cfg.kl_states_per_task, seeds, cfg.kl_state_stride) if rec else {}
            todo = [s for s in seeds if (ref.key, task, s) not in done_set]
            redo = [s for s in seeds if (ref.key, task, s) in done_set and s in slots
                    and recorded_slots(state_path(rec.states_dir, task, s)) != slots[s]]
            video_seeds = seeds[: cfg.videos_per_task]
            chunk = max(1, cfg.num_envs)
            for part_seeds, record in ((todo, True), (redo, False)):
                for i in range(0, len(part_seeds), chunk):
                    part = part_seeds[i:i + chunk]
                    jobs.append(EpisodeJob(
                        policy_key=ref.key, policy_spec=ref.spec, policy_hash=ref.hash, task=task, seeds=part,
                        max_episode_steps=max_steps, image_size=cfg.image_size, greedy=decoding.greedy,
                        temperature=decoding.temperature,
                        video_seeds=[s for s in part if s in video_seeds] if record else [],
                        video_dir=os.path.join(out, "videos", slug(ref.key, 80)),
                        review_size=cfg.review_size if cfg.videos_per_task > 0 else 0,
                        states_dir=rec.states_dir if rec else None, state_rule=cfg.kl_state_rule,
                        state_n=cfg.kl_states_per_task, state_episodes=len(seeds),
                        state_index={s: seeds.index(s) for s in part if s in slots}, state_stride=cfg.kl_state_stride,
                        wrist_camera=True if rec and rec.wrist_camera else None, record=record, device=cfg.device,
                        num_envs=cfg.num_envs, sim_backend="gpu" if cfg.num_envs > 1 else "cpu", render=render,
                    ))
    return jobs


# --------------------------------------------------------------------------
# execution

def _progress(total: int, initial: int, enabled: bool):
    return tqdm(total=total, initial=initial, unit="ep", desc="episodes", disable=not enabled, dynamic_ncols=True,
                file=sys.stderr)


def execute(jobs: List[EpisodeJob], episodes_path: str, workers: int, total: int, initial: int, progress: bool,
            executor: str = "local", ray_address: str = "auto", device: str = "cpu") -> int:
    """Run jobs on ``executor`` (vla_forget.executors), appending each finished episode on this machine; returns
    the number of episodes run."""

    bar = _progress(total, initial, progress)
    n = 0

    def finish(records: List[Dict[str, Any]]) -> None:
        nonlocal n
        for r in records:
            if not r.get("states_only"):  # an episode re-run for its states: its record is already there
                _append(episodes_path, r)
            n += 1
            bar.update(1)
            bar.set_postfix_str(f"{r['task']} {r['policy'][-24:]}", refresh=False)

    run_dir = os.path.dirname(os.path.abspath(episodes_path))
    if executor != "local":  # workers elsewhere write videos and states by absolute paths into the run folder
        jobs = [replace(j, video_dir=j.video_dir and os.path.abspath(j.video_dir),
                        states_dir=j.states_dir and os.path.abspath(j.states_dir)) for j in jobs]
    try:
        run_jobs(rollout.run_job, jobs, finish, executor=executor, workers=workers, ray_address=ray_address,
                 device=device, run_dir=run_dir, log=lambda msg: bar.write(msg, file=sys.stderr))
    finally:
        bar.close()
    return n


# --------------------------------------------------------------------------
# analysis: vla_forget.analysis (pure functions of the episodes and the divergences)

# --------------------------------------------------------------------------
# entry point

#: the options of :func:`resolve_config` (those of ``vla-forget bench``); None: not given
BENCH_OPTIONS = ("policies", "base", "checkpoints", "checkpoint_stride", "battery", "target", "episodes",
                 "target_episodes", "workers", "num_envs", "device", "image_size", "videos_per_task",
                 "review_size", "executor", "ray_address", "kl_states_per_task", "kl_state_stride", "kl_samples_per_state", "kl_states", "greedy", "temperature",
                 "prompt", "seed")
#: the options a resumed bench takes from its config.json when they are not given (workers: per machine)
RESUMED_OPTIONS = ("base", "battery", "target", "episodes", "target_episodes", "num_envs", "device", "image_size",
                   "videos_per_task", "review_size", "kl_states_per_task", "kl_state_stride", "kl_samples_per_state", "kl_states",
                   "greedy", "temperature", "prompt", "seed", "checkpoint_stride")


def _union(first: List[str], more: List[str]) -> List[str]:
    return list(first) + [x for x in more if x not in first]


def resolve_config(out: str, *, resume: bool = False, preset: Optional[str] = None, progress: bool = True,
                   **options: Any) -> BenchConfig:
    """The :class:`BenchConfig` of a bench into ``out`` from the options given (:data:`BENCH_OPTIONS`; None or
    missing: not given), the way ``vla-forget bench`` resolves them, for library callers too:

    1. ``resume``: an option not given comes from ``out/config.json`` (:data:`RESUMED_OPTIONS`); ``checkpoints``
       folders given are added to the saved ones and ``policies`` given to the saved ones, so a bench continues with
       exactly its own settings;
    2. ``preset`` (an id of ``vla-forget ls presets``) fills the options still not given; without one, episode
       counts come from the battery and target specs;
    3. with ``checkpoints``, the runs say their base, target and battery where those are not given (a preset's
       policies are not added);
    4. ``workers`` not given: one process per core up to 8 (CPU simulation), 0 with several envs per process.

    Raises :class:`BenchError` (nothing is written) when the saved config cannot be read, the runs disagree, or
    there is no policy or no base."""
    from vla_forget.spec import load_preset

    unknown = sorted(set(options) - set(BENCH_OPTIONS))
    if unknown:
        raise TypeError(f"resolve_config: unknown options {unknown}; known: {', '.join(BENCH_OPTIONS)}")
    opts: Dict[str, Any] = {name: options.get(name) for name in BENCH_OPTIONS}
    folder = RunFolder(out, RUN_KIND)
    if resume and folder.has_config():
        try:
            saved = folder.read_config()["config"]
            if not isinstance(saved, dict):
                raise TypeError("'config' is not an object")
        except (BenchError, KeyError, TypeError) as e:
            raise BenchError(f"--resume: cannot read {folder.config_path} ({e}); pass every option of the run again, "
                             "or choose another --out") from None
        for name in RESUMED_OPTIONS:
            if opts.get(name) is None and saved.get(name) is not None:
                opts[name] = saved[name]
        opts["checkpoints"] = _union(saved.get("checkpoints") or [], opts["checkpoints"] or []) or None
        opts["policies"] = _union(saved.get("policies") or [], opts["policies"] or []) or None
    chosen = load_preset(preset) if preset else {}

    def pick(name: str, default: Any = None) -> Any:
        return opts[name] if opts.get(name) is not None else chosen.get(name, default)

    checkpoints = list(opts["checkpoints"] or [])
    if checkpoints:  # the runs say what they were adapted from and to
        from vla_forget.checkpoints import common_field

        try:
            base = opts["base"] or common_field(checkpoints, "base")
            target = opts["target"] or common_field(checkpoints, "task")
            # the battery the runs were adapted against (their target is outside it, in its version)
            opts["battery"] = opts["battery"] or common_field(checkpoints, "battery")
        except CheckpointDiscoveryError as e:
            raise BenchError(str(e)) from None
        policies = list(opts["policies"] or [])
        opts["target"] = target
    else:
        policies = opts["policies"] or chosen.get("policies")
        base = pick("base")
    if not (policies or checkpoints) or not base:
        raise BenchError("give --policy (or --checkpoints) and --base (or a --preset that sets them)")
    num_envs = int(pick("num_envs", 1))
    workers = pick("workers")
    if workers is None:  # CPU: one env per process; GPU simulation: all envs in this process
        workers = 0 if num_envs > 1 else min(8, os.cpu_count() or 1)
    return BenchConfig(
        policies=list(policies), base=base, out=out, battery=pick("battery", BenchConfig.battery),
        target=pick("target"), episodes=pick("episodes"), target_episodes=pick("target_episodes"),
        workers=int(workers), num_envs=num_envs, device=pick("device", "cpu"),
        image_size=None if pick("image_size") is None else int(pick("image_size")),
        videos_per_task=int(pick("videos_per_task", 2)),
        review_size=int(pick("review_size", BenchConfig.review_size)),
        executor=opts.get("executor") or BenchConfig.executor,
        ray_address=opts.get("ray_address") or BenchConfig.ray_address,
        kl_states_per_task=int(pick("kl_states_per_task", BenchConfig.kl_states_per_task)),
        kl_state_stride=int(pick("kl_state_stride", BenchConfig.kl_state_stride)),
        kl_samples_per_state=int(pick("kl_samples_per_state", BenchConfig.kl_samples_per_state)),
        kl_states=pick("kl_states", BenchConfig.kl_states),
        greedy=bool(pick("greedy", False)), temperature=pick("temperature"), prompt=pick("prompt"),
        seed=int(pick("seed", 0)), progress=progress, checkpoints=checkpoints,
        checkpoint_stride=opts["checkpoint_stride"],
    )


def run_bench(config: BenchConfig, *, resume: bool = False, analyze_only: bool = False, log=print) -> Dict[str, Any]:
    """Run (or continue, with ``resume``) a bench and write its results. ``analyze_only``: roll nothing out;
    rebuild the results, report and plots of a finished bench from its episodes and recorded states, and
    refuse (before writing anything) a bench that still has episodes to run or states to record."""

    out = config.out
    plan = make_plan(config)
    os.makedirs(out, exist_ok=True)
    changed = _check_resume(out, plan, resume)
    episodes_path = os.path.join(out, "episodes.jsonl")
    records = read_episodes(episodes_path, repair=resume)
    done = {(r["policy"], r["task"], r["seed"]) for r in records}
    hashes = {r.key: r.hash for r in plan.refs}
    for r in records:
        if r["policy"] in hashes and r.get("policy_hash") != hashes[r["policy"]]:
            raise BenchError(f"--resume: {r['policy']} has changed since its episodes were recorded (checkpoint hash "
                             f"{r.get('policy_hash')} -> {hashes[r['policy']]}); use a new --out")
    jobs = plan_jobs(plan, out, done)
    n_states_only = sum(len(j.seeds) for j in jobs if not j.record)
    if analyze_only and jobs:
        n_run = sum(len(j.seeds) for j in jobs) - n_states_only
        raise BenchError(f"{out} is not finished: {n_run} episodes to run"
                         f"{f' and {n_states_only} to re-run for their states' if n_states_only else ''} under these "
                         f"settings; nothing was changed. Continue it with `vla-forget bench --out {out} --resume` "
                         f"(with the same divergence options), then analyze it")
    if changed:
        log(f"bench: --resume with settings that change only the divergences ({'; '.join(changed)}): the states are "
            f"recorded again where they differ ({n_states_only} finished episodes re-run for their states only; "
            "no episode record changes) and every divergence is recomputed")
    for note in plan.notes:
        log(f"bench: {note}")
    folder = RunFolder(out, RUN_KIND)
    folder.write_config(plan.resolved(), indent=2, sort_keys=True)
    total = sum(len(seeds) for _, seeds, _ in plan.tasks()) * len(plan.refs) + n_states_only
    initial = total - sum(len(j.seeds) for j in jobs)
    folder.event("analyze" if analyze_only else ("resume" if initial else "start"), episodes=total - n_states_only,
                 to_run=sum(len(j.seeds) for j in jobs) - n_states_only, states_only=n_states_only,
                 changed=changed or None)
    t0 = time.perf_counter()
    if jobs:
        from vla_forget.envs.vulkan import check_vulkan

        check_vulkan()
        check_tasks_available(j.task for j in jobs)
        if plan.checkpoints:
            log(f"bench: {len(plan.checkpoints)} checkpoints in {', '.join(config.checkpoints)} "
                f"({sum(c['key'] != c['policy'] for c in plan.checkpoints)} identical to another policy: not rolled out again)")
        log(f"bench: {len(plan.refs)} policies x {len(plan.tasks())} tasks, {total - initial - n_states_only} episodes to run"
            f"{f' (+{n_states_only} re-run to record states)' if n_states_only else ''}"
            f"{f' ({initial} already done)' if initial else ''}, {config.workers} worker(s) -> {out}")
        try:
            execute(jobs, episodes_path, config.workers, total, initial, config.progress, config.executor,
                    config.ray_address, config.device)
        except KeyboardInterrupt:
            n = len(read_episodes(episodes_path))
            folder.event("interrupted", episodes_saved=n)
            raise BenchError(f"interrupted: {n} finished episodes are saved in {episodes_path}; "
                             f"continue with the same command and --resume") from None
    records = read_episodes(episodes_path)
    log("bench: computing divergences to the base")
    divergences = compute_divergences(plan, out)
    results = aggregate(plan, records, divergences, time.perf_counter() - t0)
    from vla_forget.plots import write_plots

    results["plots"] = write_plots(results, out)
    _write_json(os.path.join(out, "results.json"), results)
    write_report(results, os.path.join(out, "report.md"), out)
    write_html(results, os.path.join(out, REPORT_HTML), out)
    folder.event("done", episodes=results["episodes"], wall_s=results["wall_s"])
    return results
