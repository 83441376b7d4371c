"""The one episode loop (vla_forget.episodes.run_episode) on the fake task env: its bookkeeping, its stops and
the order in which recorders see an episode."""

from __future__ import annotations

import torch

from tests.fakes import FakeEnv
from vla_forget.episodes import Recorder, run_episode


class Log(Recorder):
    def __init__(self):
        self.calls = []

    def start(self, obs):
        self.calls.append(("start", None))

    def before(self, t, obs):
        self.calls.append(("before", t))

    def after(self, t, obs, action, next_obs, reward, success, info):
        self.calls.append(("after", t, success.tolist()))


def test_success_bookkeeping_and_the_order_recorders_see():
    env = FakeEnv("FakeA-v1", num_envs=2, max_episode_steps=6)
    # row 0 succeeds from step 2 on (its summed x goes above 0), row 1 only at the last step
    xs = iter([[-1.0, -1.0], [2.0, -1.0], [0.0, 0.0], [-0.5, 0.0], [0.0, 0.0], [0.0, 3.0]])
    log = Log()
    out = run_episode(env, lambda obs: torch.tensor([[x, 0, 0, 0, 0, 0, 0] for x in next(xs)]), [5, 6], recorders=[log])
    assert out.steps == 6 and out.success.tolist() == [True, True] and out.once.tolist() == [True, True]
    assert out.first.tolist() == [2, 6] and out.ret.tolist() == [5.0, 1.0]
    assert out.instructions == ["do FakeA-v1 2", "do FakeA-v1 0"]
    assert log.calls[:4] == [("start", None), ("before", 0), ("after", 0, [False, False]), ("before", 1)]
    assert log.calls[-1] == ("after", 5, [True, True]) and len(log.calls) == 1 + 2 * 6


def test_it_stops_once_every_row_held_success_or_at_max_steps():
    env = FakeEnv("FakeA-v1", num_envs=1, max_episode_steps=20)
    push = lambda obs: torch.tensor([[1.0, 0, 0, 0, 0, 0, 0]])  # noqa: E731  success from the first step on
    assert run_episode(env, push, [0], success_hold=3).steps == 3
    assert run_episode(env, push, [0]).steps == 20  # no hold: the task's full length (the env truncates)
    assert run_episode(env, push, [0], max_steps=4).steps == 4
    never = lambda obs: torch.tensor([[-1.0, 0, 0, 0, 0, 0, 0]])  # noqa: E731
    out = run_episode(env, never, [0], success_hold=3)
    assert out.steps == 20 and out.first.tolist() == [-1] and not out.once.any()
