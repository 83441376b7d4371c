"""The project's PPO learner against stable-baselines3's PPO, on one state-based ManiSkill task.

Both learn the same problem from scratch with the same env-step budget:

* ManiSkill3's PushCube-v1 on the CPU simulator: state observations, the end-effector delta-pose
  controller, the normalised dense reward at every step, episodes of 50 steps run to their end (success does
  not end them, as in the suite's tasks);
* the action in the VLA format: 7 tokens of 256 bins (``MultiDiscrete([256] * 7)``), each decoded to its bin
  centre by :class:`vla_forget.tokenizer.ActionTokenizer`;
* a policy MLP (2 x 256, tanh) giving 7 x 256 logits, initialised as stable-baselines3 initialises its own
  (orthogonal), and a separate value network;
* the same hyper-parameters: learning rate, rollout size, epochs, minibatch, clip, gamma, GAE lambda, value
  weight, gradient clip.

The learners:

* ``sb3``: ``stable_baselines3.PPO("MlpPolicy")`` on a ``DummyVecEnv`` of the envs (it bootstraps the value
  at the time limit);
* ``vla-forget``: this project's update, unchanged: :func:`vla_forget.adapt.ppo.gae`,
  :func:`vla_forget.adapt.ppo.update_epochs` (its losses, minibatches, advantage normalisation and
  diagnostics), :class:`vla_forget.adapt.ppo.ValueHead` and :func:`vla_forget.training.optimizer_step`, on
  rollouts of the same envs collected here (its episodes end at the time limit, as the suite's do).

Usage (stable-baselines3 is an optional extra)::

    pip install -e '.[reference]'
    python benchmarks/reference/ppo_vs_sb3.py --steps 150000 --out runs/reference/ppo-vs-sb3

Writes ``OUT/curves.json`` (per learner and seed: env steps, mean return and success of the training
episodes of each update, the PPO diagnostics, wall time) and, with matplotlib, ``OUT/curves.png``; prints the
curves side by side. docs/adaptation.md records a run.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass
from typing import Any, Dict, List

import numpy as np

TASK = "PushCube-v1"
HORIZON = 50


@dataclass
class Settings:
    steps: int = 150_000
    envs: int = 4
    episodes_per_update: int = 16  # 800 env steps per update
    lr: float = 3e-4
    epochs: int = 4
    minibatch: int = 100
    clip: float = 0.2
    gamma: float = 0.99
    gae_lambda: float = 0.95
    vf_coef: float = 0.5
    grad_clip: float = 0.5
    hidden: int = 256


# --------------------------------------------------------------------------
# the problem

def make_env(seed: int):
    """One PushCube-v1 env (CPU simulator, state observations, numpy API) whose actions are 7 bin indices."""
    import gymnasium as gym
    import mani_skill.envs  # noqa: F401 (registers the tasks)
    from mani_skill.utils.wrappers.gymnasium import CPUGymWrapper

    from vla_forget.tokenizer import ActionTokenizer

    class Tokens(gym.ActionWrapper):
        def __init__(self, env):
            super().__init__(env)
            self.tokenizer = ActionTokenizer()  # the 256 bins over [-1, 1] of the VLA action format
            self.action_space = gym.spaces.MultiDiscrete([256] * 7, seed=seed)

        def action(self, tokens):
            return self.tokenizer.decode(np.asarray(tokens)).astype(np.float32)

    class Metrics(gym.Wrapper):
        """At an episode's end, ``info["episode"]`` = {"r": return, "l": length, "t": 0, "success_once"} (the
        form stable-baselines3's Monitor writes, plus success)."""

        def reset(self, **kw):
            self.ret, self.length, self.ok = 0.0, 0, False
            return self.env.reset(**kw)

        def step(self, action):
            obs, r, term, trunc, info = self.env.step(action)
            self.ret, self.length, self.ok = self.ret + float(r), self.length + 1, self.ok or bool(info["success"])
            if term or trunc:
                info["episode"] = {"r": self.ret, "l": self.length, "t": 0.0, "success_once": float(self.ok)}
            return obs, r, term, trunc, info

    env = gym.make(TASK, obs_mode="state", control_mode="pd_ee_delta_pose", reward_mode="normalized_dense",
                   sim_backend="cpu", render_mode=None, max_episode_steps=HORIZON)
    env = CPUGymWrapper(env, ignore_terminations=True)
    return Metrics(Tokens(env))


def policy_mlp(obs_dim: int, hidden: int):
    """The policy network both learners use: 2 x ``hidden`` tanh, 7 x 256 logits, stable-baselines3's
    orthogonal initialisation (gain sqrt(2), the logits 0.01)."""
    from torch import nn

    net = nn.Sequential(nn.Linear(obs_dim, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh(),
                        nn.Linear(hidden, 7 * 256))
    for i, m in enumerate(x for x in net if isinstance(x, nn.Linear)):
        nn.init.orthogonal_(m.weight, gain=0.01 if i == 2 else np.sqrt(2))
        nn.init.zeros_(m.bias)
    return net


# --------------------------------------------------------------------------
# stable-baselines3

def run_sb3(s: Settings, seed: int, log) -> Dict[str, Any]:
    import torch
    from stable_baselines3 import PPO
    from stable_baselines3.common.callbacks import BaseCallback
    from stable_baselines3.common.vec_env import DummyVecEnv

    torch.manual_seed(seed)
    venv = DummyVecEnv([lambda i=i: make_env(seed * 1000 + i) for i in range(s.envs)])
    venv.seed(seed * 1000)
    n_steps = s.episodes_per_update * HORIZON // s.envs
    model = PPO("MlpPolicy", venv, learning_rate=s.lr, n_steps=n_steps, batch_size=s.minibatch, n_epochs=s.epochs,
                gamma=s.gamma, gae_lambda=s.gae_lambda, clip_range=s.clip, ent_coef=0.0, vf_coef=s.vf_coef,
                max_grad_norm=s.grad_clip, seed=seed, device="cpu",
                policy_kwargs=dict(net_arch=dict(pi=[s.hidden, s.hidden], vf=[s.hidden, s.hidden]),
                                   activation_fn=torch.nn.Tanh))
    rows: List[Dict[str, Any]] = []
    t0 = time.perf_counter()

    class Curve(BaseCallback):
        def __init__(self):
            super().__init__()
            self.returns: List[float] = []
            self.success: List[float] = []

        def _on_step(self) -> bool:
            for info in self.locals["infos"]:
                ep = info.get("episode")
                if ep is not None and "success_once" in ep:
                    self.returns.append(float(ep["r"]))
                    self.success.append(float(ep["success_once"]))
            return True

        def _on_rollout_end(self) -> None:
            rows.append({"env_steps": int(self.num_timesteps), "return": float(np.mean(self.returns)) if self.returns else None,
                         "success": float(np.mean(self.success)) if self.success else None,
                         "wall_s": round(time.perf_counter() - t0, 1)})
            if len(rows) > 1:  # the losses of the previous update (logged before this rollout)
                vals = self.model.logger.name_to_value
                rows[-2].update({k: float(vals[f"train/{k}"]) for k in ("clip_fraction", "approx_kl", "explained_variance")
                                 if f"train/{k}" in vals})
            log(f"sb3 seed {seed}: {rows[-1]}")
            self.returns, self.success = [], []

    model.learn(total_timesteps=s.steps, callback=Curve())
    venv.close()
    return {"learner": "sb3", "seed": seed, "rows": rows}


# --------------------------------------------------------------------------
# this project's learner

def run_project(s: Settings, seed: int, log, bootstrap: bool = False, time_aware: bool = False) -> Dict[str, Any]:
    import torch
    from torch import nn

    from vla_forget.adapt.common import KLPenalty
    from vla_forget.adapt.configs import PPOConfig
    from vla_forget.adapt.ppo import ValueHead, gae, update_epochs
    from vla_forget.policies.base import Observation
    from vla_forget.training import optimizer_step

    torch.manual_seed(seed)
    envs = [make_env(seed * 1000 + i) for i in range(s.envs)]
    obs_dim = envs[0].observation_space.shape[0]

    class MLPTokens(nn.Module):
        """The policy MLP as a token policy: the 7 tokens are independent given the state (as in sb3's
        MultiDiscrete), so ``action_logits`` does not read the prefix."""

        def __init__(self):
            super().__init__()
            self.net = policy_mlp(obs_dim, s.hidden)

        def action_logits(self, obs, tokens):
            return self.net(obs.state).view(-1, 7, 256)

        def log_prob(self, obs, tokens):
            lp = torch.log_softmax(self.action_logits(obs, tokens), dim=-1)
            return lp.gather(-1, tokens.unsqueeze(-1)).squeeze(-1).sum(-1)

    class Batch:
        """The collected steps, as update_epochs reads them."""

        def __init__(self, states: torch.Tensor):
            self.states = states
            self.num_steps = int(states.shape[0])

        def observation(self, idx, device):
            return Observation(image=None, state=self.states[torch.as_tensor(idx)].to(device), instruction=[""] * len(idx))

    policy = MLPTokens()
    # time_aware: the value head also reads the fraction of the episode left (its input is the state and that)
    value_head = ValueHead(obs_dim + int(time_aware), s.hidden, seed=seed)
    opt = torch.optim.AdamW([{"params": list(policy.parameters()), "lr": s.lr, "weight_decay": 0.0},
                             {"params": list(value_head.parameters()), "lr": s.lr, "weight_decay": 0.0}],
                            lr=s.lr, betas=(0.9, 0.999), eps=1e-8)
    cfg = PPOConfig(base="-", out="-", lr=s.lr, epochs=s.epochs, minibatch_size=s.minibatch, clip_coef=s.clip,
                    gamma=s.gamma, gae_lambda=s.gae_lambda, vf_coef=s.vf_coef, grad_clip=s.grad_clip, seed=seed,
                    value_hidden=s.hidden, value_lr=s.lr)
    gen = torch.Generator().manual_seed(seed)
    rows: List[Dict[str, Any]] = []
    t0 = time.perf_counter()
    done_steps, update, next_seed = 0, 0, seed * 100_000
    while done_steps < s.steps:
        update += 1
        states, tokens, logp_tok, rewards, returns, success = [], [], [], [], [], []
        for first in range(0, s.episodes_per_update, s.envs):  # the envs in lockstep, one episode each
            group = envs[:min(s.envs, s.episodes_per_update - first)]
            obs = np.stack([e.reset(seed=next_seed + i)[0] for i, e in enumerate(group)])
            next_seed += len(group)
            ep_s, ep_t, ep_lp, ep_r, ep_ok = [], [], [], [], np.zeros(len(group), bool)
            for _ in range(HORIZON):
                x = torch.as_tensor(obs, dtype=torch.float32)
                with torch.no_grad():
                    lp = torch.log_softmax(policy.net(x).view(-1, 7, 256), dim=-1)
                    tok = torch.multinomial(lp.exp().view(-1, 256), 1, generator=gen).view(-1, 7)
                ep_s.append(x)
                ep_t.append(tok)
                ep_lp.append(lp.gather(-1, tok.unsqueeze(-1)).squeeze(-1))
                out = [e.step(t) for e, t in zip(group, tok.numpy())]
                obs = np.stack([o[0] for o in out])
                ep_r.append(torch.tensor([o[1] for o in out], dtype=torch.float32))
                ep_ok |= np.array([bool(o[4]["success"]) for o in out])
            returns += torch.stack(ep_r, 1).sum(1).tolist()
            success += ep_ok.tolist()
            if bootstrap:  # as stable-baselines3 does at a time limit: the value of the state the episode stopped in
                with torch.no_grad():
                    ep_r[-1] = ep_r[-1] + s.gamma * value_head(torch.as_tensor(obs, dtype=torch.float32))
            states.append(torch.stack(ep_s, 1))
            tokens.append(torch.stack(ep_t, 1))
            logp_tok.append(torch.stack(ep_lp, 1))
            rewards.append(torch.stack(ep_r, 1))
        states, tokens, logp_tok, rewards = (torch.cat(v) for v in (states, tokens, logp_tok, rewards))
        E, T = rewards.shape
        N = E * T
        flat_states = states.reshape(N, -1)
        features = flat_states
        if time_aware:
            left = (1.0 - torch.arange(T, dtype=torch.float32) / T).repeat(E).unsqueeze(1)
            features = torch.cat([flat_states, left], dim=1)
        with torch.no_grad():
            values = value_head(features).view(E, T)
        dones = torch.zeros(E, T, dtype=torch.bool)
        dones[:, -1] = True
        adv, ret = gae(rewards, values, dones, s.gamma, s.gae_lambda)
        batch = {"tokens": tokens.reshape(N, 7), "old_logp": logp_tok.reshape(N, 7).sum(-1),
                 "old_logp_tokens": logp_tok.reshape(N, 7), "advantages": adv.reshape(N), "returns": ret.reshape(N),
                 "features": features, "kl_ref": None}
        stats = update_epochs(policy, value_head, Batch(flat_states), batch, cfg, KLPenalty(None, 0.0),
                              lambda loss: optimizer_step(opt, loss, s.grad_clip), update)
        done_steps += N
        var = float(ret.var())
        rows.append({"env_steps": done_steps, "return": float(np.mean(returns)), "success": float(np.mean(success)),
                     "wall_s": round(time.perf_counter() - t0, 1), "clip_fraction": stats["clipfrac"],
                     "approx_kl": stats["approx_kl"], "first_clipfrac": stats.get("first_clipfrac"),
                     "explained_variance": None if var == 0 else 1 - float((ret - values).var()) / var})
        log(f"{'vla-forget' + ('+bootstrap' if bootstrap else '') + ('+time' if time_aware else '')} seed {seed}: {rows[-1]}")
    for e in envs:
        e.close()
    name = "vla-forget" + ("+bootstrap" if bootstrap else "") + ("+time" if time_aware else "")
    return {"learner": name, "seed": seed, "rows": rows}


# --------------------------------------------------------------------------

LEARNERS = {"vla-forget": run_project, "sb3": run_sb3,
            "vla-forget+bootstrap": lambda s, seed, log: run_project(s, seed, log, bootstrap=True),
            "vla-forget+time": lambda s, seed, log: run_project(s, seed, log, time_aware=True)}


def plot(results: List[Dict[str, Any]], path: str) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    colours = {"sb3": "tab:blue", "vla-forget": "tab:orange", "vla-forget+bootstrap": "tab:green",
               "vla-forget+time": "tab:red"}
    window = max(1, min([10] + [len(r["rows"]) for r in results]))  # updates: the mean of 16 episodes is noisy
    for r in results:
        rows = [row for row in r["rows"] if row["return"] is not None]
        xs = [row["env_steps"] for row in rows][window - 1:]
        for ax, key in zip(axes, ("return", "success")):
            ys = np.convolve([row[key] for row in rows], np.ones(window) / window, mode="valid")
            ax.plot(xs, ys, color=colours[r["learner"]], alpha=0.9, lw=1.4,
                    ls="-" if r["seed"] == 0 else "--", label=f"{r['learner']} seed {r['seed']}")
    for ax, key in zip(axes, (f"mean return of the training episodes ({window}-update mean)",
                              f"success (once) of the training episodes ({window}-update mean)")):
        ax.set_xlabel("env steps")
        ax.set_title(key, fontsize=10)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"PPO on {TASK} (state, 7 x 256 action tokens): this project's learner vs stable-baselines3",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return True


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="example:\n  python benchmarks/reference/ppo_vs_sb3.py --steps 150000 --seeds 0 1 "
                                       "--out runs/reference/ppo-vs-sb3")
    p.add_argument("--steps", type=int, default=Settings.steps, help="env steps per learner and seed")
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--learners", nargs="+", default=["vla-forget", "sb3"], choices=list(LEARNERS),
                   help="vla-forget+bootstrap: this project's update with the value of the last state added at the "
                        "time limit, as stable-baselines3 does (the suite's episodes end there instead); "
                        "vla-forget+time: its value head also reads the fraction of the episode left")
    p.add_argument("--lr", type=float, default=Settings.lr)
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    try:
        import stable_baselines3  # noqa: F401
    except ImportError:
        if "sb3" in args.learners:
            print("stable-baselines3 is not installed: pip install -e '.[reference]'", file=sys.stderr)
            return 2
    os.makedirs(args.out, exist_ok=True)
    s = Settings(steps=args.steps, lr=args.lr)
    path = os.path.join(args.out, "curves.json")
    results: List[Dict[str, Any]] = []
    if os.path.exists(path):  # finished learners are kept: rerun to add the others
        results = json.load(open(path))["results"]
    have = {(r["learner"], r["seed"]) for r in results}

    def log(msg: str) -> None:
        print(msg, flush=True)

    for seed in args.seeds:
        for learner in args.learners:
            if (learner, seed) in have:
                continue
            results.append(LEARNERS[learner](s, seed, log))
            with open(path + ".tmp", "w") as f:
                json.dump({"task": TASK, "horizon": HORIZON, "settings": s.__dict__, "results": results}, f, indent=1)
            os.replace(path + ".tmp", path)
    if plot(results, os.path.join(args.out, "curves.png")):
        print(f"plot: {os.path.join(args.out, 'curves.png')}")
    print(f"{'learner':<21} {'seed':>4} {'env steps':>9} {'return (last 5 updates)':>24} {'success':>8}")
    for r in results:
        last = [row for row in r["rows"] if row["return"] is not None][-5:]
        print(f"{r['learner']:<21} {r['seed']:>4} {last[-1]['env_steps']:>9} "
              f"{np.mean([x['return'] for x in last]):>24.2f} {np.mean([x['success'] for x in last]):>8.2f}")
    print(f"curves: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
