"""`vla-forget pretrain` on a tiny synthetic dataset (no simulator): loss goes down, resume is exact, NaN stops."""

from __future__ import annotations

import dataclasses
import json
import os

import numpy as np
import pytest

pytest.importorskip("tensorflow_datasets", reason="needs the rlds extra: pip install 'vla-forget[rlds]'")

import torch  # noqa: E402

from vla_forget.cli import main  # noqa: E402
from vla_forget.datasets import open_dataset, write_dataset  # noqa: E402
from vla_forget.policies.small_vla import SmallVLA  # noqa: E402
from vla_forget.pretrain import (  # noqa: E402
    Diverged,
    PretrainError,
    PretrainConfig,
    checkpoint_dirs,
    parse_data_spec,
    pretrain,
    split_episodes,
)

H = 16
STATE = 6
TINY = dict(image_size=32, conv_channels=(8, 16), residual_stages=1, image_grid=2, state_dim=8, d_model=32,
            n_layers=1, context_layers=1, heads=2, ff_mult=2, text_layers=1, text_tokens=2, max_instruction_bytes=32)


def _episodes(task: str, sign: float, n: int, seed: int):
    """Actions that a policy can learn: a sign per instruction plus a function of the state."""
    rng = np.random.default_rng(seed)
    for i in range(n):
        T = 6
        state = rng.normal(size=(T, STATE)).astype(np.float32)
        action = np.zeros((T, 7), np.float32)
        action[:, :6] = 0.5 * sign + 0.3 * np.tanh(state[:, :6])
        action[:, 6] = sign
        yield dict(image=rng.integers(0, 256, (T, H, H, 3), dtype=np.uint8), state=state, action=action,
                   instruction=f"do {task}", seed=i, task=task, source="synthetic")


@pytest.fixture(scope="module")
def fixture(tmp_path_factory):
    root = tmp_path_factory.mktemp("pretrain")
    data = []
    for name, sign, seed in (("left", -1.0, 0), ("right", 1.0, 1)):
        path = str(root / name)
        write_dataset(path, _episodes(name, sign, 8, seed), name=name, image_shape=(H, H, 3), state_dim=STATE)
        data.append(path)
    init = str(root / "init")
    SmallVLA.random_init(seed=0, **TINY).save(init)
    return root, data, init


def _cfg(root, data, init, out, **kw):
    base = dict(data=[data[0], data[1] + ":2"], out=str(root / out), steps=40, batch_size=16, lr=3e-3, warmup_steps=5,
                val_fraction=0.25, val_steps=48, eval_every=20, log_every=10, save_every=20, init=init, progress=False)
    base.update(kw)
    return PretrainConfig(**base)


def _metrics(out):
    with open(os.path.join(out, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def _events(out):
    with open(os.path.join(out, "events.jsonl")) as f:
        return [json.loads(line) for line in f]


def test_data_spec_and_split():
    assert parse_data_spec("a/b") == ("a/b", 1.0)
    assert parse_data_spec("a/b:0.5") == ("a/b", 0.5)
    assert parse_data_spec("C:/x") == ("C:/x", 1.0)
    tr, va = split_episodes(10, 0.2, np.random.default_rng(0))
    assert len(va) == 2 and len(tr) == 8 and not set(tr) & set(va)
    tr, va = split_episodes(3, 0.1, np.random.default_rng(0))
    assert len(va) == 1 and len(tr) == 2


def test_pretrain_lowers_loss_and_writes_policy_folders(fixture):
    root, data, init = fixture
    cfg = _cfg(root, data, init, "smoke", steps=60, save_every=30, eval_every=30)
    s = pretrain(cfg)
    rows = _metrics(cfg.out)
    start = _events(cfg.out)[0]
    assert start["event"] == "start" and start["val_episodes"] == [2, 2] and start["train_episodes"] == [6, 6]
    assert all("event" not in r for r in rows) and rows[0] == {"step": 0, **{k: start[k] for k in rows[0] if k != "step"}}
    vals = [r for r in rows if "val_loss" in r]
    assert vals[0]["step"] == 0 and vals[-1]["val_loss"] < start["val_loss"] - 0.5, (start["val_loss"], vals)
    train = [r for r in rows if "loss" in r]
    assert train[-1]["loss"] < train[0]["loss"] and all(r["samples_per_s"] > 0 for r in train)
    assert [os.path.basename(p) for p in checkpoint_dirs(cfg.out)] == ["update-000030", "update-000060"]
    # the checkpoint is a policy folder with the pooled statistics and the state statistics
    model = SmallVLA.load(s["checkpoint"])
    assert model.unnorm_key == "pretrain_mix" and set(model.dataset_statistics) == {"left", "right", "pretrain_mix"}
    assert float(model.state_std[:STATE].sub(1).abs().max()) < 0.5 and float(model.state_std[STATE:].sub(1).abs().max()) == 0


def test_resume_equals_uninterrupted(fixture):
    root, data, init = fixture
    full = _cfg(root, data, init, "full", steps=40)
    pretrain(full)
    half = _cfg(root, data, init, "half", steps=40, save_every=15)
    pretrain(half, stop_at=20)  # interrupted after 20 steps (checkpoints 15 and 20)
    assert [os.path.basename(p) for p in checkpoint_dirs(half.out)] == ["update-000015", "update-000020"]
    with pytest.raises(Exception, match="--resume"):
        pretrain(half)
    pretrain(half, resume=True)
    a = SmallVLA.load(os.path.join(full.out, "checkpoints", "update-000040")).state_dict()
    b = SmallVLA.load(os.path.join(half.out, "checkpoints", "update-000040")).state_dict()
    assert [r for r in _events(half.out) if r.get("event") == "resume"][0]["step"] == 20
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    # the log is cut back to the checkpoint and redone: the same records as the uninterrupted run's
    strip = lambda rows: [{k: v for k, v in r.items() if k != "samples_per_s"} for r in rows]  # noqa: E731
    assert strip(_metrics(half.out)) == strip(_metrics(full.out))


def test_nan_loss_stops_and_keeps_last_good_checkpoint(fixture, monkeypatch):
    root, data, init = fixture
    cfg = _cfg(root, data, init, "nan", steps=40, save_every=10)
    calls = {"n": 0}
    original = SmallVLA.action_logits

    def poisoned(self, obs, tokens):
        out = original(self, obs, tokens)
        if self.training:
            calls["n"] += 1
            if calls["n"] > 25:
                return out * float("nan")
        return out

    monkeypatch.setattr(SmallVLA, "action_logits", poisoned)
    with pytest.raises(Diverged) as err:
        pretrain(cfg)
    assert err.value.last_checkpoint.endswith("update-000020")
    assert [os.path.basename(p) for p in checkpoint_dirs(cfg.out)] == ["update-000010", "update-000020"]
    SmallVLA.load(err.value.last_checkpoint)  # loadable, finite
    assert _events(cfg.out)[-1]["event"] == "diverged"
    assert "training diverged at step 26" in str(err.value)


def test_cli_pretrain(fixture, capsys):
    root, data, init = fixture
    out = str(root / "cli")
    rc = main(["pretrain", "--data", data[0], "--data", data[1], "--out", out, "--steps", "4", "--batch-size", "8",
               "--save-every", "4", "--eval-every", "4", "--init", init, "--no-progress"])
    assert rc == 0
    assert "update-000004" in capsys.readouterr().out
    assert main(["pretrain", "--data", data[0], "--out", out, "--steps", "4", "--init", init, "--no-progress"]) == 2


def test_dagger_episode_labels_with_the_chosen_expert():
    """A DAgger rollout records the labeller's action at every visited state (here the learner is expert-v2 itself,
    so the labels are the executed actions); expert-v1 labels the same kind of states with turns to the cube's faces."""
    from vla_forget.envs import task_info
    from vla_forget.pretrain import DaggerJob, dagger_episode

    ep = dagger_episode(DaggerJob(policy="expert-v2", task="PickCube-v1", seed=3, image_size=32, expert="expert-v2"))
    assert ep["source"] == "dagger-expert-v2"
    # by default a rollout runs the task's full length, as bench does: success at the end, after holding still
    assert len(ep["action"]) == task_info("PickCube-v1").max_episode_steps and ep["success"] and ep["is_terminal"]
    assert ep["reward"][-1] == 1.0 and 0 < ep["reward"].argmax() < len(ep["reward"]) - 20
    assert ep["image"].shape[1:] == (32, 32, 3) and len(ep["action"]) == len(ep["state"]) == len(ep["reward"])
    assert np.abs(ep["action"][:, 5]).max() < 0.05  # never turns about z
    v1 = dagger_episode(DaggerJob(policy="expert-v2", task="PickCube-v1", seed=3, image_size=32, expert="expert-v1",
                                  success_hold=5))
    assert v1["source"] == "dagger-expert-v1" and v1["success"]
    assert len(v1["action"]) < len(ep["action"]) and v1["reward"][-5:].min() == 1.0  # ended 5 steps after success
    n = min(len(v1["state"]), len(ep["state"])) // 2  # the same rollout (the learner's), other labels
    np.testing.assert_allclose(v1["state"][:n], ep["state"][:n], atol=1e-3)
    assert np.abs(v1["action"][:, 5]).max() > 0.2


def test_dagger_expert_is_checked_and_old_runs_resume_with_expert_v1(fixture):
    root, data, init = fixture
    with pytest.raises(PretrainError, match="expert-v2, expert-v1"):
        pretrain(_cfg(root, data, init, "bad-expert", dagger_rounds=1, dagger_expert="expert-v9",
                      dagger_tasks=["PullCube-v1"]))
    assert not (root / "bad-expert").exists()  # refused before the run folder is made
    # a run folder from before --dagger-expert existed: its config has no such field (expert-v1 labelled it)
    out = root / "old-run"
    pretrain(_cfg(root, data, init, "old-run", steps=20), stop_at=20)
    cfg = json.loads((out / "config.json").read_text())
    del cfg["dagger_expert"], cfg["dagger_success_hold"]  # (nor one for the rollouts' length: 5 steps after success)
    (out / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(PretrainError, match="dagger_expert: 'expert-v1' -> 'expert-v2'.*dagger_success_hold: 5 -> 0"):
        pretrain(_cfg(root, data, init, "old-run", steps=20), resume=True)
    with pytest.raises(PretrainError, match="--dagger-success-hold must be >= 0"):
        pretrain(_cfg(root, data, init, "bad-hold", dagger_rounds=1, dagger_success_hold=-1))
    assert not (root / "bad-hold").exists()
    s = pretrain(_cfg(root, data, init, "old-run", steps=20, dagger_expert="expert-v1", dagger_success_hold=5),
                 resume=True)
    assert s["steps"] == 20


def test_resume_with_more_dagger_rounds_continues_a_finished_run(fixture, monkeypatch):
    """A finished run resumed with a larger --dagger-rounds runs the new rounds and trains on (statistics kept)."""
    import vla_forget.pretrain as pre

    root, data, init = fixture
    rounds = []

    def fake_round(cfg, checkpoint, round_idx, tasks, image_shape, state_dim, log):  # the simulator part is tested above
        out = os.path.join(cfg.out, "dagger", f"round-{round_idx}")
        write_dataset(out, _episodes("left", -1.0, 2, 100 + round_idx), name=f"dagger_round_{round_idx}",
                      image_shape=tuple(image_shape), state_dim=state_dim)
        rounds.append((round_idx, os.path.basename(checkpoint), list(tasks), cfg.dagger_episodes))
        log({"event": "dagger", "round": round_idx, "episodes": 2})
        return out, []

    monkeypatch.setattr(pre, "dagger_round", fake_round)
    kw = dict(steps=20, dagger_steps=10, dagger_tasks=["PullCube-v1"], dagger_episodes=1)
    s = pretrain(_cfg(root, data, init, "more-rounds", dagger_rounds=1, **kw))
    assert s["steps"] == 30 and rounds == [(1, "update-000020", ["PullCube-v1"], 1)]
    stats = json.loads((root / "more-rounds" / "checkpoints" / "update-000030" / "dataset_statistics.json").read_text())["pretrain_mix"]
    s = pretrain(_cfg(root, data, init, "more-rounds", dagger_rounds=3, **{**kw, "dagger_episodes": 4}), resume=True)
    assert s["steps"] == 50 and [r[:2] for r in rounds] == [(1, "update-000020"), (2, "update-000030"), (3, "update-000040")]
    assert [r[3] for r in rounds] == [1, 4, 4]
    assert len(s["dagger_datasets"]) == 3
    after = json.loads((root / "more-rounds" / "checkpoints" / "update-000050" / "dataset_statistics.json").read_text())["pretrain_mix"]
    assert after["action"] == stats["action"], "the new rounds are tokenised with the run's statistics"
    with pytest.raises(PretrainError, match="dagger_steps: 10 -> 20"):
        pretrain(_cfg(root, data, init, "more-rounds", dagger_rounds=3, **{**kw, "dagger_steps": 20}), resume=True)


def test_dagger_task_counts_plan_the_rollouts_and_bad_ones_are_refused(fixture, monkeypatch):
    """--dagger-task TASK:N rolls TASK out N times per round (others --dagger-episodes); bad specs stop the run early."""
    import vla_forget.rollout as rollout
    from vla_forget.pretrain import dagger_round, parse_dagger_task

    assert parse_dagger_task("PullCube-v1", 7) == ("PullCube-v1", 7)
    assert parse_dagger_task("PlaceCubeOnTarget-v1:30", 7) == ("PlaceCubeOnTarget-v1", 30)
    for bad, why in (("PullCube-v1:0", "1..100"), ("PullCube-v1:x", "1..100"), ("PullCube-v1:101", "1..100"),
                     ("NoSuchTask-v1", "unknown task"), ("LiftPegUpright-v1", "no scripted expert")):
        with pytest.raises(PretrainError, match=why):
            parse_dagger_task(bad, 5)
    root, data, init = fixture
    with pytest.raises(PretrainError, match="unknown task"):
        pretrain(_cfg(root, data, init, "bad-task", dagger_rounds=1, dagger_tasks=["PullCube-v1", "Pul-v1:3"]))
    assert not (root / "bad-task").exists()

    jobs_seen = []

    def fake_parallel(fn, jobs, workers, on_result, **kw):  # the rollouts themselves are tested above
        for job in jobs:
            jobs_seen.append((job.task, job.seed))
            rng = np.random.default_rng(job.seed)
            on_result({"task": job.task, "seed": job.seed, "instruction": f"do {job.task}", "success": job.seed % 2 == 0,
                       "image": rng.integers(0, 256, (3, H, H, 3), dtype=np.uint8),
                       "state": rng.normal(size=(3, STATE)).astype(np.float32), "action": np.zeros((3, 7), np.float32),
                       "reward": np.zeros(3, np.float32), "is_terminal": False, "source": "dagger-expert-v2"})

    monkeypatch.setattr(rollout, "run_parallel", fake_parallel)
    cfg = _cfg(root, data, init, "plan", dagger_episodes=2)
    os.makedirs(cfg.out)
    logged = []
    path, success = dagger_round(cfg, init, 2, ["PullCube-v1", "PushCube-v1:3"], (H, H, 3), STATE, logged.append)
    assert jobs_seen == [("PullCube-v1", 51000), ("PullCube-v1", 51001),
                         ("PushCube-v1", 51100), ("PushCube-v1", 51101), ("PushCube-v1", 51102)]
    assert success == {"PullCube-v1": 0.5, "PushCube-v1": 2 / 3} and logged[0]["episodes"] == 5
    assert open_dataset(path).num_episodes == 5


def test_transport_fraction_draws_carry_steps_of_the_training_episodes_only(fixture):
    from vla_forget.pretrain import TransportSampler, make_sampler, transport_steps

    root, data, init = fixture
    left, right = open_dataset(data[0]), open_dataset(data[1])
    # "left" closes its gripper (-1) and moves x by about -0.5: carry steps; "right" keeps it open: none
    assert len(transport_steps(left.all_actions())) > 0 and len(transport_steps(right.all_actions())) == 0
    train = [np.array([0, 1, 2, 3, 4, 5]), np.arange(8)]
    from vla_forget.datasets import mix_datasets

    tokenizer = mix_datasets([(data[0], 1.0), (data[1], 1.0)], statistics="pooled", name="m").tokenizer
    sampler = make_sampler([left, right], [1.0, 2.0], train, tokenizer, np.random.default_rng(0), 0.5)
    assert isinstance(sampler, TransportSampler)
    assert set(sampler.ep.tolist()) <= set(train[0].tolist())  # held-out episodes 6 and 7 never drawn
    assert sampler.counts == (len(transport_steps(np.concatenate([left.episode(i).action for i in train[0]]))), 0)
    batch = sampler.sample(16)
    assert len(transport_steps(batch["action"][:8])) == 8  # half the batch: carry steps
    assert isinstance(make_sampler([left, right], [1.0, 2.0], train, tokenizer, np.random.default_rng(0), 0.0),
                      type(sampler.base))
    # the transport rows pick a dataset by the --data weights (among those with transport steps), as the rest do
    twice = make_sampler([left, right, open_dataset(data[0])], [1.0, 5.0, 3.0], [train[0], train[1], train[0]],
                         tokenizer, np.random.default_rng(0), 0.5)
    assert twice.counts[0] == twice.counts[2] and np.allclose(twice._p, [0.25, 0.0, 0.75])
    twice.rng = np.random.default_rng(1)
    k = twice.rng.choice(3, size=4000, p=twice._p)
    assert abs(np.mean(k == 2) - 0.75) < 0.03 and twice.sample(16)["tokens"].shape == (16, 7)
    with pytest.raises(PretrainError, match="no transport steps"):
        make_sampler([right], [1.0], [np.arange(8)], tokenizer, np.random.default_rng(0), 0.5)


def test_transport_fraction_run_records_it_and_old_runs_resume_without_it(fixture):
    root, data, init = fixture
    with pytest.raises(PretrainError, match="--transport-fraction must be in"):
        pretrain(_cfg(root, data, init, "tr-bad", transport_fraction=1.0))
    cfg = _cfg(root, data, init, "tr", steps=20, save_every=10, transport_fraction=0.5)
    pretrain(cfg, stop_at=10)
    start = _events(cfg.out)[0]
    assert start["transport_fraction"] == 0.5 and start["transport_steps"][0] > 0 and start["transport_steps"][1] == 0
    pretrain(cfg, resume=True)
    assert [os.path.basename(p) for p in checkpoint_dirs(cfg.out)] == ["update-000010", "update-000020"]
    plain = _cfg(root, data, init, "tr-old", steps=20, save_every=10)
    pretrain(plain, stop_at=10)
    path = os.path.join(plain.out, "config.json")
    with open(path) as f:
        old = json.load(f)
    del old["transport_fraction"]  # a run from before the option
    with open(path, "w") as f:
        json.dump(old, f)
    pretrain(plain, resume=True)
    assert os.path.basename(checkpoint_dirs(plain.out)[-1]) == "update-000020"
    with pytest.raises(PretrainError, match="transport_fraction"):
        pretrain(_cfg(root, data, init, "tr-old", steps=20, save_every=10, transport_fraction=0.5), resume=True)


def test_keep_statistics_trains_on_with_the_initial_policys_tokenizer(fixture, tmp_path):
    root, data, init = fixture
    first = dataclasses.replace(_cfg(root, data, init, "keep-first", steps=10, save_every=10), data=[data[0]])
    start = SmallVLA.load(pretrain(first)["checkpoint"])  # statistics pooled over "left" alone
    with pytest.raises(PretrainError, match="no action statistics to keep"):
        pretrain(_cfg(root, data, init, "keep-random", keep_statistics=True))
    # data whose pooled statistics would differ ("right" added); the kept ones are the start's
    start_path = os.path.join(first.out, "checkpoints", "update-000010")
    cfg = _cfg(root, data, start_path, "keep", steps=10, save_every=10, keep_statistics=True, name="other")
    s = pretrain(cfg)
    after = SmallVLA.load(s["checkpoint"])
    assert after.unnorm_key == start.unnorm_key == "pretrain_mix" and after.dataset_statistics == start.dataset_statistics
    assert torch.equal(after.state_mean, start.state_mean) and torch.equal(after.state_std, start.state_std)
    assert _events(cfg.out)[0]["unnorm_key"] == "pretrain_mix"
    pooled = SmallVLA.load(pretrain(_cfg(root, data, start_path, "pooled", steps=10, save_every=10))["checkpoint"])
    assert pooled.dataset_statistics != start.dataset_statistics  # without the option: pooled over both


def test_a_pretraining_run_has_the_shared_checkpoint_layout_that_bench_finds(fixture):
    """Pretraining writes checkpoints/update-NNNNNN with a meta.json, like adaptation, so `bench --checkpoints`
    lists a pretraining run's checkpoints (method "pretrain"); its config is stamped with its kind."""
    from vla_forget.checkpoints import find_checkpoints, run_info

    root, data, init = fixture
    cfg = _cfg(root, data, init, "layout", steps=20, save_every=10, eval_every=10)
    pretrain(cfg)
    found = find_checkpoints(cfg.out)
    assert [(c.name, c.method, c.update, c.samples_seen) for c in found] == [
        ("update-000010", "pretrain", 10, 160), ("update-000020", "pretrain", 20, 320)]
    assert found[-1].key == "layout@update-000020" and found[-1].hparams["batch_size"] == 16
    assert run_info(cfg.out).method == "pretrain" and run_info(cfg.out).config["steps"] == 20
    assert json.loads(open(os.path.join(cfg.out, "config.json")).read())["kind"] == "pretrain"
    from vla_forget.bench import BenchConfig, make_plan

    plan = make_plan(BenchConfig([], init, str(root / "bench-layout"), checkpoints=[cfg.out]))
    assert [r.key for r in plan.refs][-2:] == ["layout@update-000010", "layout@update-000020"]


def test_a_run_in_the_earlier_layout_still_resumes(fixture):
    """Runs written before the shared layout (DIR/ckpt-NNNNNN) continue from their newest checkpoint; the new
    checkpoints go to the shared layout."""
    import shutil

    root, data, init = fixture
    cfg = _cfg(root, data, init, "legacy", steps=20, save_every=10, eval_every=10)
    pretrain(cfg)
    for p in checkpoint_dirs(cfg.out):  # as an older version left the folder
        os.remove(os.path.join(p, "meta.json"))
        shutil.move(p, os.path.join(cfg.out, "ckpt-" + os.path.basename(p).split("-")[1]))
    shutil.rmtree(os.path.join(cfg.out, "checkpoints"))
    assert [os.path.basename(p) for p in checkpoint_dirs(cfg.out)] == ["ckpt-000010", "ckpt-000020"]
    s = pretrain(dataclasses.replace(cfg, steps=30), resume=True)
    assert s["steps"] == 30
    assert [os.path.basename(p) for p in checkpoint_dirs(cfg.out)] == ["ckpt-000010", "ckpt-000020", "update-000030"]
    assert any(r.get("event") == "resume" and r.get("step") == 20 for r in _events(cfg.out))


def test_one_meaning_of_the_transport_share_for_pretraining_and_sft(fixture):
    """The transport share is the batch's own distribution restricted to transport steps: dataset k with
    probability proportional to w_k * T_k / N_k; SFT's uniform draw over all steps makes that one uniform draw
    over the transport steps (the same stream as before the rule was shared). Runs from before keep theirs."""
    from vla_forget.bc import TransportSampler, make_sampler
    from vla_forget.datasets import mix_datasets

    root, data, init = fixture
    left = open_dataset(data[0])
    tokenizer = mix_datasets([(data[0], 1.0)], statistics="pooled", name="m").tokenizer
    train = [np.arange(8), np.array([0, 1])]
    s = make_sampler([left, left], [1.0, 3.0], train, tokenizer, np.random.default_rng(0), 0.5)
    n = np.array([len(s.base.steps[k][0]) for k in range(2)], float)
    want = np.array([1.0, 3.0]) / 4 * np.array(s.counts) / n
    assert np.allclose(s._p, want / want.sum()) and not s._uniform
    old = make_sampler([left, left], [1.0, 3.0], train, tokenizer, np.random.default_rng(0), 0.5, "dataset-weight")
    assert np.allclose(old._p, [0.25, 0.75])
    # SFT: weights proportional to the steps, every episode: every transport step equally likely, one uniform draw
    sft = make_sampler([left, left], [left.num_steps] * 2, [np.arange(8)] * 2, tokenizer, np.random.default_rng(5), 0.5)
    assert isinstance(sft, TransportSampler) and sft._uniform
    rows = sft.sample(8)
    pick = np.random.default_rng(5).integers(0, len(sft.ep), size=4)
    assert np.array_equal(rows["action"][:4], np.stack([left.episode(int(e)).action[int(t)] for e, t in
                                                        zip(sft.ep[pick], sft.st[pick])]))


def test_a_run_from_before_the_transport_rule_resumes_with_its_own(fixture):
    root, data, init = fixture
    cfg = _cfg(root, data, init, "tr-rule", steps=20, save_every=10, transport_fraction=0.5)
    pretrain(cfg, stop_at=10)
    path = os.path.join(cfg.out, "config.json")
    saved = json.loads(open(path).read())
    assert saved["transport_rule"] == "conditional"
    del saved["transport_rule"], saved["kind"], saved["format"]  # as an older version wrote it
    open(path, "w").write(json.dumps(saved))
    assert pretrain(cfg, resume=True)["steps"] == 20
    assert json.loads(open(path).read())["transport_rule"] == "dataset-weight"
