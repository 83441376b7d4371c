"""On-policy trajectories for adaptation: collecting them, and saving the successful ones.

:class:`Collector` rolls out the *current* policy on the target task and
returns a :class:`Trajectories` batch: per step the camera image, proprio
state, the 7 sampled action tokens and their joint log-probability under the
sampling policy, the reward (``AdaptConfig.reward``), done and success flags
and ManiSkill's dense reward; per episode the instruction and seed. Every
episode runs to the task's length (the task contract), so a batch is a
rectangle ``[E episodes, T steps]``.

Where the simulator runs:

* CPU (``workers >= 1``): a pool of spawned worker processes that lives for the
  whole run, one single-env simulator each (env creation costs seconds, so the
  env is kept between updates). Before each collection the trainer writes the
  policy's ``state_dict`` to ``RUN/rollout_weights.pt`` (atomically); a job
  names that file and a version (the update), and a worker reloads weights
  only when the version changed. One job is one episode.
* In the trainer's process (``workers == 0``, or ``num_envs > 1``, which is
  ManiSkill's GPU physics with ``num_envs`` envs in one process): the live
  policy acts on a batch of envs, batched inference on the policy's device.

Sampling is seeded per episode (a generator seeded by ``gen_seed``), so a
batch depends only on the weights, the env seeds and the generator seeds — not
on the number of workers or on which worker ran which episode.

:class:`TraceWriter` keeps the successful episodes of an RL run for
``rl-trace-sft``: each is written at once as an uncompressed ``.npz`` into
``RUN/traces/pending/`` (cheap), and at every checkpoint the pending episodes
become one RLDS dataset ``RUN/traces/update-NNNNNN/`` (written with
:func:`vla_forget.datasets.write_dataset`, read with
:func:`vla_forget.datasets.open_dataset`); its actions are the decoded sampled
tokens, which re-encode to the same tokens with the policy's statistics.
"""

from __future__ import annotations

import glob
import os
import shutil
import sys
import time
from dataclasses import dataclass, fields
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from vla_forget import rollout
from vla_forget.episodes import Recorder, run_episode
from vla_forget.adapt import RL_METHODS, checkpoint_name
from vla_forget.adapt.common import ROLLOUT_WEIGHTS
from vla_forget.policies import load_policy
from vla_forget.policies.base import Observation

TRACES_DIR = "traces"
PENDING_DIR = "pending"


# --------------------------------------------------------------------------
# a batch of trajectories

@dataclass
class Trajectories:
    """Episodes of equal length ``T`` as numpy arrays (``E`` episodes)."""

    image: np.ndarray  # uint8 [E, T, H, W, 3]
    state: np.ndarray  # float32 [E, T, S]
    instruction: List[str]  # [E]
    tokens: np.ndarray  # uint8 [E, T, 7] sampled bin indices
    logp: np.ndarray  # float32 [E, T] joint log-probability of the 7 tokens under the sampling policy
    success: np.ndarray  # bool [E, T] info["is_success"] after the step's action
    dense: np.ndarray  # float32 [E, T] ManiSkill's normalised dense reward after the step's action
    seeds: np.ndarray  # int64 [E]
    wall_s: float = 0.0  # wall-clock seconds of the collection
    reward: Optional[np.ndarray] = None  # float32 [E, T] per-step rewards (set by the Collector: AdaptConfig.reward)
    logp_tokens: Optional[np.ndarray] = None  # float32 [E, T, 7] each token's log-probability given its prefix

    @property
    def num_episodes(self) -> int:
        return int(self.tokens.shape[0])

    @property
    def horizon(self) -> int:
        return int(self.tokens.shape[1])

    @property
    def num_steps(self) -> int:
        return self.num_episodes * self.horizon

    @property
    def done(self) -> np.ndarray:
        """bool [E, T]: the episode ends after this step (the last step of the fixed length)."""
        d = np.zeros(self.tokens.shape[:2], bool)
        d[:, -1] = True
        return d

    @property
    def success_at_end(self) -> np.ndarray:
        return self.success[:, -1]

    @property
    def success_once(self) -> np.ndarray:
        return self.success.any(axis=1)

    @classmethod
    def concat(cls, parts: Sequence[Dict[str, Any]]) -> "Trajectories":
        """Stack per-job results (dicts of [n, T, ...] arrays) in the given order."""
        cat = lambda k: np.concatenate([p[k] for p in parts])  # noqa: E731
        return cls(image=cat("image"), state=cat("state"), instruction=[s for p in parts for s in p["instruction"]],
                   tokens=cat("tokens"), logp=cat("logp"), logp_tokens=cat("logp_tokens"), success=cat("success"), dense=cat("dense"),
                   seeds=cat("seeds"), wall_s=float(sum(p["wall_s"] for p in parts)))

    #: fields that are not per-episode arrays
    _NOT_ARRAYS = ("instruction", "wall_s")

    def select(self, idx: Sequence[int]) -> "Trajectories":
        """The episodes ``idx`` (indices), in that order."""
        arrays = {f.name: None if getattr(self, f.name) is None else getattr(self, f.name)[np.asarray(idx)]
                  for f in fields(self) if f.name not in self._NOT_ARRAYS}
        return Trajectories(instruction=[self.instruction[int(i)] for i in idx], wall_s=self.wall_s, **arrays)

    @classmethod
    def join(cls, parts: Sequence["Trajectories"]) -> "Trajectories":
        """Batches of episodes of one length, one after the other (a field some batch lacks is left out)."""
        arrays = {}
        for f in fields(cls):
            if f.name not in cls._NOT_ARRAYS:
                got = [getattr(p, f.name) for p in parts]
                arrays[f.name] = None if any(a is None for a in got) else np.concatenate(got)
        return cls(instruction=[s for p in parts for s in p.instruction], wall_s=sum(p.wall_s for p in parts), **arrays)

    # flat views: step i of the batch is episode i // T, step i % T
    def flat(self, name: str) -> np.ndarray:
        a = getattr(self, name)
        return a.reshape((self.num_steps,) + a.shape[2:])

    def batch(self, idx: np.ndarray) -> Dict[str, Any]:
        """Flat steps ``idx`` as the numpy batch dict the SFT loss takes (image, state, instruction, tokens)."""
        idx = np.asarray(idx, np.int64)
        T = self.horizon
        return {"image": self.flat("image")[idx], "state": self.flat("state")[idx],
                "instruction": [self.instruction[int(i) // T] for i in idx],
                "tokens": self.flat("tokens")[idx].astype(np.int64)}

    def observation(self, idx: np.ndarray, device: str):
        """Flat steps ``idx`` as a policy Observation on ``device``."""

        b = self.batch(idx)
        return Observation(image=torch.from_numpy(b["image"]).to(device), state=torch.from_numpy(b["state"]).to(device),
                           instruction=b["instruction"])


# --------------------------------------------------------------------------
# one batch of envs, rolled out to the episode length

def run_episodes(env, policy, seeds: Sequence[int], gen_seed: int, device: str, temperature: float = 1.0) -> Dict[str, Any]:
    """Roll out ``policy`` (sampling at ``temperature``) on ``env`` from ``seeds`` (one per env); arrays [N, T, ...].
    The log-probabilities kept are those of the distribution sampled from (the tempered one)."""

    t0 = time.perf_counter()
    N = len(seeds)
    gen = torch.Generator(device=device).manual_seed(int(gen_seed))
    policy.reset(N)
    images, states, tokens, logps, success, dense = [], [], [], [], [], []

    def act(obs):  # sample the 7 tokens, keep them and their log-probabilities, decode the action
        tok, logits = policy.sample_tokens(obs, generator=gen, temperature=temperature)
        lp = torch.log_softmax(logits.float() / temperature, dim=-1).gather(-1, tok.unsqueeze(-1)).squeeze(-1)  # [N, 7]
        tokens.append(tok.cpu().numpy().astype(np.uint8))
        logps.append(lp.cpu().numpy().astype(np.float32))
        return policy.decode_actions(tok)

    class Trajectory(Recorder):  # the observations, successes and (shaped) rewards of every step
        def before(self, t, obs):
            if obs.image is None:
                raise RuntimeError("adaptation rollouts need camera images: the env was made without rendering")
            images.append(obs.image.cpu().numpy())
            states.append(obs.state.float().cpu().numpy())

        def after(self, t, obs, action, next_obs, reward, ok, info):
            success.append(ok.numpy())
            dense.append(torch.as_tensor(info.get("dense_reward", reward)).float().cpu().reshape(N).numpy())

    instructions = run_episode(env, act, seeds, recorders=[Trajectory()]).instructions
    stack = lambda xs, dtype: np.stack(xs, axis=1).astype(dtype, copy=False)  # noqa: E731  [N, T, ...]
    return {"image": stack(images, np.uint8), "state": stack(states, np.float32), "instruction": instructions,
            "tokens": stack(tokens, np.uint8), "logp": stack(logps, np.float32).sum(-1),
            "logp_tokens": stack(logps, np.float32), "success": stack(success, bool),
            "dense": stack(dense, np.float32), "seeds": np.asarray(seeds, np.int64), "wall_s": time.perf_counter() - t0}


# --------------------------------------------------------------------------
# worker processes

@dataclass
class RolloutJob:
    """Episodes for one worker (picklable)."""

    task: str
    seeds: List[int]
    gen_seed: int
    policy: str
    """the policy's architecture: a checkpoint folder (the run's update-000000)"""
    weights: Optional[str]
    """a state_dict file written by the trainer (None: the checkpoint's own weights)"""
    version: int
    """changes whenever the trainer rewrites ``weights``"""
    weights_ref: Any = None
    """on a Ray cluster: the trainer's state_dict in Ray's object store (instead of ``weights``)"""
    image_size: int = 128
    max_episode_steps: Optional[int] = None
    device: str = "cpu"
    temperature: float = 1.0


#: per worker process: key -> [policy, (weights path, version) loaded]
_TRAINEE: Dict[str, list] = {}


def _trainee(job: RolloutJob):
    key = f"{job.policy}@{job.device}"
    if key not in _TRAINEE:
        _TRAINEE.clear()
        _TRAINEE[key] = [load_policy(job.policy, device=job.device).eval(), None]
    entry = _TRAINEE[key]
    if job.weights_ref is not None and entry[1] != ("object store", job.version):
        import ray

        entry[0].load_state_dict({k: v.to(job.device) for k, v in ray.get(job.weights_ref).items()})
        entry[1] = ("object store", job.version)
    elif job.weights is not None and entry[1] != (job.weights, job.version):
        state = torch.load(job.weights, map_location=job.device, weights_only=True)
        entry[0].load_state_dict(state)
        entry[1] = (job.weights, job.version)
    return entry[0]


def collect_indexed(item: Tuple[int, RolloutJob]) -> Tuple[int, Dict[str, Any]]:
    """:func:`collect_job` keeping the job's place (results of a cluster come back as they finish)."""
    i, job = item
    return i, collect_job(job)


def collect_job(job: RolloutJob) -> Dict[str, Any]:
    """Run one job in this process (a worker): cached env, policy with the job's weights."""

    policy = _trainee(job)
    env = rollout.get_env(job.task, image_size=job.image_size, render=True, num_envs=len(job.seeds),
                           max_steps=job.max_episode_steps, sim_backend="cpu", device=job.device,
                           wrist_camera=bool(getattr(policy, "wrist_camera", False)))
    return run_episodes(env, policy, job.seeds, job.gen_seed, job.device, job.temperature)


class Collector:
    """Collects on-policy trajectories of the current policy (see the module docstring)."""

    def __init__(self, *, task: str, policy_dir: str, weights_path: str, workers: int, num_envs: int = 1,
                 image_size: int = 128, max_episode_steps: Optional[int] = None, device: str = "cpu",
                 reward: str = "success", temperature: float = 1.0, executor: str = "local",
                 ray_address: str = "auto"):
        self.task, self.policy_dir, self.weights_path, self.reward = task, policy_dir, weights_path, reward
        self.temperature = float(temperature)
        self.num_envs = max(1, int(num_envs))
        self.workers = 0 if self.num_envs > 1 else max(0, int(workers))
        self.image_size, self.max_episode_steps, self.device = int(image_size), max_episode_steps, device
        self._pool = None
        self.executor, self.ray_address = executor, ray_address
        self._ray = None  # the RayExecutor, its actors kept for every update
        self._weights: Tuple[int, Any] = (-1, None)  # (version, object-store reference)

    def collect(self, policy, seeds: Sequence[int], gen_seeds: Sequence[int], version: int) -> Trajectories:
        """Episodes from ``seeds`` (generator seeds ``gen_seeds``, one per episode), in that order."""
        if len(seeds) != len(gen_seeds) or not len(seeds):
            raise ValueError(f"need one generator seed per env seed, got {len(seeds)} and {len(gen_seeds)}")
        t0 = time.perf_counter()
        was_training = policy.training
        policy.eval()
        try:
            if self.workers == 0:
                parts = self._in_process(policy, list(seeds), list(gen_seeds))
            elif self.executor == "ray":
                parts = self._on_ray(policy, list(seeds), list(gen_seeds), version)
            else:
                parts = self._in_workers(policy, list(seeds), list(gen_seeds), version)
        finally:
            policy.train(was_training)
        from vla_forget.adapt.common import episode_rewards

        traj = Trajectories.concat(parts)
        traj.reward = episode_rewards(traj.success, traj.dense, self.reward)
        traj.wall_s = time.perf_counter() - t0
        return traj

    def _in_process(self, policy, seeds: List[int], gen_seeds: List[int]) -> List[Dict[str, Any]]:
        N = self.num_envs
        env = rollout.get_env(self.task, image_size=self.image_size, render=True, num_envs=N,
                               max_steps=self.max_episode_steps, sim_backend="gpu" if N > 1 else "cpu",
                               device=self.device, wrist_camera=bool(getattr(policy, "wrist_camera", False)))
        parts = []
        for i in range(0, len(seeds), N):
            chunk = seeds[i:i + N]
            n_real = len(chunk)
            part = run_episodes(env, policy, chunk + [chunk[-1]] * (N - n_real), gen_seeds[i], self.device,
                                self.temperature)
            if n_real < N:  # a batched env has a fixed width: drop the padding
                part = {k: (v[:n_real] if k != "wall_s" else v) for k, v in part.items()}
            parts.append(part)
        return parts

    def _in_workers(self, policy, seeds: List[int], gen_seeds: List[int], version: int) -> List[Dict[str, Any]]:
        tmp = self.weights_path + ".tmp"
        torch.save({k: v.detach().cpu() for k, v in policy.state_dict().items()}, tmp)
        os.replace(tmp, self.weights_path)
        if self._pool is None:
            from vla_forget.rollout import worker_pool

            self._pool = worker_pool(self.workers)  # bench's pool: the same worker set-up
        jobs = [RolloutJob(task=self.task, seeds=[s], gen_seed=g, policy=self.policy_dir, weights=self.weights_path,
                           version=int(version), image_size=self.image_size, max_episode_steps=self.max_episode_steps,
                           temperature=self.temperature)
                for s, g in zip(seeds, gen_seeds)]
        futures = [self._pool.submit(collect_job, j) for j in jobs]
        try:
            return [f.result() for f in futures]
        except BaseException:
            for f in futures:
                f.cancel()
            raise

    def _on_ray(self, policy, seeds: List[int], gen_seeds: List[int], version: int) -> List[Dict[str, Any]]:
        """The episodes on a Ray cluster's actors (vla_forget.executors), the weights through its object store."""
        from vla_forget.executors import RayExecutor

        if self._ray is None:
            self._ray = RayExecutor(self.ray_address, self.workers, device=self.device,
                                    log=lambda msg: print(msg, file=sys.stderr))
        if self._weights[0] != int(version):
            self._ray.connect()
            state = {k: v.detach().cpu() for k, v in policy.state_dict().items()}
            self._weights = (int(version), self._ray.ray.put(state))
        jobs = [(i, RolloutJob(task=self.task, seeds=[s], gen_seed=g, policy=os.path.abspath(self.policy_dir),
                               weights=None, version=int(version), weights_ref=self._weights[1],
                               image_size=self.image_size, max_episode_steps=self.max_episode_steps,
                               temperature=self.temperature))
                for i, (s, g) in enumerate(zip(seeds, gen_seeds))]
        parts: Dict[int, Dict[str, Any]] = {}
        self._ray.run(collect_indexed, jobs, lambda r: parts.__setitem__(r[0], r[1]), keep_workers=True)
        return [parts[i] for i in range(len(jobs))]

    def close(self) -> None:
        if self._ray is not None:
            self._ray.stop()
            self._ray = None
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        if self.workers == 0:
            from vla_forget import rollout

            rollout.close_all()
        if os.path.exists(self.weights_path):
            os.remove(self.weights_path)


# --------------------------------------------------------------------------
# successful traces of RL runs

def trace_name(update: int) -> str:
    return f"update-{int(update):06d}"


class TraceWriter:
    """Successful episodes of an RL run -> ``RUN/traces/update-NNNNNN/`` RLDS datasets (see the module docstring)."""

    def __init__(self, run_dir: str, task: str, source: str, decode: Callable[[np.ndarray], np.ndarray], enabled: bool = True):
        self.root = os.path.join(run_dir, TRACES_DIR)
        self.pending = os.path.join(self.root, PENDING_DIR)
        self.task, self.source, self.decode, self.enabled = task, source, decode, enabled
        if enabled:
            os.makedirs(self.pending, exist_ok=True)

    def forget_after(self, update: int) -> None:
        """On resume from checkpoint ``update``: drop what later (redone) updates wrote."""
        if not os.path.isdir(self.root):
            return
        shutil.rmtree(self.pending, ignore_errors=True)
        for d in glob.glob(os.path.join(self.root, "update-*")):
            digits = os.path.basename(d)[len("update-"):]
            if not digits.isdigit() or int(digits) > update:
                shutil.rmtree(d, ignore_errors=True)
        if self.enabled:
            os.makedirs(self.pending, exist_ok=True)

    def add(self, traj: Trajectories, update: int) -> int:
        """Write the episodes that end in success; returns how many."""
        if not self.enabled:
            return 0
        kept = 0
        for e in np.nonzero(traj.success_at_end)[0]:
            path = os.path.join(self.pending, f"{trace_name(update)}-{int(e):04d}.npz")
            actions = self.decode(traj.tokens[e].astype(np.int64)).astype(np.float32)
            reward = np.zeros(traj.horizon, np.float32)
            reward[traj.success[e]] = 1.0
            tmp = path + ".tmp.npz"
            np.savez(tmp, image=traj.image[e], state=traj.state[e], tokens=traj.tokens[e], action=actions, reward=reward,
                     instruction=np.array(traj.instruction[e]), seed=np.int64(traj.seeds[e]), update=np.int64(update))
            os.replace(tmp, path)
            kept += 1
        return kept

    def flush(self, update: int) -> Optional[str]:
        """Turn the pending episodes into the dataset ``traces/update-NNNNNN`` (at a checkpoint); returns its path."""
        if not self.enabled:
            return None
        files = sorted(f for f in glob.glob(os.path.join(self.pending, "*.npz")) if not f.endswith(".tmp.npz"))
        if not files:
            return None
        from vla_forget.datasets import write_dataset

        with np.load(files[0]) as first:
            image_shape, state_dim = tuple(first["image"].shape[1:]), int(first["state"].shape[1])
        out = os.path.join(self.root, trace_name(update))

        def episodes():
            for f in files:
                with np.load(f) as z:
                    ep = {k: z[k] for k in z.files}
                yield {"image": ep["image"], "state": ep["state"], "action": ep["action"], "reward": ep["reward"],
                       "instruction": str(ep["instruction"]), "seed": int(ep["seed"]), "task": self.task,
                       "is_terminal": True, "source": f"{self.source} update {int(ep['update'])}"}

        write_dataset(out, episodes(), name=f"rl_traces_{int(update):06d}", image_shape=image_shape, state_dim=state_dim,
                      description=f"successful rollouts of {self.source} on {self.task}",
                      manifest_extra={"kind": "rl-traces", "source": self.source})
        for f in files:
            os.remove(f)
        return out


def trace_datasets(run_dir: str, until: Optional[int] = None) -> List[str]:
    """The trace datasets of an RL run (``RUN/traces/update-NNNNNN``), oldest first, up to update ``until``."""
    root = os.path.join(run_dir, TRACES_DIR)
    out = []
    for d in glob.glob(os.path.join(root, "update-*")):
        digits = os.path.basename(d)[len("update-"):]
        if digits.isdigit() and os.path.exists(os.path.join(d, "dataset.json")) and (until is None or int(digits) <= until):
            out.append((int(digits), d))
    return [d for _, d in sorted(out)]


# --------------------------------------------------------------------------
# wiring for a run

def collector_for(run) -> Collector:
    """The run's collector: the architecture from its checkpoint 0, weights through RUN/rollout_weights.pt."""

    cfg = run.cfg
    return Collector(task=run.task, policy_dir=os.path.join(run.ckpt_root, checkpoint_name(0)),
                     weights_path=os.path.join(run.dir, ROLLOUT_WEIGHTS), workers=cfg.workers, num_envs=cfg.num_envs,
                     image_size=cfg.image_size, max_episode_steps=cfg.max_episode_steps, device=run.device,
                     reward=cfg.reward, temperature=getattr(cfg, "temperature", 1.0),
                     executor=getattr(cfg, "executor", "local"), ray_address=getattr(cfg, "ray_address", "auto"))


def traces_for(run) -> TraceWriter:
    """The run's trace writer (RL methods with save_traces), flushed before every checkpoint."""

    cfg = run.cfg

    def decode(tokens: np.ndarray) -> np.ndarray:
        return run.policy.decode_actions(torch.from_numpy(tokens)).cpu().numpy()

    enabled = bool(cfg.save_traces) and cfg.method in RL_METHODS
    if enabled:
        from vla_forget.adapt.common import AdaptError
        from vla_forget.datasets import DatasetError, _tfds

        try:
            _tfds()
        except DatasetError as e:
            raise AdaptError(f"saving successful traces as RLDS needs the rlds extra ({e}); or pass --no-save-traces") from None
    writer = TraceWriter(run.dir, run.task, f"{cfg.method} run {os.path.basename(os.path.abspath(run.dir))}", decode,
                         enabled=enabled)
    if run.resume_from is not None:
        writer.forget_after(run.update)
    run.before_checkpoint.append(writer.flush)
    return writer
