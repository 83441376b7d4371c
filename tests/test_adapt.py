"""`vla-forget adapt`: every method on a fake task, PPO's maths by hand, exact resume, NaN stop, refusals.

All but one test use the fake task env of tests/fakes.py (no simulator) and a tiny
SmallVLA; one test runs PPO on the real simulator through a worker process, at
4 steps per episode and 32 px images.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os

import numpy as np
import pytest

pytest.importorskip("tensorflow_datasets", reason="needs the rlds extra: pip install 'vla-forget[rlds]'")

import torch  # noqa: E402

from tests.fakes import FakeEnv  # noqa: E402
from vla_forget import rollout  # noqa: E402
from vla_forget.adapt import METHODS, checkpoint_update, list_checkpoints, load_method, read_meta  # noqa: E402
from vla_forget.adapt import common, grpo, ppo, reinforce  # noqa: E402
from vla_forget.adapt import run as adapt_run  # noqa: E402
from vla_forget.adapt.common import AdaptError, Diverged, KLPenalty  # noqa: E402
from vla_forget.adapt.configs import AdaptConfig, GRPOConfig, PPOConfig, SFTConfig, make_config  # noqa: E402
from vla_forget.config import field_docs  # noqa: E402
from vla_forget.adapt.rollouts import TraceWriter, Trajectories, trace_datasets  # noqa: E402
from vla_forget.trainer import read_train_state  # noqa: E402
from vla_forget.cli import main  # noqa: E402
from vla_forget.datasets import open_dataset, write_dataset  # noqa: E402
from vla_forget.policies import load_policy  # noqa: E402
from vla_forget.policies.small_vla import SmallVLA  # noqa: E402

TINY = dict(image_size=32, conv_channels=(8, 16), residual_stages=1, image_grid=2, state_dim=16, d_model=32,
            n_layers=1, context_layers=1, heads=2, ff_mult=2, text_layers=1, text_tokens=2, max_instruction_bytes=32)
TARGET = "FakeTarget-v1"
H = 16


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("adapt") / "base")
    SmallVLA.random_init(seed=0, **TINY).save(path)
    return path


@pytest.fixture()
def fake(monkeypatch, tmp_path):
    """Fake tasks whose instruction templates fit FakeEnv's instructions; rollouts on FakeEnv."""
    from vla_forget.envs import TASKS
    from vla_forget.registry import Entry

    TASKS.ids()
    for t in ("FakeA-v1", TARGET):
        monkeypatch.setitem(TASKS.by_id, t, Entry(t, "tests.fakes:FakeEnv", {}, "fake", dict(
            instruction=f"do {t} {{k}}", max_episode_steps=6, pick_and_place=True)))
    monkeypatch.setattr(rollout, "ENVS", lambda task, **kw: FakeEnv(
        task, num_envs=kw.get("num_envs", 1), max_episode_steps=kw.get("max_steps") or 6))
    monkeypatch.setattr("vla_forget.envs.vulkan.check_vulkan", lambda *a, **k: "fake")
    return tmp_path


def config(tmp, base, method, out=None, **kw) -> AdaptConfig:
    """Small settings for ``method`` (those of them it has), and ``kw`` (which it must have)."""
    d = dict(base=base, out=str(tmp / (out or method)), task=TARGET, updates=2, save_every=1, workers=0,
             episodes_per_update=4, max_episode_steps=4, minibatch_size=8, batch_size=8, sft_steps=2, threads=1,
             progress=False)
    own = {f.name for f in dataclasses.fields(METHODS[method].config)}
    return make_config(method, **{**{k: v for k, v in d.items() if k in own}, **kw})


def demos(path, task=TARGET, instruction=None, action_dim=7, n=3, T=4):
    rng = np.random.default_rng(0)

    def episodes():
        for i in range(n):
            yield dict(image=rng.integers(0, 256, (T, H, H, 3), dtype=np.uint8),
                       state=rng.normal(size=(T, 16)).astype(np.float32),
                       action=rng.uniform(-1, 1, (T, action_dim)).astype(np.float32),
                       instruction=instruction or f"do {task} {i % 3}", seed=i, task=task)

    write_dataset(str(path), episodes(), name="demo", image_shape=(H, H, 3), state_dim=16, action_dim=action_dim)
    return str(path)


def state(path):
    return SmallVLA.load(path).state_dict()


def same_weights(a, b) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def log_lines(run_dir):
    with open(os.path.join(run_dir, "log.jsonl")) as f:
        return [json.loads(x) for x in f]


# --------------------------------------------------------------------------
# the package's contract

def test_methods_and_list_checkpoints(tmp_path):
    assert set(METHODS) == {"ppo", "reinforce", "grpo", "rloo", "sft", "iterative-sft", "rl-trace-sft"}
    for m in METHODS:
        assert callable(load_method(m))
    with pytest.raises(KeyError, match="unknown adaptation method"):
        load_method("dpo")
    root = tmp_path / "run" / "checkpoints"
    for name, complete in (("update-000010", True), ("update-000002", True), ("update-000000", True),
                           ("update-000012", False), ("update-000014.tmp", True), ("notes", True)):
        (root / name).mkdir(parents=True)
        if complete:
            (root / name / "meta.json").write_text("{}")
    got = list_checkpoints(str(tmp_path / "run"))
    assert [os.path.basename(p) for p in got] == ["update-000000", "update-000002", "update-000010"]
    assert [checkpoint_update(p) for p in got] == [0, 2, 10]
    assert list_checkpoints(str(tmp_path / "nothing")) == []


# --------------------------------------------------------------------------
# the maths, by hand

def test_gae_by_hand():
    rewards = torch.tensor([[0.0, 0.0, 1.0]])
    values = torch.tensor([[0.5, 0.6, 0.7]])
    dones = torch.tensor([[False, False, True]])
    adv, ret = ppo.gae(rewards, values, dones, gamma=0.9, lam=0.8)
    # t=2: 1 - 0.7 = 0.3; t=1: 0.9*0.7 - 0.6 + 0.72*0.3 = 0.246; t=0: 0.9*0.6 - 0.5 + 0.72*0.246 = 0.21712
    assert torch.allclose(adv, torch.tensor([[0.21712, 0.246, 0.3]]), atol=1e-6)
    assert torch.allclose(ret, torch.tensor([[0.71712, 0.846, 1.0]]), atol=1e-6)
    # an episode boundary stops the bootstrap: two episodes of 2 steps in one row
    adv, _ = ppo.gae(torch.tensor([[1.0, 0.0, 0.0, 2.0]]), torch.tensor([[0.0, 1.0, 5.0, 0.0]]),
                     torch.tensor([[False, True, False, True]]), gamma=1.0, lam=1.0)
    # t=3: 2; t=2: 0 + 0 - 5 + 2 = -3; t=1 (done): 0 - 1 = -1, nothing bootstrapped from t=2; t=0: 1 + 1 - 0 - 1 = 1
    assert torch.allclose(adv, torch.tensor([[1.0, -1.0, -3.0, 2.0]]))


def test_ppo_losses_by_hand():
    logp = torch.log(torch.tensor([0.5, 0.2]))
    old = torch.log(torch.tensor([0.25, 0.2]))  # ratios 2 and 1
    adv = torch.tensor([1.0, -1.0])
    out = ppo.ppo_losses(logp, old, adv, torch.tensor([0.5, 0.0]), torch.tensor([1.0, 0.0]), clip=0.2, norm_adv=False)
    # row 0: max(-1 * 2, -1 * 1.2) = -1.2; row 1: max(1 * 1, 1 * 1) = 1; mean -0.1
    assert out["pg_loss"].item() == pytest.approx(-0.1)
    assert out["v_loss"].item() == pytest.approx(0.5 * (0.25 + 0.0) / 2)
    assert out["clipfrac"].item() == pytest.approx(0.5)
    assert out["approx_kl"].item() == pytest.approx(((2 - 1) - math.log(2)) / 2)
    # negative advantage, ratio below 1 - clip: clipped at 0.8 (no incentive to push further)
    out = ppo.ppo_losses(torch.log(torch.tensor([0.1])), torch.log(torch.tensor([0.5])), torch.tensor([-2.0]),
                         torch.zeros(1), torch.zeros(1), clip=0.2, norm_adv=False)
    assert out["pg_loss"].item() == pytest.approx(max(2 * 0.2, 2 * 0.8))
    # normalised advantages: (1, -1) -> (0.7071, -0.7071) with the unbiased std
    out = ppo.ppo_losses(torch.zeros(2), torch.zeros(2), torch.tensor([3.0, 1.0]), torch.zeros(2), torch.zeros(2), 0.2)
    assert out["pg_loss"].item() == pytest.approx(0.0, abs=1e-7)


def test_reinforce_and_grpo_advantages_by_hand():
    rewards = torch.tensor([[0.0, 1.0], [0.0, 0.0], [0.0, 1.0], [0.0, 0.0]])  # binary success at the last step
    adv = reinforce.advantages(rewards, gamma=1.0, normalize=False)
    assert torch.allclose(adv, torch.tensor([[0.5, 0.5], [-0.5, -0.5], [0.5, 0.5], [-0.5, -0.5]]))
    adv = reinforce.advantages(rewards, gamma=1.0, normalize=True)  # std 0.5
    assert torch.allclose(adv, torch.tensor([[1.0, 1.0], [-1.0, -1.0], [1.0, 1.0], [-1.0, -1.0]]), atol=1e-6)
    adv = reinforce.advantages(torch.tensor([[1.0, 1.0], [0.0, 0.0]]), gamma=0.5, normalize=False)
    assert torch.allclose(adv, torch.tensor([[0.75, 0.5], [-0.75, -0.5]]))  # returns-to-go 1.5, 1 vs 0, 0
    g = grpo.group_advantages(torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 1.0]), group_size=3)
    # group 1: mean 1/3, population std sqrt(2)/3; group 2: mean 2/3
    s = math.sqrt(2) / 3
    assert torch.allclose(g, torch.tensor([(2 / 3) / s, -(1 / 3) / s, -(1 / 3) / s, -(2 / 3) / s, (1 / 3) / s,
                                           (1 / 3) / s]), atol=1e-4)
    assert torch.equal(grpo.group_advantages(torch.ones(4), 2), torch.zeros(4))  # nothing to learn


def test_rloo_advantages_and_dynamic_sampling_by_hand():
    from vla_forget.adapt import rloo

    r = torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0])  # groups of 4: one success; all four
    adv = rloo.loo_advantages(r, 4)
    # episode 0: 1 - mean(0, 0, 0) = 1; episode 1: 0 - mean(1, 0, 0) = -1/3; group 2 scored alike: 0
    assert torch.allclose(adv[:4], torch.tensor([1.0, -1 / 3, -1 / 3, -1 / 3]))
    assert torch.equal(adv[4:], torch.zeros(4))
    assert rloo.informative(r, 4).tolist() == [True, False]
    assert rloo.informative(torch.tensor([0.0, 0.0, 0.0, 1.0]), 2).tolist() == [False, True]
    two = rloo.loo_advantages(torch.tensor([1.0, 0.0]), 2)  # K = 2: each against the other
    assert two.tolist() == [1.0, -1.0]


def test_rloo_keeps_only_informative_groups_and_counts_every_rollout(fake, base_dir, capsys):
    """With dynamic sampling the update trains on informative groups only, drawing more rounds when it has too
    few; every rollout drawn counts in env_steps; a batch left short after --max-draws is said and logged."""
    cfg = config(fake, base_dir, "rloo", out="rloo-dyn", episodes_per_update=8, group_size=4, max_draws=3, updates=3)
    load_method("rloo")(cfg)
    rows = log_lines(cfg.out)
    for r in rows:
        assert 1 <= r["rounds"] <= 3 and r["groups_drawn"] == 2 * r["rounds"] and 0 <= r["groups_kept"] <= 2
        assert r["env_steps"] == sum(x["rounds"] for x in rows[:r["update"]]) * 8 * 4  # 8 rollouts a round, 4 steps
        assert (r["groups_kept"] < 2) == (r["rounds"] == 3 and r["groups_kept"] < 2)  # stops once it has enough
        assert (r["optimizer_steps"] > 0) == (r["groups_kept"] > 0)
        if r["optimizer_steps"]:
            assert r["first_clipfrac"] == 0 and r["first_ratio_max_dev"] < 1e-4
    off = config(fake, base_dir, "rloo", out="rloo-all", episodes_per_update=8, group_size=4, dynamic_sampling=False,
                 updates=1)
    load_method("rloo")(off)
    (r,) = log_lines(off.out)
    assert r["rounds"] == 1 and r["groups_kept"] == 2  # every group, informative or not
    one = config(fake, base_dir, "rloo", out="rloo-one-draw", episodes_per_update=8, group_size=4, max_draws=1,
                 updates=4)
    capsys.readouterr()
    load_method("rloo")(one)
    rows = log_lines(one.out)
    with open(os.path.join(one.out, "events.jsonl")) as f:
        short = {e["update"]: e for e in map(json.loads, f) if e["event"] == "short_batch"}
    err = capsys.readouterr().err
    assert set(short) == {r["update"] for r in rows if r["groups_kept"] < 2}
    assert short, "one draw of two groups should leave at least one batch short"
    for u, e in short.items():
        assert e["groups_kept"] < e["groups_wanted"] == 2 and e["draws"] == 1
        assert f"warning: update {u}: {e['groups_kept']} of 2 groups were informative after 1 draw of 2 (--max-draws 1)" in err


def test_rewards_and_seeds():
    success = np.array([[False, True, False], [False, True, True]])
    dense = np.array([[0.3, 1.0, 0.6], [0.0, 1.0, 1.0]], np.float32)
    assert common.episode_rewards(success, dense, "success").tolist() == [[0, 0, 0], [0, 0, 1]]
    assert np.allclose(common.episode_rewards(success, dense, "dense").sum(1), [1.9 / 3, 2 / 3])
    assert common.train_seeds(0, 1, 3) == [0, 1, 2] and common.train_seeds(0, 2, 3) == [3, 4, 5]
    assert max(common.train_seeds(0, 10**6, 8)) < common.TRAIN_SEED_LIMIT
    assert common.instruction_pattern("put the {cube} cube on the {target} target").match("put the red cube on the blue target")
    assert not common.instruction_pattern("put the {cube} cube on the {target} target").match("stack the red cube")


def _synthetic(policy, E=2, T=3, seed=0):
    g = np.random.default_rng(seed)
    traj = Trajectories(image=g.integers(0, 256, (E, T, H, H, 3), dtype=np.uint8),
                        state=g.normal(size=(E, T, 16)).astype(np.float32), instruction=[f"do it {e}" for e in range(E)],
                        tokens=g.integers(0, 256, (E, T, 7)).astype(np.uint8), logp=np.zeros((E, T), np.float32),
                        success=np.zeros((E, T), bool), dense=np.zeros((E, T), np.float32), seeds=np.arange(E))
    N = E * T
    tokens = torch.from_numpy(traj.flat("tokens").astype(np.int64))
    with torch.no_grad():
        old = policy.log_prob(traj.observation(np.arange(N), "cpu"), tokens) - 0.05
        features = policy.features(traj.observation(np.arange(N), "cpu"))
    batch = {"tokens": tokens, "old_logp": old, "advantages": torch.from_numpy(g.normal(size=N).astype(np.float32)),
             "returns": torch.from_numpy(g.normal(size=N).astype(np.float32)), "features": features, "kl_ref": None}
    return traj, batch


def test_kl_penalty_at_zero_equals_the_plain_update(base_dir):
    cfg = common.resolve(make_config("ppo", base=base_dir, out="-", epochs=1, minibatch_size=6, seed=3))

    def fresh():
        policy = SmallVLA.load(base_dir)
        head = ppo.ValueHead(policy.feature_dim, 16, seed=1)
        opt = torch.optim.AdamW([{"params": list(policy.parameters()), "lr": 1e-3},
                                 {"params": list(head.parameters()), "lr": 1e-3}])
        return policy, head, opt

    def step_fn(opt):
        return lambda loss: common.optimizer_step(opt, loss, cfg.grad_clip)

    policy, head, opt = fresh()
    traj, batch = _synthetic(policy)
    # the plain PPO step written out: one epoch, one minibatch (in update_epochs' order), no KL
    perm = torch.randperm(6, generator=common.generator(cfg.seed, 1, "minibatches", 0))
    logp = policy.log_prob(traj.observation(perm.numpy(), "cpu"), batch["tokens"][perm])
    out = ppo.ppo_losses(logp, batch["old_logp"][perm], batch["advantages"][perm], head(batch["features"][perm]),
                         batch["returns"][perm], cfg.clip_coef, cfg.norm_adv)
    common.optimizer_step(opt, out["pg_loss"] + cfg.vf_coef * out["v_loss"], cfg.grad_clip)
    plain = policy.state_dict()

    results = {}
    base = SmallVLA.load(base_dir).eval()

    class Evaluated(KLPenalty):  # the penalty computed and added with weight 0
        active = True

    for name, kl in (("off", KLPenalty(None, 0.0)), ("zero", Evaluated(base, 0.0)), ("on", KLPenalty(base, 1.0))):
        policy, head, opt = fresh()
        traj, batch = _synthetic(policy)
        with torch.no_grad():
            batch["kl_ref"] = kl.reference(traj.observation(np.arange(6), "cpu"), torch.Generator().manual_seed(0)) \
                if kl.base is not None else None
        stats = ppo.update_epochs(policy, head, traj, batch, cfg, kl, step_fn(opt), update=1)
        results[name] = (policy.state_dict(), stats)
    assert same_weights(plain, results["off"][0])
    assert same_weights(plain, results["zero"][0])
    assert not same_weights(plain, results["on"][0])
    # at the base itself the forward KL is 0 (and so is its gradient)
    assert results["zero"][1]["kl_to_base"] == pytest.approx(0.0, abs=1e-6)
    assert results["on"][1]["kl_to_base"] == pytest.approx(0.0, abs=1e-6)


# --------------------------------------------------------------------------
# every method, end to end on the fake task

@pytest.mark.parametrize("method", ["ppo", "reinforce", "grpo", "rloo", "iterative-sft", "sft"])
def test_method_runs_two_updates_and_changes_the_policy(fake, base_dir, method):
    kw = {"data": [demos(fake / "demos")]} if method == "sft" else {}
    if method == "iterative-sft":
        kw["episodes_per_update"] = 8  # FakeEnv succeeds about half the time: some episodes to learn from
    if method == "rloo":
        kw["group_size"] = 2
    cfg = config(fake, base_dir, method, **kw)
    summary = load_method(method)(cfg)
    assert summary["updates"] == 2
    ckpts = list_checkpoints(cfg.out)
    assert [checkpoint_update(p) for p in ckpts] == [0, 1, 2]
    assert same_weights(state(ckpts[0]), state(base_dir))  # update 0 is the base
    assert not same_weights(state(ckpts[-1]), state(base_dir))
    meta = read_meta(ckpts[-1])
    assert {k: meta[k] for k in ("method", "update", "base", "task", "run")} == \
        {"method": method, "update": 2, "base": base_dir, "task": TARGET, "run": method}
    assert meta["hparams"]["lr"] == METHODS[method].defaults["lr"] and meta["samples_seen"] > 0
    assert (meta["env_steps"] > 0) == (method != "sft")
    counts, ts = read_train_state(ckpts[-1])
    assert counts["step"] == 2 and counts["samples_seen"] == meta["samples_seen"] and counts["env_steps"] == meta["env_steps"]
    assert ts["optimizer"]["state"] and bool(ts["value_head"]) == (method == "ppo")
    policy = load_policy(ckpts[-1])
    assert policy.checkpoint_hash() == SmallVLA.load(ckpts[-1]).checkpoint_hash()
    with open(os.path.join(cfg.out, "run.json")) as f:
        run = json.load(f)
    assert run["kind"] == "adapt" and run["method"] == method and run["task"] == TARGET and run["base"] == base_dir
    assert run["config"]["updates"] == 2 and "vla_forget_version" in run
    rows = log_lines(cfg.out)
    assert [r["update"] for r in rows] == [1, 2] and all("wall_s" in r and "env_steps" in r for r in rows)
    if method != "sft":
        assert all(0 <= r["success_rate"] <= 1 for r in rows)
    assert os.path.isdir(os.path.join(cfg.out, "traces")) == (method in ("ppo", "reinforce", "grpo", "rloo"))
    # every method that rolls out logs the forward KL to the base after each update (zero before any change)
    if method != "sft":
        assert all(r["kl_to_base_after"] >= 0 and r["kl_to_base_after_se"] >= 0 for r in rows)
        if method != "rloo":  # (at rloo's 3e-6 the tiny model moves by less than the log's 1e-6 nats)
            assert rows[-1]["kl_to_base_after"] > 0


def test_transport_steps_are_the_sideways_carries():
    from vla_forget.adapt.sft import transport_steps

    a = np.zeros((6, 7), np.float32)
    a[:, 6] = [1, -1, -1, -1, -1, 1]            # gripper: open, closed x4, open
    a[:, 0] = [0.9, 0.9, 0.1, -0.5, 0.0, 0.0]   # x
    a[:, 1] = [0.0, 0.0, 0.2, 0.0, -0.31, 0.9]  # y
    assert transport_steps(a).tolist() == [1, 3, 4]  # closed and |x| or |y| > 0.3; step 0 and 5 are open


def test_transport_fraction_draws_that_share_of_each_batch_from_the_carry(fake, base_dir):
    from vla_forget.adapt.sft import TransportSampler, transport_steps
    from vla_forget.pretrain import SplitSampler

    path = demos(fake / "demos", n=4, T=6)
    ds = open_dataset(path)
    carry = transport_steps(ds.all_actions())
    assert 0 < len(carry) < ds.num_steps
    base = SplitSampler([ds], [1.0], [np.arange(ds.num_episodes)], load_policy(base_dir).tokenizer, np.random.default_rng(0))
    sampler = TransportSampler(base, 0.75)
    assert sampler.counts == (len(carry),)
    for seed in range(3):
        sampler.rng = np.random.default_rng(seed)
        batch = sampler.sample(8)
        assert len(batch["instruction"]) == 8 and batch["image"].shape[0] == 8 and batch["tokens"].shape == (8, 7)
        assert len(transport_steps(batch["action"][:6])) == 6  # round(0.75 * 8) rows from the transport steps
        again = TransportSampler(base, 0.75)
        again.rng = np.random.default_rng(seed)
        assert np.array_equal(again.sample(8)["tokens"], batch["tokens"])  # a function of the rng
    sampler.rng = np.random.default_rng(0)
    assert sampler.sample(1)["tokens"].shape == (1, 7)  # round(0.75) = 1: a whole batch of transport steps
    small = TransportSampler(base, 0.05)
    small.rng = np.random.default_rng(0)
    assert small.sample(8)["tokens"].shape == (8, 7)  # round(0.4) = 0: all uniform
    # the run records the share and the transport steps it found, and trains
    cfg = config(fake, base_dir, "sft", data=[path], transport_fraction=0.5)
    load_method("sft")(cfg)
    with open(os.path.join(cfg.out, "events.jsonl")) as f:
        data = [json.loads(x) for x in f if '"data"' in x][0]
    assert data["transport_steps"] == [len(carry)] and data["transport_fraction"] == 0.5
    assert read_meta(list_checkpoints(cfg.out)[-1])["hparams"]["transport_fraction"] == 0.5
    assert not same_weights(state(list_checkpoints(cfg.out)[-1]), state(base_dir))


def test_transport_fraction_refusals(fake, base_dir, tmp_path):
    with pytest.raises(AdaptError, match="--transport-fraction must be in"):
        common.resolve(config(fake, base_dir, "sft", data=["x"], transport_fraction=1.0))
    with pytest.raises(ValueError, match="ppo has no option transport_fraction"):
        config(fake, base_dir, "ppo", transport_fraction=0.5)
    still = tmp_path / "still"  # demonstrations that never carry anything sideways
    write_dataset(str(still), iter([dict(image=np.zeros((4, H, H, 3), np.uint8), state=np.zeros((4, 16), np.float32),
                                         action=np.zeros((4, 7), np.float32), instruction=f"do {TARGET} 0", seed=0,
                                         task=TARGET)]),
                  name="demo", image_shape=(H, H, 3), state_dim=16, action_dim=7)
    with pytest.raises(AdaptError, match="the data has no transport steps"):
        load_method("sft")(config(fake, base_dir, "sft", out="still-run", data=[str(still)], transport_fraction=0.5))


def test_a_run_started_before_a_new_option_resumes_with_its_default(fake, base_dir):
    cfg = config(fake, base_dir, "sft", data=[demos(fake / "demos")], updates=1)
    load_method("sft")(cfg)
    path = os.path.join(cfg.out, "run.json")
    with open(path) as f:
        run = json.load(f)
    del run["config"]["transport_fraction"]  # as written before the option existed
    with open(path, "w") as f:
        json.dump(run, f)
    assert load_method("sft")(config(fake, base_dir, "sft", data=cfg.data, updates=2), resume=True)["updates"] == 2
    with pytest.raises(AdaptError, match="transport_fraction: 0.0 -> 0.5"):
        load_method("sft")(config(fake, base_dir, "sft", data=cfg.data, updates=3, transport_fraction=0.5), resume=True)


def test_traces_reencode_to_the_sampled_tokens(tmp_path, base_dir):
    policy = SmallVLA.load(base_dir)
    traj, _ = _synthetic(policy, E=3, T=4)
    traj.success[[0, 2], -1] = True
    writer = TraceWriter(str(tmp_path), TARGET, "ppo test",
                         lambda tok: policy.decode_actions(torch.from_numpy(tok)).numpy())
    assert writer.add(traj, update=1) == 2
    writer.flush(1)
    assert trace_datasets(str(tmp_path)) == [str(tmp_path / "traces" / "update-000001")]
    ds = open_dataset(trace_datasets(str(tmp_path))[0])
    assert ds.num_episodes == 2 and ds.manifest["tasks"] == [TARGET]
    for i, e in enumerate((0, 2)):
        ep = ds.episode(i)
        assert np.array_equal(policy.tokenizer.encode(ep.action), traj.tokens[e].astype(np.int64))
        assert np.array_equal(ep.image, traj.image[e]) and ep.instruction == traj.instruction[e]
    assert not os.listdir(tmp_path / "traces" / "pending")


def test_rl_trace_sft_trains_on_an_rl_runs_traces(fake, base_dir):
    rl = config(fake, base_dir, "grpo", episodes_per_update=8, group_size=4)
    load_method("grpo")(rl)
    assert trace_datasets(rl.out), "the fake task succeeds about half the time: some traces"
    cfg = config(fake, base_dir, "rl-trace-sft", traces=rl.out)
    load_method("rl-trace-sft")(cfg)
    assert not same_weights(state(list_checkpoints(cfg.out)[-1]), state(base_dir))
    with open(os.path.join(cfg.out, "events.jsonl")) as f:
        data = [json.loads(x) for x in f if '"data"' in x][0]
    assert data["datasets"] == trace_datasets(rl.out)
    with pytest.raises(AdaptError, match="not an adaptation run"):
        load_method("rl-trace-sft")(config(fake, base_dir, "rl-trace-sft", out="x", traces=str(fake)))
    with pytest.raises(AdaptError, match="traces come from RL runs"):
        load_method("rl-trace-sft")(config(fake, base_dir, "rl-trace-sft", out="y", traces=cfg.out))


# --------------------------------------------------------------------------
# resume, divergence, refusals

@pytest.mark.parametrize("method", ["ppo", "sft", "sft-cosine"])
def test_resume_equals_an_uninterrupted_run(fake, base_dir, monkeypatch, method):
    method, _, schedule = method.partition("-")
    kw = {"data": [demos(fake / "demos")]} if method == "sft" else {}
    if schedule:  # the learning rate of each update follows the schedule through the resume
        kw["lr_schedule"] = schedule
    full = config(fake, base_dir, method, out="full", updates=4, save_every=2, **kw)
    load_method(method)(full)
    part = config(fake, base_dir, method, out="part", updates=4, save_every=2, **kw)
    # crash in the middle of update 3 (after its rollouts and traces, before its checkpoint)
    target = (ppo, "update_epochs") if method == "ppo" else (adapt_run.Run, "step")
    original = getattr(*target)
    calls = {"n": 0}

    def crash(*a, **k):
        calls["n"] += 1
        if calls["n"] == (3 if method == "ppo" else 3):
            raise KeyboardInterrupt
        return original(*a, **k)

    monkeypatch.setattr(*target, crash)
    with pytest.raises(KeyboardInterrupt):
        load_method(method)(part)
    monkeypatch.setattr(*target, original)
    assert [checkpoint_update(p) for p in list_checkpoints(part.out)] == [0, 2]
    with pytest.raises(AdaptError, match="--resume"):
        load_method(method)(part)
    if method == "sft":  # a run that failed before its first checkpoint does not block the same --out
        bad = config(fake, base_dir, method, out="bad", updates=2, save_every=1, lr=1e-3, **{**kw, "data": [str(base_dir)]})
        with pytest.raises(AdaptError, match="--data"):
            load_method(method)(bad)
        assert os.path.exists(os.path.join(bad.out, "run.json")) and not list_checkpoints(bad.out)
        load_method(method)(config(fake, base_dir, method, out="bad", updates=1, save_every=1, lr=1e-3, **kw))
        assert [checkpoint_update(p) for p in list_checkpoints(bad.out)] == [0, 1]
    with pytest.raises(AdaptError, match="other settings"):
        load_method(method)(config(fake, base_dir, method, out="part", updates=4, save_every=2, lr=1e-3, **kw), resume=True)
    load_method(method)(part, resume=True)
    a, b = list_checkpoints(full.out)[-1], list_checkpoints(part.out)[-1]
    assert checkpoint_update(b) == 4 and same_weights(state(a), state(b))
    ta = torch.load(os.path.join(a, "train_state.pt"), weights_only=True)
    tb = torch.load(os.path.join(b, "train_state.pt"), weights_only=True)
    for k in ta["value_head"]:
        assert torch.equal(ta["value_head"][k], tb["value_head"][k])
    strip = lambda rows: [{k: v for k, v in r.items() if k not in ("wall_s", "update_s", "rollout_s")} for r in rows]  # noqa: E731
    assert strip(log_lines(full.out)) == strip(log_lines(part.out))
    if schedule:
        assert [r["lr"] for r in log_lines(part.out)] == pytest.approx([full.lr * adapt_run.lr_factor(full, u) for u in (1, 2, 3, 4)])
    if method == "ppo":  # the traces of the redone update are written once
        n = lambda run: sum(open_dataset(d).num_episodes for d in trace_datasets(run))  # noqa: E731
        assert n(full.out) == n(part.out) and n(full.out) > 0


def test_learning_rate_schedules_and_their_refusals(fake, base_dir):
    for schedule, want in [("constant", [1, 1, 1, 1, 1]), ("linear", [1, 0.775, 0.55, 0.325, 0.1]),
                           ("cosine", [1, 0.86819805, 0.55, 0.23180195, 0.1])]:
        cfg = config(fake, base_dir, "rloo", updates=5, lr_schedule=schedule, group_size=2)
        assert [adapt_run.lr_factor(cfg, u) for u in range(1, 6)] == pytest.approx(want)
    for kw, msg in [(dict(lr_schedule="linear", min_lr_ratio=0.0), "would reach a learning rate of zero at the last"),
                    (dict(lr_schedule="cosine", min_lr_ratio=-0.1), "would reach a learning rate of zero"),
                    (dict(lr_schedule="linear", min_lr_ratio=2.0), "end above --lr"),
                    (dict(lr_schedule="step"), "--lr-schedule must be one of constant, linear, cosine")]:
        with pytest.raises(AdaptError, match=msg):
            common.resolve(config(fake, base_dir, "ppo", **kw))
    common.resolve(config(fake, base_dir, "ppo", min_lr_ratio=0.0))  # no decay: the ratio is not used
    # PPO's value head decays with the policy; the log gives the policy's learning rate of each update
    cfg = config(fake, base_dir, "ppo", out="ppo-linear", updates=3, lr_schedule="linear", min_lr_ratio=0.5)
    load_method("ppo")(cfg)
    assert [r["lr"] for r in log_lines(cfg.out)] == pytest.approx([cfg.lr, 0.75 * cfg.lr, 0.5 * cfg.lr])
    last = torch.load(os.path.join(list_checkpoints(cfg.out)[-1], "train_state.pt"), weights_only=True)
    lrs = [g["lr"] for g in last["optimizer"]["param_groups"]]
    assert lrs == pytest.approx([0.5 * cfg.lr, 0.5 * cfg.value_lr])
    # a decaying schedule is stretched over --updates: resuming with another count is refused, nothing lost
    with pytest.raises(AdaptError, match=r"updates: 3 -> 6 \(the linear learning-rate schedule decays"):
        load_method("ppo")(config(fake, base_dir, "ppo", out="ppo-linear", updates=6, lr_schedule="linear",
                                  min_lr_ratio=0.5), resume=True)
    assert checkpoint_update(list_checkpoints(cfg.out)[-1]) == 3 and len(log_lines(cfg.out)) == 3


def test_nan_loss_stops_with_the_last_good_checkpoint(fake, base_dir, monkeypatch, capsys):
    original = SmallVLA.action_logits
    calls = {"n": 0}

    def poisoned(self, obs, tokens):
        out = original(self, obs, tokens)
        if torch.is_grad_enabled():
            calls["n"] += 1
            if calls["n"] > 4:  # update 1 takes 4 minibatch steps (16 steps, minibatch 8, 2 epochs)
                return out * float("nan")
        return out

    monkeypatch.setattr(SmallVLA, "action_logits", poisoned)
    out = str(fake / "nan")
    rc = main(["adapt", "--method", "ppo", "--base", base_dir, "--task", TARGET, "--out", out, "--updates", "4",
               "--save-every", "1", "--workers", "0", "--episodes-per-update", "4", "--max-episode-steps", "4",
               "--minibatch-size", "8", "--threads", "1", "--no-progress"])
    assert rc == 1
    err = capsys.readouterr().err
    assert "diverged at update 2" in err and "update-000001" in err
    assert [checkpoint_update(p) for p in list_checkpoints(out)] == [0, 1]
    assert all(torch.isfinite(v).all() for v in state(list_checkpoints(out)[-1]).values() if v.is_floating_point())
    with open(os.path.join(out, "events.jsonl")) as f:
        assert json.loads(f.readlines()[-1])["event"] == "diverged"
    monkeypatch.setattr(SmallVLA, "action_logits", original)
    with pytest.raises(Diverged) as e:  # the library raises, naming the checkpoint
        cfg = config(fake, base_dir, "sft", data=[demos(fake / "demos")], updates=3)
        from vla_forget import training  # the one NaN guard of every trainer

        monkeypatch.setattr(training, "backward", lambda loss, what="loss": (_ for _ in ()).throw(
            training.NonFiniteError("the loss is nan")))
        load_method("sft")(cfg)
    assert e.value.last_checkpoint.endswith("update-000000")


def test_battery_task_is_refused(tmp_path, base_dir, capsys):
    cfg = make_config("ppo", base=base_dir, out=str(tmp_path / "r"), task="PickCube-v1", progress=False)
    with pytest.raises(AdaptError, match=r"PickCube-v1 \(as PickCube-v2\) is in the battery tabletop-v2.*--allow-battery-task"):
        load_method("ppo")(cfg)  # the default battery is v2: the same task at another version is refused
    assert not os.path.exists(cfg.out)
    rc = main(["adapt", "--method", "sft", "--base", base_dir, "--task", "StackCube-v1", "--out", cfg.out, "--data", "x"])
    assert rc == 2 and "meaningless" in capsys.readouterr().err
    with pytest.warns(UserWarning, match="meaningless"):
        task, _ = common.resolve_task(make_config("ppo", base=base_dir, out="-", task="PickCube-v1",
                                                  allow_battery_task=True))
    assert task == "PickCube-v1" and "MEANINGLESS" in capsys.readouterr().err
    task, target = common.resolve_task(make_config("ppo", base=base_dir, out="-"))
    assert task == "PlaceCubeOnTarget-v2" and target.full_id == "place-cube-on-target-v2"
    task, target = common.resolve_task(make_config("ppo", base=base_dir, out="-", battery="tabletop-v1"))
    assert task == "PlaceCubeOnTarget-v1" and target.full_id == "place-cube-on-target-v1"
    with pytest.raises(AdaptError, match="StackCube-v2 is in the battery tabletop-v2"):
        common.resolve_task(make_config("ppo", base=base_dir, out="-", task="StackCube-v2"))


def test_demonstrations_of_another_task_are_refused(fake, base_dir):
    cases = [
        (demos(fake / "other", task="FakeA-v1"), "holds demonstrations of FakeA-v1, not of the target task"),
        (demos(fake / "words", instruction="pick up the red cube"), "do not fit FakeTarget-v1's instruction"),
        (demos(fake / "six", action_dim=6), "7-D"),
        (str(fake / "missing"), "does not exist"),
    ]
    for i, (path, message) in enumerate(cases):
        with pytest.raises(AdaptError, match=message) as e:
            load_method("sft")(config(fake, base_dir, "sft", out=f"sft{i}", data=[path]))
        assert path in str(e.value)
    with pytest.raises(AdaptError, match="--data PATH"):
        load_method("sft")(config(fake, base_dir, "sft", out="nodata"))


def test_cli_options_match_the_config(capsys):
    with pytest.raises(SystemExit) as e:
        main(["adapt", "--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    assert "--kl-coef" in text and "examples:" in text and "--resume" in text
    from vla_forget.cli import build_parser

    args = build_parser().parse_args(["adapt", "--method", "grpo", "--base", "b", "--out", "o", "--group-size", "2",
                                      "--no-save-traces", "--kl-coef", "0.5"])
    cfg = common.config_from_args(args)
    assert cfg == GRPOConfig(base="b", out="o", group_size=2, save_traces=False, kl_coef=0.5) and cfg.method == "grpo"
    assert cfg.updates == 40 and cfg.lr == 3e-5  # grpo's own defaults
    args = build_parser().parse_args(["adapt", "--method", "sft", "--base", "b", "--out", "o", "--data", "d1",
                                      "--data", "d2"])
    cfg = common.config_from_args(args)
    assert cfg == SFTConfig(base="b", out="o", data=["d1", "d2"]) and (cfg.updates, cfg.save_every) == (500, 50)
    for m in METHODS.values():  # every option of every method has its help
        assert set(field_docs(m.config)) == {f.name for f in dataclasses.fields(m.config)}, m.name
        assert f"--{m.hparams[-1].replace('_', '-')}" in text


def test_an_option_of_another_method_is_refused(capsys):
    """`--gae-lambda` means nothing to SFT: it is refused before anything runs, naming the option; a sweep's
    option that no method of its grid has is refused at validation."""
    assert main(["adapt", "--method", "sft", "--base", "b", "--out", "o", "--data", "d", "--gae-lambda", "0.9",
                 "--no-save-traces"]) == 2
    err = capsys.readouterr().err
    assert "--gae-lambda, --save-traces: not options of --method sft" in err
    with pytest.raises(ValueError, match="sft has no option gae_lambda"):
        make_config("sft", base="b", out="o", gae_lambda=0.9)
    from vla_forget.spec import SpecError
    from vla_forget.sweep import expand, parse_sweep

    sweep = dict(kind="sweep", id="s", version=1, base="small-vla-base-v5", task="place-cube-on-target-v1",
                 updates=2, grid=dict(method=["sft"], lr=[1e-4], batch_size=[8], seed=[0]), options={"gae_lambda": 0.9})
    with pytest.raises(SpecError, match="options.gae_lambda: not an option of sft's runs"):
        parse_sweep(sweep)
    # an option of some of the grid's methods goes to those only
    sweep["grid"]["method"] = ["sft", "ppo"]
    sweep["method_options"] = {"sft": {"data": ["d"]}}
    runs = {r.method: r.params for r in expand(parse_sweep(sweep))}
    assert runs["ppo"]["gae_lambda"] == 0.9 and "gae_lambda" not in runs["sft"]
    assert runs["ppo"]["minibatch_size"] == 8 and runs["sft"]["batch_size"] == 8


# --------------------------------------------------------------------------
# the real simulator, through a worker process

def test_ppo_on_the_real_simulator_with_a_worker(tmp_path, base_dir):
    out = str(tmp_path / "real")
    rc = main(["adapt", "--method", "ppo", "--base", base_dir, "--task", "place-cube-on-target-v1", "--out", out,
               "--updates", "2", "--save-every", "1", "--episodes-per-update", "2", "--max-episode-steps", "4",
               "--image-size", "32", "--workers", "1", "--minibatch-size", "8", "--threads", "1", "--no-progress"])
    assert rc == 0
    rows = log_lines(out)
    assert [r["env_steps"] for r in rows] == [8, 16]
    assert all(math.isfinite(r["pg_loss"]) for r in rows)
    assert not same_weights(state(list_checkpoints(out)[-1]), state(base_dir))
    assert not os.path.exists(os.path.join(out, common.ROLLOUT_WEIGHTS))
    # the implementation check across processes: the worker's sampler and the learner agree before any step
    for r in rows:
        assert r["first_clipfrac"] == 0 and r["first_ratio_max_dev"] < 1e-4, r


@pytest.mark.gpu
def test_ppo_with_batched_gpu_envs(tmp_path, base_dir):
    out = str(tmp_path / "gpu")
    rc = main(["adapt", "--method", "ppo", "--base", base_dir, "--out", out, "--updates", "2", "--num-envs", "8",
               "--episodes-per-update", "8", "--max-episode-steps", "8", "--device", "cuda", "--no-progress"])
    assert rc == 0 and [r["env_steps"] for r in log_lines(out)] == [64, 128]


def test_ppo_first_minibatch_has_ratio_one_and_no_clipping(fake, base_dir):
    """The standard PPO implementation check, logged every update: on fresh on-policy data the first minibatch
    of the first epoch has ratio 1 (learner == sampler) and clip fraction 0; later minibatches move, the joint
    ratio of 7 tokens faster than each token's."""
    ppo.train(config(fake, base_dir, "ppo", out="check", epochs=3, lr=3e-3, updates=2, minibatch_size=4))
    rows = log_lines(str(fake / "check"))
    for r in rows:
        assert r["first_clipfrac"] == 0 and abs(r["first_ratio_mean"] - 1) < 1e-5 and r["first_ratio_max_dev"] < 1e-4
        assert len(r["clipfrac_by_epoch"]) == len(r["approx_kl_by_epoch"]) == 3 and r["optimizer_steps"] == 12
        assert 0 <= r["token_clipfrac"] <= 1
    # at this step size the ratios leave the clip range within the update, and the record says when
    assert any(r["steps_to_clip_0.2"] is not None and r["steps_to_clip_0.2"] > 1 for r in rows), rows
    assert max(r["clipfrac_by_epoch"][-1] for r in rows) > 0
    # a value head that also reads the time left: one more input, the same check
    ppo.train(config(fake, base_dir, "ppo", out="timed", epochs=1, updates=1, value_time=True))
    (r,) = log_lines(str(fake / "timed"))
    assert r["first_clipfrac"] == 0 and r["explained_variance"] is not None
    vh = torch.load(os.path.join(list_checkpoints(str(fake / "timed"))[-1], "train_state.pt"), weights_only=True)["value_head"]
    assert vh["net.0.weight"].shape[1] == load_policy(base_dir).feature_dim + 1
    # rollouts at another temperature: the sampler and the learner still use one distribution (the tempered one)
    ppo.train(config(fake, base_dir, "ppo", out="hot", epochs=1, updates=1, temperature=2.0))
    (r,) = log_lines(str(fake / "hot"))
    assert r["first_clipfrac"] == 0 and r["first_ratio_max_dev"] < 1e-4
    assert read_meta(list_checkpoints(str(fake / "hot"))[-1])["hparams"]["temperature"] == 2.0


def test_rollout_log_probs_equal_the_learners(fake, base_dir):
    """PPO's ratio is exp(learner - sampler): on the collected steps, before any update, the learner's
    joint log-probability of the sampled tokens must equal the one the rollout stored (ratio 1)."""
    from vla_forget.adapt.rollouts import Collector

    policy = load_policy(base_dir).eval()
    col = Collector(task=TARGET, policy_dir=base_dir, weights_path=str(fake / "w.pt"), workers=0, image_size=32,
                    max_episode_steps=4)
    try:
        traj = col.collect(policy, [0, 1, 2], [10, 11, 12], version=0)
    finally:
        col.close()
    idx = np.arange(traj.num_steps)
    with torch.no_grad():
        logp = policy.log_prob(traj.observation(idx, "cpu"), torch.from_numpy(traj.flat("tokens").astype(np.int64)))
    stored = torch.from_numpy(traj.flat("logp")).float()
    assert traj.num_steps == 12
    assert torch.allclose(logp, stored, atol=1e-4), (logp - stored).abs().max()
    assert float(stored.max()) < 0  # real log-probabilities of 7 tokens, not placeholders


def test_ppo_target_kl_ends_the_epochs_early(fake, base_dir):
    """With a tiny target_kl, every update stops after its first epoch (approx KL > 0 once the policy moved);
    without it, all epochs run."""
    early = ppo.train(config(fake, base_dir, "ppo", out="early", epochs=4, lr=1e-3, target_kl=1e-12, updates=1))
    full = ppo.train(config(fake, base_dir, "ppo", out="full", epochs=4, lr=1e-3, updates=1))
    logs = {}
    for name in ("early", "full"):
        with open(fake / name / "log.jsonl") as f:
            logs[name] = [json.loads(line) for line in f if line.strip()]
    assert logs["early"][-1]["epochs_run"] == 1
    assert "epochs_run" not in logs["full"][-1]
    assert logs["early"][-1]["approx_kl"] > 1e-12  # why it stopped
    # one epoch of optimiser steps moves the policy less far from the base than four

    def moved(run):
        base = dict(load_policy(base_dir).named_parameters())
        ckpt = load_policy(str(fake / run / "checkpoints" / "update-000001"))
        return sum(float((p - base[n]).pow(2).sum()) for n, p in ckpt.named_parameters()) ** 0.5

    assert 0 < moved("early") < moved("full")
    assert early["updates"] == full["updates"] == 1


def test_rollouts_render_at_the_bases_own_size_unless_told(fake, base_dir, capsys):
    from vla_forget.adapt import load_method

    load_method("ppo")(config(fake, base_dir, "ppo", out="own-size", updates=1))
    run = json.load(open(fake / "own-size" / "run.json"))
    assert run["config"]["image_size"] == TINY["image_size"]  # saved as a number: a resume compares it
    load_method("ppo")(config(fake, base_dir, "ppo", out="told", updates=1, image_size=48))
    assert json.load(open(fake / "told" / "run.json"))["config"]["image_size"] == 48
    assert f"takes {TINY['image_size']} px images but the rollouts render at --image-size 48" in capsys.readouterr().err


def test_cli_resume_takes_the_options_not_given_from_the_run(fake, base_dir, monkeypatch, capsys):
    """`adapt --out OUT --resume` continues with the run's own settings, even after a default changed (as the
    default battery did when the low-poly suite became the default); an option given that differs is refused."""
    out = str(fake / "cli-resume")
    common_args = ["adapt", "--method", "ppo", "--base", base_dir, "--out", out, "--workers", "0", "--no-progress"]
    assert main(common_args + ["--task", TARGET, "--updates", "1", "--save-every", "1", "--episodes-per-update", "2",
                               "--max-episode-steps", "4", "--minibatch-size", "4", "--lr", "1e-3"]) == 0
    battery = PPOConfig.battery
    monkeypatch.setattr(PPOConfig.__dataclass_fields__["battery"], "default", "some-other-battery-v9")
    monkeypatch.setattr(PPOConfig.__dataclass_fields__["lr"], "default", 5e-5)
    assert main(common_args + ["--resume", "--updates", "2"]) == 0
    run = json.load(open(os.path.join(out, "run.json")))
    assert run["config"]["battery"] == battery and run["config"]["lr"] == 1e-3 and run["task"] == TARGET
    assert [checkpoint_update(c) for c in list_checkpoints(out)] == [0, 1, 2]
    capsys.readouterr()
    assert main(common_args + ["--resume", "--updates", "3", "--lr", "0.5"]) == 2
    assert "lr: 0.001 -> 0.5" in capsys.readouterr().err
