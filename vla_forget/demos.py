"""`vla-forget demos`: expert demonstrations on ManiSkill3, written as an RLDS dataset.

Every demonstration is executed in the task env itself: the 7-D end-effector
delta action the policies use, the task's camera and its per-episode
instruction. Where the actions come from (:func:`demo_source`):

* ``expert-v2`` (the default) or ``expert-v1`` (``--expert``) — the project's
  scripted state-feedback expert, on every task it solves (PickCube, PushCube,
  PullCube, StackCube, PlaceSphere, StackColorCube, PlaceCubeOnTarget); v2
  grasps cubes at their yaw, v1 turns to their faces first
  (:mod:`vla_forget.policies.expert`);
* ``maniskill-motionplanning`` — for LiftPegUpright-v1, ManiSkill's shipped
  motion-planning solution: planned in a ``pd_joint_pos`` copy of the task,
  then re-executed in the task env's ``pd_ee_delta_pose`` control with
  ManiSkill's own converter (``from_pd_joint_pos``, what its
  ``replay_trajectory`` uses).

What is kept
------------
Seeds ``seed_start, seed_start + 1, ...`` are tried in order; an episode ends
once the task has been solved for ``success_hold`` consecutive steps (or at the
task's episode length), and only episodes that end in success are kept. The
dataset holds the first ``episodes`` successful seeds — the same dataset
whatever the number of workers. Training seeds must stay below
``TRAIN_SEED_LIMIT`` (100000): evaluation seeds start there.

Instruction pairs (``--all-instructions``)
------------------------------------------
A task that draws its instruction per seed (StackColorCube, PlaceCubeOnTarget)
gives one instruction per scene, so a policy trained on it can predict the
demonstrated motion from the scene alone: with a few hundred scenes it can
memorise where each one's motion goes instead of reading the words. With
``all_instructions`` every seed's scene is demonstrated once per instruction
the task can give (9 for PlaceCubeOnTarget): the same images up to the first
step where the words matter, and different actions after it, so only the words
can tell the demonstrations apart. ``episodes`` then counts demonstrations
(seed-major: seed s with instructions 0..K-1, then seed s + 1, ...), and episode
files are named ``TASK__seedS__iK.npz``.

Run folder (``--out DIR``)::

    DIR/raw/config.json          what defines the collection (a resumed run must match it)
    DIR/raw/attempts.jsonl       one record per attempted seed (success, steps, instruction)
    DIR/raw/TASK__seedS.npz      every successful episode, written by the worker as it ends
    DIR/dataset.json, DIR/dataset_statistics.json, DIR/rlds/   the dataset (vla_forget.datasets)

An interrupted run loses no finished episode: ``--resume`` skips every seed in
``attempts.jsonl`` (or with an episode file) and rebuilds the dataset at the end.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import time
from dataclasses import asdict, dataclass
from typing import Any, Dict, Iterator, List, Optional, Tuple

import gymnasium as gym
import numpy as np
import torch
from mani_skill.trajectory.utils.actions.conversion import from_pd_joint_pos
from tqdm import tqdm

from vla_forget import datasets
from vla_forget.envs import TASKS, task_info, task_instructions
from vla_forget.config import DemoConfig  # noqa: F401 (demos' config, kept light for the CLI)
from vla_forget.episodes import Recorder, run_episode
from vla_forget.errors import VlaForgetError
from vla_forget.executors import executor_problem, run_jobs
from vla_forget.jsonio import append_jsonl
from vla_forget.policies import SCRIPTED_EXPERTS
from vla_forget.rollout import get_env, get_policy
from vla_forget.runfolder import RunFolder, RunKind
from vla_forget.versions import software_versions

TRAIN_SEED_LIMIT = 100_000
MOTION_PLANNING = "maniskill-motionplanning"
#: ManiSkill's shipped planner solutions for tasks the scripted expert does not solve.
PLANNER_SOLUTIONS = {
    "LiftPegUpright-v1": "mani_skill.examples.motionplanning.panda.solutions.lift_peg_upright:solve",
    # the low-poly v2 task: the same physics (vla_forget.envs.lowpoly), so the same planner
    "LiftPegUpright-v2": "mani_skill.examples.motionplanning.panda.solutions.lift_peg_upright:solve",
}
#: After a converted plan ends, hold the last gripper command (no motion) at most this many steps for success to settle.
PLANNER_SETTLE_STEPS = 30
RAW = "raw"
ATTEMPTS = "attempts.jsonl"
CONFIG = "config.json"
#: fields of DemoConfig that a resumed run may change
VOLATILE = ("episodes", "out", "workers", "seed_start", "max_attempts", "progress", "name", "executor", "ray_address")


class DemoError(VlaForgetError, RuntimeError):
    """A demonstration run that cannot start or continue; the message says what to do."""


def demo_source(task: str, expert: str = SCRIPTED_EXPERTS[0]) -> str:
    """Where the demonstrations of ``task`` come from (``expert`` where it solves the task); a DemoError names
    the tasks that have a demonstrator."""

    if expert not in SCRIPTED_EXPERTS:
        raise DemoError(f"unknown expert {expert!r}: choose one of {', '.join(SCRIPTED_EXPERTS)}")
    info = task_info(task)
    if info.extra.get("expert", "none") != "none":
        return expert
    if task in PLANNER_SOLUTIONS:
        return MOTION_PLANNING
    ok = [t for t in TASKS.ids() if task_info(t).extra.get("expert", "none") != "none" or t in PLANNER_SOLUTIONS]
    raise DemoError(f"no demonstrator for {task}: demonstrations exist for {', '.join(ok)}")


# --------------------------------------------------------------------------
# one episode (runs in a worker process)

@dataclass
class DemoJob:
    """One seed to demonstrate (picklable: sent to worker processes)."""

    task: str
    seed: int
    source: str
    image_size: int
    success_hold: int
    raw_dir: str
    wrist_camera: bool = False
    instruction_index: Optional[int] = None


class _Recorder:
    """Per-step observation, action and reward of one episode."""

    def __init__(self) -> None:
        self.image: List[np.ndarray] = []
        self.state: List[np.ndarray] = []
        self.action: List[np.ndarray] = []
        self.reward: List[float] = []
        self.success: List[bool] = []

    def add(self, obs, action, reward, success) -> None:
        self.image.append(obs.image[0].cpu().numpy().astype(np.uint8))
        self.state.append(obs.state[0].cpu().numpy().astype(np.float32))
        self.action.append(np.asarray(action, dtype=np.float32).reshape(-1))
        self.reward.append(float(np.asarray(reward).reshape(-1)[0]))
        self.success.append(bool(np.asarray(success).reshape(-1)[0]))

    def held(self) -> int:
        """How many of the last steps were successes in a row."""
        n = 0
        for s in reversed(self.success):
            if not s:
                break
            n += 1
        return n


def _step(env, rec: _Recorder, obs, action):
    """Record ``obs`` and the executed (clipped) action, step the task env; returns the next observation."""

    a = torch.as_tensor(action, dtype=torch.float32).reshape(1, 7).clamp(-1.0, 1.0)
    nxt, reward, _term, _trunc, info = env.step(a)
    rec.add(obs, a.numpy(), reward.cpu().numpy(), info["is_success"].cpu().numpy())
    return nxt, info


class _Steps(Recorder):
    """Each step's observation, the executed (clipped) action, its reward and success into a :class:`_Recorder`."""

    def __init__(self, rec: _Recorder) -> None:
        self.rec = rec

    def after(self, t, obs, action, next_obs, reward, success, info) -> None:
        self.rec.add(obs, action.numpy(), reward.cpu().numpy(), info["is_success"].cpu().numpy())


def _expert_episode(env, job: DemoJob, rec: _Recorder) -> str:
    policy = get_policy(job.source, "cpu")
    policy.reset(1)

    def act(obs):
        return torch.as_tensor(policy.act(obs, greedy=True), dtype=torch.float32).reshape(1, 7).clamp(-1.0, 1.0)

    out = run_episode(env, act, [job.seed], instruction_index=job.instruction_index, success_hold=job.success_hold,
                      recorders=[_Steps(rec)])
    return out.instructions[0]


class _ActionLog:
    """A gym wrapper that keeps the actions passed to ``step`` (the planner's pd_joint_pos trajectory)."""

    def __init__(self, env) -> None:
        self.env = env
        self.actions: List[np.ndarray] = []

    @property
    def unwrapped(self):
        return self.env.unwrapped

    def reset(self, **kwargs):
        self.actions.clear()
        return self.env.reset(**kwargs)

    def step(self, action):
        self.actions.append(np.asarray(action.cpu() if hasattr(action, "cpu") else action, dtype=np.float32).copy())
        return self.env.step(action)

    def __getattr__(self, name):
        return getattr(self.env, name)


class _TaskEnvAsGym:
    """The task env behind a gym-like ``step`` for ManiSkill's converter, recording every step."""

    def __init__(self, env, rec: _Recorder, obs) -> None:
        self.env, self.rec, self.obs = env, rec, obs
        self.unwrapped = env._u

    def step(self, action):
        self.obs, info = _step(self.env, self.rec, self.obs, action)
        return None, None, None, None, info


_PLAN_ENVS: Dict[str, Any] = {}


def _planner_episode(env, job: DemoJob, rec: _Recorder) -> str:
    module, _, fn = PLANNER_SOLUTIONS[job.task].partition(":")
    solve = getattr(importlib.import_module(module), fn)
    if env.ms_id not in _PLAN_ENVS:
        _PLAN_ENVS[env.ms_id] = _ActionLog(gym.make(env.ms_id, obs_mode="none", control_mode="pd_joint_pos",
                                                    sim_backend="physx_cpu", render_mode=None))
    plan_env = _PLAN_ENVS[env.ms_id]
    # 1. plan (the solution resets with the seed and steps the env in pd_joint_pos)
    plan_env.reset(seed=job.seed)
    try:
        res = solve(plan_env, seed=job.seed, debug=False, vis=False)
    except Exception as e:  # the planner gives up on some scenes (no IK solution, ...): a failed attempt
        print(f"{job.task} seed {job.seed}: the motion planner failed ({type(e).__name__}: {e})", file=sys.stderr)
        res = -1
    plan = list(plan_env.actions)
    obs = env.reset([job.seed])
    if (isinstance(res, int) and res == -1) or not plan:
        return obs.instruction[0]  # planning failed: no steps, not a success
    # 2. re-execute in pd_ee_delta_pose in the task env, from the same initial state
    plan_env.reset(seed=job.seed)
    s_plan, s_task = plan_env.unwrapped.get_state(), env._u.get_state()
    if s_plan.shape != s_task.shape or not torch.allclose(s_plan, s_task, atol=1e-4):
        raise DemoError(f"{job.task} seed {job.seed}: the planner's env and the task env start in different states")
    proxy = _TaskEnvAsGym(env, rec, obs)
    from_pd_joint_pos("pd_ee_delta_pose", np.stack(plan), plan_env, proxy)
    # 3. hold the last gripper command, no motion, until success settles
    hold = np.zeros(7, np.float32)
    hold[6] = rec.action[-1][6] if rec.action else 1.0
    for _ in range(PLANNER_SETTLE_STEPS):
        if job.success_hold and rec.held() >= job.success_hold:
            break
        proxy.step(hold)
    return obs.instruction[0]


#: an episode's key: its seed and, with --all-instructions, the instruction's index (else None)
Key = Tuple[int, Optional[int]]


def episode_path(raw_dir: str, task: str, seed: int, instruction_index: Optional[int] = None) -> str:
    suffix = "" if instruction_index is None else f"__i{int(instruction_index)}"
    return os.path.join(raw_dir, f"{task}__seed{int(seed):05d}{suffix}.npz")


def _key(record: Dict[str, Any]) -> Key:
    k = record.get("instruction_index")
    return int(record["seed"]), (None if k is None else int(k))


def _parse_episode_name(name: str, prefix: str) -> Optional[Key]:
    """``TASK__seed00012.npz`` -> (12, None), ``TASK__seed00012__i3.npz`` -> (12, 3); other names -> None."""
    if not name.startswith(prefix) or not name.endswith(".npz") or name.endswith(".tmp.npz"):
        return None
    seed, _, index = name[len(prefix):-4].partition("__i")
    try:
        return int(seed), (int(index) if index else None)
    except ValueError:
        return None


def collect_episode(job: DemoJob) -> Dict[str, Any]:
    """Demonstrate one seed in this process (cached env); a success is saved to ``raw_dir``; returns the record."""

    t0 = time.perf_counter()
    env = get_env(job.task, image_size=job.image_size, render=True, num_envs=1, max_steps=None, sim_backend="cpu",
                   device="cpu", wrist_camera=job.wrist_camera)
    rec = _Recorder()
    if job.source in SCRIPTED_EXPERTS:
        instruction = _expert_episode(env, job, rec)
    else:
        instruction = _planner_episode(env, job, rec)
    T = len(rec.action)
    success = bool(T and rec.success[-1])
    solved = bool(job.success_hold and rec.held() >= job.success_hold)
    record = {
        "task": job.task, "seed": int(job.seed),
        **({} if job.instruction_index is None else {"instruction_index": int(job.instruction_index)}),
        "source": job.source, "instruction": instruction, "success": success, "success_once": bool(any(rec.success)), "steps": T,
        "horizon": int(env.info.max_episode_steps), "wall_s": round(time.perf_counter() - t0, 3),
    }
    if success:
        path = episode_path(job.raw_dir, job.task, job.seed, job.instruction_index)
        tmp = path + ".tmp.npz"
        np.savez_compressed(
            tmp, image=np.stack(rec.image), state=np.stack(rec.state), action=np.stack(rec.action),
            reward=np.asarray(rec.reward, np.float32), is_terminal=np.bool_(solved),
            record=np.array(json.dumps(record)),
        )
        os.replace(tmp, path)
    return record


# --------------------------------------------------------------------------
# the run

def _read_attempts(raw_dir: str, task: str) -> Dict[Key, Dict[str, Any]]:
    """Attempted episodes (seed, instruction index) -> records; successes whose episode file is missing are
    dropped (redone)."""
    out: Dict[Key, Dict[str, Any]] = {}
    path = os.path.join(raw_dir, ATTEMPTS)
    if os.path.exists(path):
        with open(path) as f:
            for line in f:
                try:
                    r = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a torn last line (killed mid-write)
                out[_key(r)] = r
    for k in [k for k, r in out.items() if r["success"] and not os.path.exists(episode_path(raw_dir, task, *k))]:
        del out[k]
    prefix = f"{task}__seed"
    for fn in os.listdir(raw_dir) if os.path.isdir(raw_dir) else []:
        key = _parse_episode_name(fn, prefix)
        if key is not None and key not in out:  # written, but the run stopped before logging it
            try:
                with np.load(os.path.join(raw_dir, fn)) as z:
                    out[key] = json.loads(str(z["record"]))
            except Exception:
                os.remove(os.path.join(raw_dir, fn))  # unreadable: redo it
    return out


#: demonstration collections (their settings in ``raw/config.json``): what runs from before a field had in effect
RUN_KIND = RunKind(
    "demos", "demonstrations", CONFIG, error=DemoError,
    added={"wrist_camera": False,  # collections from before the wrist camera have none
           "expert": "expert-v1",  # ... and from before expert-v2: expert-v1 made them
           "all_instructions": False},  # ... and from before instruction pairs
)


def _check_config(raw_dir: str, cfg: DemoConfig, source: str, resume: bool) -> None:
    want = {k: v for k, v in asdict(cfg).items() if k not in VOLATILE}
    want["source"] = source
    folder = RunFolder(raw_dir, RUN_KIND)
    if not folder.has_config():
        folder.write_config(want)
        return
    if not resume:
        raise DemoError(f"{cfg.out} already holds demonstrations: add --resume to continue them, or choose another --out")
    have = folder.read_config()
    _, refused = folder.resume_changes(want, have)
    if refused:
        expert = have.get("expert", RUN_KIND.added["expert"])
        hint = f" (resume it with --expert {expert})" if expert != want.get("expert") else ""
        raise DemoError(f"{cfg.out} was collected with other settings ({'; '.join(refused)}){hint}; "
                        f"or use another --out")


def _progress(total: int, initial: int, enabled: bool):
    return tqdm(total=total, initial=initial, unit="demo", desc="demos", disable=not enabled, dynamic_ncols=True,
                file=sys.stderr)


def _kept(attempts: Dict[Key, Dict[str, Any]], keys: List[Key]) -> List[Key]:
    return [k for k in keys if k in attempts and attempts[k]["success"]]


def _candidates(cfg: DemoConfig) -> List[Key]:
    """The episodes to try, in order: seeds from ``seed_start``, each once per instruction with
    ``all_instructions``; ``attempts_cap`` of them."""

    cap = cfg.attempts_cap()
    if not cfg.all_instructions:
        return [(s, None) for s in range(cfg.seed_start, cfg.seed_start + cap)]
    names = task_instructions(cfg.task)
    n = len(names)
    if n < 2:
        raise DemoError(f"--all-instructions: {cfg.task} has one instruction "
                        f"({names[0]!r}); it needs a task that draws its instruction per seed")
    return [(cfg.seed_start + i // n, i % n) for i in range(cap)]


def collect_demos(cfg: DemoConfig, *, resume: bool = False) -> Dict[str, Any]:
    """Collect ``cfg.episodes`` successful demonstrations and write the dataset; returns a summary."""

    info = task_info(cfg.task)  # unknown ids raise with the list of tasks
    source = demo_source(cfg.task, cfg.expert)
    if cfg.episodes < 1:
        raise DemoError(f"--episodes must be >= 1, got {cfg.episodes}")
    problem = executor_problem(cfg.executor, cfg.workers)
    if problem:
        raise DemoError(problem)
    candidates = _candidates(cfg)
    if cfg.seed_start < 0 or candidates[-1][0] >= TRAIN_SEED_LIMIT:
        raise DemoError(f"seeds {cfg.seed_start}..{candidates[-1][0]} reach the evaluation seeds: "
                        f"training seeds must be in 0..{TRAIN_SEED_LIMIT - 1} (lower --seed-start or --max-attempts)")
    raw_dir = os.path.join(cfg.out, RAW)
    _check_config(raw_dir, cfg, source, resume)
    attempts = _read_attempts(raw_dir, cfg.task)
    log_path = os.path.join(raw_dir, ATTEMPTS)
    folder = RunFolder(raw_dir, RUN_KIND)
    folder.event("resume" if attempts else "start", wanted=cfg.episodes, attempted=len(attempts))
    bar = _progress(cfg.episodes, min(cfg.episodes, len(_kept(attempts, candidates))), cfg.progress)
    t0 = time.perf_counter()
    ran: List[Dict[str, Any]] = []

    def finish(r: Dict[str, Any]) -> None:
        append_jsonl(log_path, r)
        attempts[_key(r)] = r
        ran.append(r)
        if r["success"] and bar.n < bar.total:
            bar.update(1)
        tried = [s for s in candidates if s in attempts]
        bar.set_postfix_str(f"kept {len(_kept(attempts, candidates))}/{len(tried)}", refresh=False)

    todo = (DemoJob(cfg.task, s, source, cfg.image_size, cfg.success_hold, os.path.abspath(raw_dir), cfg.wrist_camera, k)
            for s, k in candidates if (s, k) not in attempts)
    need = lambda pending: cfg.episodes - len(_kept(attempts, candidates)) - pending  # noqa: E731
    try:
        run_jobs(collect_episode, todo, finish, executor=cfg.executor, workers=cfg.workers,
                 ray_address=cfg.ray_address, run_dir=raw_dir, more=lambda n_pending: need(n_pending) > 0,
                 log=lambda msg: bar.write(msg, file=sys.stderr))
    finally:
        bar.close()
    wall = time.perf_counter() - t0

    tried = [s for s in candidates if s in attempts]
    kept = _kept(attempts, candidates)[: cfg.episodes]
    last = kept[-1] if len(kept) == cfg.episodes else (tried[-1] if tried else candidates[0])
    order = {k: i for i, k in enumerate(candidates)}
    considered = [k for k in tried if order[k] <= order[last]]
    kept_fraction = len(_kept(attempts, considered)) / max(1, len(considered))
    summary: Dict[str, Any] = {
        "task": cfg.task, "source": source, "episodes": len(kept), "wanted": cfg.episodes,
        "attempts": len(considered), "kept_fraction": round(kept_fraction, 4),
        "seeds": [s for s, _ in kept], "ran": len(ran), "wall_s": round(wall, 2),
        "demos_per_min": round(60.0 * sum(r["success"] for r in ran) / wall, 2) if ran and wall > 0 else None,
        "mean_steps": round(float(np.mean([attempts[s]["steps"] for s in kept])), 1) if kept else None,
        "horizon": int(info.max_episode_steps),
    }
    if cfg.all_instructions:
        summary["instruction_indices"] = [k for _, k in kept]
    if not kept:
        raise DemoError(f"{cfg.task}: no successful demonstration in {len(tried)} attempts (seeds "
                        f"{cfg.seed_start}..{tried[-1][0] if tried else cfg.seed_start}); nothing to write")
    if len(kept) < cfg.episodes:
        print(f"vla-forget demos: only {len(kept)} of {cfg.episodes} demonstrations succeeded in "
              f"{cfg.attempts_cap()} attempts; writing those (raise --max-attempts for more)", file=sys.stderr)
    summary["dataset"] = build_dataset(cfg, source, kept, summary)
    folder.event("done", **{k: summary[k] for k in ("episodes", "attempts", "ran", "wall_s")})
    return summary


def _episodes(raw_dir: str, task: str, keys: List[Key]) -> Iterator[Dict[str, Any]]:
    for s, k in keys:
        with np.load(episode_path(raw_dir, task, s, k)) as z:
            rec = json.loads(str(z["record"]))
            yield dict(image=z["image"], state=z["state"], action=z["action"], reward=z["reward"],
                       is_terminal=bool(z["is_terminal"]), instruction=rec["instruction"], seed=s, task=task,
                       source=rec["source"], **({} if k is None else {"instruction_index": k}))


def build_dataset(cfg: DemoConfig, source: str, keys: List[Key], summary: Dict[str, Any]) -> str:
    """(Re)write the RLDS dataset in ``cfg.out`` from the saved episodes ``keys``; returns its name."""

    name = cfg.name or datasets.dataset_name(cfg.task)
    raw_dir = os.path.join(cfg.out, RAW)
    mpath = os.path.join(cfg.out, datasets.MANIFEST)
    indices = [k for _, k in keys] if cfg.all_instructions else None
    if os.path.exists(mpath):
        with open(mpath) as f:
            old = json.load(f)
        if (old.get("seeds") == [s for s, _ in keys] and old.get("instruction_indices") == indices
                and old.get("name") == name):
            return name  # already written (a resumed run with nothing new)
    with np.load(episode_path(raw_dir, cfg.task, *keys[0])) as z:
        image_shape, state_dim = tuple(z["image"].shape[1:]), int(z["state"].shape[1])
    extra = {
        "source": source,
        "collection": {k: summary[k] for k in ("attempts", "kept_fraction", "mean_steps", "horizon")},
        "seed_start": cfg.seed_start,
        "success_hold": cfg.success_hold,
        "image_size": cfg.image_size,
        "cameras": ["front", "wrist"] if cfg.wrist_camera else ["front"],
        "software": software_versions(),
        **({"instruction_indices": indices} if indices is not None else {}),
    }
    datasets.write_dataset(
        cfg.out, _episodes(raw_dir, cfg.task, keys), name=name, image_shape=image_shape, state_dim=state_dim,
        description=f"vla-forget demonstrations of {cfg.task} by {source}", manifest_extra=extra,
    )
    return name
