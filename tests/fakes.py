"""A fake task env and counting policies, for harness tests that need no simulator."""

from __future__ import annotations

import numpy as np
import torch

from vla_forget.envs import TASKS
from vla_forget.envs.base import TaskEnv, TaskInfo
from vla_forget.policies.base import Observation

FAKE_TASKS = ("FakeA-v1", "FakeB-v1", "FakeTarget-v1")


def register_fake_tasks(monkeypatch) -> None:
    """Register the fake tasks for one test only (the task registry stays clean for the others)."""
    from vla_forget.registry import Entry

    TASKS.ids()  # populate the real entries first
    for t in FAKE_TASKS:
        monkeypatch.setitem(TASKS.by_id, t, Entry(t, "tests.fakes:FakeEnv", {}, "fake", dict(
            instruction=f"do {t}", max_episode_steps=6, pick_and_place=t == "FakeTarget-v1")))


class FakeEnv(TaskEnv):
    """Success iff the mean of the first action dimension over the episode is > 0; seeded noise in images."""

    def __init__(self, task: str, num_envs: int = 1, image_size: int = 16, max_episode_steps: int = 6,
                 wrist_camera: bool = False, **_):
        self.info = TaskInfo(task, f"do {task}", max_episode_steps)
        self.num_envs, self.image_size = num_envs, image_size
        self.wrist_camera = bool(wrist_camera)  # front and wrist views side by side, as the real task envs give them
        self.closed = False

    def _obs(self):
        H = self.image_size
        img = torch.from_numpy(self.rng.integers(0, 255, (self.num_envs, H, 2 * H if self.wrist_camera else H, 3), dtype=np.uint8))
        state = torch.from_numpy(self.rng.normal(size=(self.num_envs, 16)).astype(np.float32))
        state[:, 0] += self.acc  # what the policy did shows in the state: two policies visit different states
        return Observation(image=img, state=state, instruction=[f"do {self.info.id} {s % 3}" for s in self.seeds])

    def reset(self, seeds):
        self.seeds = list(seeds)
        self.rng = np.random.default_rng(seeds[0])
        self.t, self.acc = 0, torch.zeros(self.num_envs)
        return self._obs()

    def step(self, action):
        self.t += 1
        self.acc += torch.as_tensor(action)[:, 0].float()
        ok = self.acc > 0
        trunc = torch.full((self.num_envs,), self.t >= self.info.max_episode_steps)
        return self._obs(), ok.float(), torch.zeros(self.num_envs, dtype=torch.bool), trunc, {"is_success": ok}

    def frames(self):
        return self._obs().image.numpy()

    def instructions(self):
        return [f"do {self.info.id}"] * self.num_envs

    def close(self):
        self.closed = True


def patch_fake_rollouts(monkeypatch, tmp_path, on_job=None) -> None:
    """Bench rollouts on :class:`FakeEnv` (the fake tasks registered), no Vulkan check, the cache in ``tmp_path``;
    ``on_job(job)`` sees every episode job before it runs (and may raise, e.g. KeyboardInterrupt)."""
    from vla_forget import rollout

    real_run_job = rollout.run_job

    def run_job(job):
        if on_job is not None:
            on_job(job)
        return real_run_job(job)

    register_fake_tasks(monkeypatch)
    monkeypatch.setattr(rollout, "ENVS", lambda task, **kw: FakeEnv(
        task, num_envs=kw.get("num_envs", 1), max_episode_steps=kw.get("max_steps") or 6))
    monkeypatch.setattr(rollout, "run_job", run_job)
    monkeypatch.setattr("vla_forget.envs.vulkan.check_vulkan", lambda *a, **k: "fake")
    monkeypatch.setenv("VLA_FORGET_CACHE", str(tmp_path / "cache"))
