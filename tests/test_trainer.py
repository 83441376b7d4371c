"""The one trainer (vla_forget.trainer): checkpoint layout, exact resume, log cut, cadence, pruning, NaN guard.

Pretraining and adaptation are tested end to end in test_pretrain.py and test_adapt.py; here the trainer alone,
on a two-parameter model, so each guarantee is pinned where it lives.
"""

from __future__ import annotations

import json
import os

import pytest
import torch

from vla_forget.adapt import list_checkpoints, read_meta
from vla_forget.runfolder import RunKind
from vla_forget.trainer import TRAIN_STATE_JSON, TRAIN_STATE_PT, Trainer, checkpoint_dirs, read_train_state
from vla_forget.training import Diverged

KIND = RunKind("test", "a test run")


class Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.tensor([1.0, -2.0]))

    def save(self, path):
        os.makedirs(path, exist_ok=True)
        torch.save(self.state_dict(), os.path.join(path, "w.pt"))


def train(out, *, total=6, save_every=2, stop_at=None, resume=False, keep=0, poison_at=None):
    """A run that logs one record per step; returns (trainer, model, the noise drawn at each step)."""
    torch.manual_seed(0)
    model = Tiny()
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    t = Trainer(str(out), KIND, log_name="log.jsonl", counter="step", total=total, save_every=save_every,
                method="test", progress=False, keep_checkpoints=keep, resume=resume)
    if t.resume_from:
        model.load_state_dict(torch.load(os.path.join(t.resume_from, "w.pt"), weights_only=True))
        state, _ = t.restore(opt)
        assert state["extra"] == t.step * 10  # the run's own state comes back
    drawn = []
    for n in t.loop(stop_at):
        noise = torch.randn(2)  # the torch RNG must continue exactly after a resume
        drawn.append(noise)
        loss = ((model.w - noise) ** 2).sum() * (float("nan") if n == poison_at else 1.0)
        t.optimizer_step(opt, loss)
        if t.done(n, {"step": n, "w0": round(float(model.w[0].detach()), 6)}):
            t.save(model, opt, state={"extra": n * 10}, meta={"samples_seen": n})
    return t, model, drawn


def log(out):
    with open(os.path.join(out, "log.jsonl")) as f:
        return [json.loads(line) for line in f]


def test_resume_continues_exactly_and_the_log_is_cut_back(tmp_path):
    _, full, _ = train(tmp_path / "full")
    train(tmp_path / "part", stop_at=3)  # an interrupted call: checkpoints 2 and 3 (where it stopped)
    assert [os.path.basename(p) for p in list_checkpoints(str(tmp_path / "part"))] == ["update-000002", "update-000003"]
    os.remove(os.path.join(tmp_path / "part", "checkpoints", "update-000003", TRAIN_STATE_JSON))  # incomplete: not
    os.rename(tmp_path / "part" / "checkpoints" / "update-000003", tmp_path / "part" / "checkpoints" / "x.tmp")  # listed
    t, part, _ = train(tmp_path / "part", resume=True)  # resumes from 2: step 3's record is redone, not repeated
    assert torch.equal(full.w, part.w)
    assert log(tmp_path / "part") == log(tmp_path / "full") and [r["step"] for r in log(tmp_path / "full")] == [1, 2, 3, 4, 5, 6]
    events = [json.loads(line) for line in open(tmp_path / "part" / "events.jsonl")]
    assert [e["event"] for e in events] == ["resume"] and events[0]["step"] == 2
    meta = read_meta(t.last_checkpoint)
    assert (meta["method"], meta["update"], meta["samples_seen"]) == ("test", 6, 6) and meta["wall_time_s"] > 0


def test_checkpoints_hold_the_layout_every_run_shares(tmp_path):
    t, _, _ = train(tmp_path / "r", total=4, save_every=3)
    assert [os.path.basename(p) for p in checkpoint_dirs(t.dir)] == ["update-000003", "update-000004"]  # + the end
    state, tensors = read_train_state(t.last_checkpoint)
    assert state["step"] == 4 and state["extra"] == 40 and tensors["optimizer"]["state"]
    assert set(tensors) >= {"optimizer", "torch_rng", "cuda_rng"}


def test_checkpoints_from_before_train_state_json_read_their_counters_from_the_tensors(tmp_path):
    t, _, _ = train(tmp_path / "r", total=2, save_every=2)
    path = t.last_checkpoint
    os.remove(os.path.join(path, TRAIN_STATE_JSON))
    tensors = torch.load(os.path.join(path, TRAIN_STATE_PT), weights_only=True)
    torch.save({**tensors, "update": 2, "env_steps": 640, "samples_seen": 64, "wall_time_s": 9.5},
               os.path.join(path, TRAIN_STATE_PT))  # as adaptation runs wrote it
    state, _ = read_train_state(path)
    assert state == {"update": 2, "env_steps": 640, "samples_seen": 64, "wall_time_s": 9.5, "step": 2}


def test_keep_checkpoints_prunes_all_but_the_newest(tmp_path):
    t, _, _ = train(tmp_path / "r", total=6, save_every=1, keep=2)
    assert [os.path.basename(p) for p in checkpoint_dirs(t.dir)] == ["update-000005", "update-000006"]


def test_a_nan_stops_before_the_step_and_names_the_last_good_checkpoint(tmp_path):
    with pytest.raises(Diverged, match=r"training diverged at step 5: the loss is nan.*update-000004") as e:
        train(tmp_path / "r", poison_at=5)
    assert e.value.last_checkpoint.endswith("update-000004")
    assert [r["step"] for r in log(tmp_path / "r")] == [1, 2, 3, 4]
    last = json.loads(open(tmp_path / "r" / "events.jsonl").readlines()[-1])
    assert last["event"] == "diverged" and last["step"] == 4


def test_a_step_must_end_with_done(tmp_path):
    t = Trainer(str(tmp_path), KIND, log_name="log.jsonl", counter="update", total=3, save_every=1, method="m",
                progress=False)
    with pytest.raises(RuntimeError, match="update 1 ended without trainer.done"):
        for _ in t.loop():
            pass


def test_a_cpu_trainer_makes_multithreaded_backward_passes_repeat_exactly(tmp_path):
    """With 2 threads, torch's CPU backward of the small VLA (its default size) sums some gradients in a varying
    order unless deterministic algorithms are on; the trainer turns them on, so runs and resumes repeat exactly."""
    from vla_forget.policies.base import Observation
    from vla_forget.policies.small_vla import SmallVLA

    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        Trainer(str(tmp_path), KIND, log_name="log.jsonl", counter="step", total=1, save_every=1, method="m",
                progress=False, device="cpu")
        assert torch.are_deterministic_algorithms_enabled()
        pol = SmallVLA.random_init(seed=0)
        pol.train()
        g = torch.Generator().manual_seed(0)
        n = 32
        obs = Observation(image=torch.randint(0, 256, (n, 128, 128, 3), dtype=torch.uint8, generator=g),
                          state=torch.randn(n, 16, generator=g), instruction=["put the red cube on the white target"] * n)
        tokens = torch.randint(0, 256, (n, 7), generator=g)
        grads = []
        for _ in range(3):
            torch.manual_seed(1)
            pol.zero_grad()
            logits = pol.action_logits(obs, tokens)
            torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), tokens.reshape(-1)).backward()
            grads.append({k: p.grad.clone() for k, p in pol.named_parameters() if p.grad is not None})
        assert all(torch.equal(grads[0][k], other[k]) for other in grads[1:] for k in grads[0])
    finally:
        torch.set_num_threads(threads)
