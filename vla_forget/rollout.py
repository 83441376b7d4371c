"""Rolling out a policy on a task: the one episode loop used by bench and adaptation.

``run_episodes`` drives a (possibly batched) task env for a list of seeds and
returns one record per episode. Worker processes keep their envs and policies
between jobs (env creation costs seconds), so a job can be a single episode:
a finished episode is never lost when a run is interrupted.
"""

from __future__ import annotations

import hashlib
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence

import numpy as np


@dataclass
class EpisodeJob:
    """Episodes of one policy on one task (picklable: sent to worker processes)."""

    policy_key: str
    policy_spec: str
    policy_hash: str
    task: str
    seeds: List[int]
    max_episode_steps: Optional[int] = None
    image_size: int = 128
    greedy: bool = False
    #: sampling temperature when not greedy (the spec's decoding; policies without a distribution ignore it)
    temperature: float = 1.0
    video_seeds: List[int] = field(default_factory=list)
    video_dir: Optional[str] = None
    #: the videos' review camera size in pixels (ManiSkill tasks; 0: the policy camera's frames)
    review_size: int = 0
    #: record observations for the divergences into states_dir (vla_forget.states): ``state_index`` maps each
    #: seed that records to its index among the task's ``state_episodes`` episodes, of ``state_n`` states in all
    states_dir: Optional[str] = None
    state_rule: str = "spread-v1"
    state_n: int = 0
    state_episodes: int = 0
    state_index: Dict[int, int] = field(default_factory=dict)
    state_stride: int = 5
    #: give the env's wrist camera too (True), whether or not the policy reads it (None: as the policy)
    wrist_camera: Optional[bool] = None
    #: False: the episodes run only to record their states; their records are not kept (bench drops them)
    record: bool = True
    device: str = "cpu"
    num_envs: int = 1
    sim_backend: str = "auto"
    #: render camera images even if the policy does not read them (None: as the policy, videos and states need)
    render: Optional[bool] = None


# --- per-process caches (worker processes live for the whole run) ----------
_POLICIES: Dict[str, Any] = {}


def die_with_parent() -> None:
    """On Linux, ask the kernel to end this worker when the process that started it dies (killed, not
    just interrupted), so that no orphaned simulator keeps a core busy after its run is gone."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes
    import signal

    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() == 1:  # the parent died before the request took effect
        os._exit(1)


def worker_init(render_threads: Optional[int] = None) -> None:
    """Per-process set-up: one torch thread; with several worker processes, Mesa's software
    renderer (lavapipe) rasterises in the worker's own thread instead of starting a thread per
    core, so that processes do not oversubscribe the cores (a user's LP_NUM_THREADS wins)."""
    import torch

    die_with_parent()
    torch.set_num_threads(1)
    if render_threads is not None:
        os.environ.setdefault("LP_NUM_THREADS", str(render_threads))


def act(policy: Any, obs: Any, *, greedy: bool, temperature: float = 1.0, generator: Any = None):
    """``policy.act`` with the episode's decoding: the temperature reaches policies with a distribution only."""
    from vla_forget.policies.base import TokenPolicy

    if isinstance(policy, TokenPolicy) and not greedy and temperature != 1.0:
        return policy.act(obs, greedy=False, temperature=temperature, generator=generator)
    return policy.act(obs, greedy=greedy, generator=generator)


def get_policy(spec: str, device: str):
    """The policy ``spec`` on ``device``, loaded once per process and kept until another is asked for (every
    episode loop's policy source, as :data:`ENVS` is their env source)."""
    key = f"{spec}@{device}"
    if key not in _POLICIES:
        from vla_forget.policies import load_policy

        p = load_policy(spec, device=device)
        if hasattr(p, "eval"):
            p.eval()
        _POLICIES.clear()  # one policy per process at a time keeps memory flat
        _POLICIES[key] = p
    return _POLICIES[key]


class EnvCache:
    """The task envs a process keeps warm between jobs: at most ``max_envs``, keyed by how they were made (the
    oldest is closed first). Called as ``ENVS(task, image_size=..., render=..., ...)``: the env for those settings,
    made on first use with ``make_task_env``."""

    def __init__(self, max_envs: int = 2):
        self.max_envs = int(max_envs)
        self._envs: Dict[tuple, Any] = {}

    def __call__(self, task: str, *, image_size: int, render: bool, num_envs: int, max_steps: Optional[int],
                 sim_backend: str, device: str, wrist_camera: bool = False, dense_reward: bool = True,
                 privileged: bool = True, review_size: int = 0):
        wrist_camera = bool(wrist_camera and render)
        review_size = int(review_size) if render else 0
        key = (task, image_size, render, num_envs, max_steps, sim_backend, wrist_camera, dense_reward, privileged,
               review_size)
        if key not in self._envs:
            from vla_forget.envs import make_task_env

            while len(self._envs) >= self.max_envs:
                self._envs.pop(next(iter(self._envs))).close()
            kwargs: Dict[str, Any] = dict(num_envs=num_envs, image_size=image_size, render_images=render,
                                          privileged=privileged, sim_backend=sim_backend, wrist_camera=wrist_camera,
                                          dense_reward=dense_reward)
            if max_steps is not None:
                kwargs["max_episode_steps"] = max_steps
            if review_size:
                kwargs["review_size"] = review_size
            self._envs[key] = make_task_env(task, **kwargs)
        return self._envs[key]

    def envs(self) -> List[Any]:
        """The envs held now (oldest first)."""
        return list(self._envs.values())

    def close(self) -> None:
        while self._envs:
            self._envs.popitem()[1].close()


#: This process's env source, the one seam every episode loop gets its envs through (bench, adaptation
#: rollouts, DAgger, demos). Any callable with :class:`EnvCache`'s call signature can replace it (tests put
#: a fake task's env there; another executor may put its own).
ENVS: Any = EnvCache()


def get_env(task: str, **kwargs: Any):
    """The env of ``task`` with ``kwargs`` (see :class:`EnvCache`) from this process's :data:`ENVS`."""
    return ENVS(task, **kwargs)


def close_all() -> None:
    if hasattr(ENVS, "close"):
        ENVS.close()
    _POLICIES.clear()


def worker_pool(workers: int):
    """``workers`` spawned simulator processes (the one pool type of bench, demos and adaptation rollouts);
    with several, each rasterises in its own thread (see :func:`worker_init`)."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    return ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn"), initializer=worker_init,
                               initargs=(0 if workers > 1 else None,))


def run_parallel(fn: Callable[[Any], Any], jobs: Iterable[Any], workers: int, on_result: Callable[[Any], None],
                 *, more: Callable[[int], bool] = lambda n_pending: True) -> None:
    """Run ``fn(job)`` for each job in ``workers`` spawned processes (0: in this process).

    Results reach ``on_result`` in the main process as they finish, so the
    caller can persist each one at once. At most ``2 * workers`` jobs are in
    flight, so an interrupt leaves little unfinished; ``more(n_pending)``
    returning False stops submitting (e.g. when enough demos succeeded).
    Worker processes keep their envs and policies between jobs.
    """
    jobs = iter(jobs)
    if workers <= 0:
        worker_init()
        try:
            for job in jobs:
                if not more(0):
                    break
                on_result(fn(job))
        finally:
            close_all()
        return
    from concurrent.futures import FIRST_COMPLETED, wait

    with worker_pool(workers) as pool:
        pending: set = set()

        def refill() -> None:
            while len(pending) < 2 * workers and more(len(pending)):
                job = next(jobs, None)
                if job is None:
                    return
                pending.add(pool.submit(fn, job))

        refill()
        try:
            while pending:
                done, rest = wait(pending, return_when=FIRST_COMPLETED)
                pending.clear()
                pending.update(rest)
                for f in done:
                    on_result(f.result())
                refill()
        except BaseException:
            for f in pending:
                f.cancel()
            raise


def episode_generator_seed(policy_hash: str, task: str, seed: int) -> int:
    h = hashlib.sha256(f"{policy_hash}|{task}|{seed}".encode()).digest()
    return int.from_bytes(h[:8], "little") & ((1 << 63) - 1)


def run_job(job: EpisodeJob) -> List[Dict[str, Any]]:
    """Run a job in this process, with cached env and policy."""
    policy = get_policy(job.policy_spec, job.device)
    want_frames = bool(job.video_seeds) and job.video_dir is not None
    render = bool(job.render or getattr(policy, "needs_image", True) or want_frames or job.state_index)
    wrist = job.wrist_camera if job.wrist_camera is not None else bool(getattr(policy, "wrist_camera", False))
    env = get_env(job.task, image_size=job.image_size, render=render, num_envs=job.num_envs,
                   max_steps=job.max_episode_steps, sim_backend=job.sim_backend, device=job.device,
                   wrist_camera=wrist, dense_reward=False, review_size=job.review_size,  # an evaluation reads the success only
                   # the simulator state only scripted experts read (~0.8 ms a step); an env shared by every
                   # policy of a task (job.render) keeps it for them
                   privileged=bool(getattr(policy, "needs_privileged", False) or job.render))
    return run_episodes(env, policy, job)


def run_episodes(env, policy, job: EpisodeJob) -> List[Dict[str, Any]]:
    """Run ``job.seeds`` in batches of ``env.num_envs``; one record per episode."""
    records: List[Dict[str, Any]] = []
    N = env.num_envs
    for start in range(0, len(job.seeds), N):
        chunk = list(job.seeds[start:start + N])
        n_real = len(chunk)
        chunk += [chunk[-1]] * (N - n_real)  # batched envs have a fixed width: pad, drop later
        records.extend(_run_batch(env, policy, job, chunk)[:n_real])
    return records


def _run_batch(env, policy, job: EpisodeJob, seeds: Sequence[int]) -> List[Dict[str, Any]]:
    import torch

    from vla_forget.episodes import Recorder, run_episode
    from vla_forget.policies.base import views_for
    from vla_forget.states import episode_steps, slots_key, state_path, write_states

    t0 = time.perf_counter()
    N = len(seeds)
    gen = torch.Generator(device=job.device if job.device != "auto" else "cpu")
    gen.manual_seed(episode_generator_seed(job.policy_hash, job.task, seeds[0]))
    policy.reset(N)
    T = env.info.max_episode_steps if job.max_episode_steps is None else job.max_episode_steps
    video_rows = [i for i, s in enumerate(seeds) if s in job.video_seeds and job.video_dir]
    frames: Dict[int, list] = {i: [] for i in video_rows}
    # the steps at which each row records its state (padding rows repeat a seed: recorded once)
    record_at: Dict[int, set] = {}
    if job.states_dir:
        for i, s in enumerate(seeds):
            if int(s) in job.state_index and int(s) not in [int(x) for x in seeds[:i]]:
                record_at[i] = set(episode_steps(job.state_rule, n_states=job.state_n, n_episodes=job.state_episodes,
                                                 index=job.state_index[int(s)], length=T, stride=job.state_stride))
    states: Dict[int, Dict[str, list]] = {i: {"image": [], "state": [], "step": []} for i in record_at}

    class Frames(Recorder):  # the video rows' review frames, the first one and one after each step
        def start(self, obs):
            self.grab()

        def after(self, *_):
            self.grab()

        def grab(self):
            f = env.review_frames()
            for i in video_rows:
                frames[i].append(np.asarray(f[i]))

    class States(Recorder):  # the divergence states: each recorded row's observation at its chosen steps
        def before(self, t, obs):
            for i, at in record_at.items():
                if t in at:
                    states[i]["image"].append(obs.image[i].cpu().numpy())
                    states[i]["state"].append(obs.state[i].cpu().numpy())
                    states[i]["step"].append(t)

    out_ = run_episode(
        env, lambda obs: act(policy, views_for(policy, obs), greedy=job.greedy, temperature=job.temperature, generator=gen),
        seeds, max_steps=T, recorders=[r for r, on in ((Frames(), video_rows), (States(), record_at)) if on])
    instructions, success, once, first, ret = out_.instructions, out_.success, out_.once, out_.first, out_.ret
    steps, env_stats = out_.steps, out_.env_stats
    wall = time.perf_counter() - t0
    out = []
    for i, seed in enumerate(seeds):
        rec: Dict[str, Any] = {
            "policy": job.policy_key, "policy_hash": job.policy_hash, "task": job.task, "seed": int(seed),
            "instruction": instructions[i], "success_at_end": bool(success[i]), "success_once": bool(once[i]),
            "first_success_step": int(first[i]) if once[i] else None, "steps": steps, "return": float(ret[i]),
            "wall_s": round(wall / N, 4), "video": None, "n_states": 0,
        }
        if env_stats is not None:
            rec["env_stats"] = env_stats[i]
        if not job.record:
            rec["states_only"] = True
        if i in frames:
            from vla_forget.video import captioned, outcome_border, poster_name, video_name, write_mp4, write_poster

            os.makedirs(job.video_dir, exist_ok=True)
            name = video_name(job.task, int(seed), bool(success[i]), instructions[i])
            review = bool(getattr(env, "review_size", 0))  # a review camera's frames get the instruction as caption
            clip = outcome_border(captioned(frames[i], instructions[i]) if review else frames[i], bool(success[i]))
            write_mp4(os.path.join(job.video_dir, name), clip)
            write_poster(os.path.join(job.video_dir, poster_name(name)), clip[-1])
            rec["video"] = name
        if states.get(i, {}).get("state"):
            write_states(state_path(job.states_dir, job.task, int(seed)), image=states[i]["image"],
                         state=states[i]["state"], step=states[i]["step"], length=steps, instruction=instructions[i],
                         rule=job.state_rule, slots=slots_key(job.state_rule, job.state_n, job.state_episodes,
                                                              job.state_index[int(seed)], job.state_stride))
            rec["n_states"] = len(states[i]["state"])
        out.append(rec)
    return out
