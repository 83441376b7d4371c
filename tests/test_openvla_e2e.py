"""The OpenVLA adapter end to end through the real CLI, on the tiny OpenVLA-format stand-in, on the CPU.

* ``vla-forget adapt --method sft`` (2 steps) on a small RLDS dataset of the target task: LoRA adapters train,
  checkpoints are adapter folders that load back;
* ``vla-forget adapt --method ppo`` (1 update of 2 episodes of 3 steps) on the real CPU simulator, in-process
  (the compact adapter state dict that worker processes receive is covered in test_openvla.py);
* ``vla-forget bench`` on the real CPU simulator (one task, 2 episodes of 3 steps; a state recorded every 5
  steps, so 2 states) with the base and the SFT-adapted checkpoint: success matrix, videos and the
  chain-rule divergences to the base.

Needs the test extra (transformers, peft) and the rlds extra (datasets); about a minute and a half.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

pytest.importorskip("transformers", reason="needs the test extra: pip install -c constraints.txt -e '.[test]'")
pytest.importorskip("peft", reason="needs the test extra: pip install -c constraints.txt -e '.[test]'")
pytest.importorskip("tensorflow_datasets", reason="needs the rlds extra: pip install 'vla-forget[rlds]'")

from vla_forget.adapt import list_checkpoints  # noqa: E402
from vla_forget.cli import main  # noqa: E402
from vla_forget.policies import load_policy  # noqa: E402
from vla_forget.policies.openvla import OpenVLAPolicy  # noqa: E402
from vla_forget.policies.openvla_tiny import build_tiny_openvla  # noqa: E402

pytestmark = pytest.mark.slow
TARGET = "place-cube-on-target-v1"


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return tmp_path_factory.mktemp("openvla-e2e")


@pytest.fixture(scope="module")
def base(work):
    return build_tiny_openvla(str(work / "base"), seed=0)


@pytest.fixture(scope="module")
def demos(work):
    from vla_forget.datasets import write_dataset

    rng = np.random.default_rng(0)
    T, H = 4, 32

    def episodes():
        for i, (cube, target) in enumerate([("red", "green"), ("blue", "purple"), ("green", "red")]):
            yield dict(image=rng.integers(0, 256, (T, H, H, 3), dtype=np.uint8), state=rng.normal(size=(T, 16)).astype(np.float32),
                       action=rng.uniform(-1, 1, (T, 7)).astype(np.float32), instruction=f"put the {cube} cube on the {target} target",
                       seed=i, task="PlaceCubeOnTarget-v1")

    path = str(work / "demos")
    write_dataset(path, episodes(), name="place_cube_on_target_v1", image_shape=(H, H, 3), state_dim=16, action_dim=7)
    return path


@pytest.fixture(scope="module")
def sft_run(work, base, demos):
    out = str(work / "sft")
    rc = main(["adapt", "--method", "sft", "--base", f"openvla:{base}", "--task", TARGET, "--data", demos, "--updates", "2",
               "--save-every", "1", "--batch-size", "4", "--lr", "1e-2", "--threads", "1", "--no-progress", "--out", out])
    assert rc == 0
    return out


def test_adapt_sft_trains_lora_adapters(sft_run, base):
    ckpts = list_checkpoints(sft_run)
    assert [os.path.basename(c) for c in ckpts] == ["update-000000", "update-000001", "update-000002"]
    for c in ckpts:
        assert os.path.exists(os.path.join(c, "adapter_model.safetensors")), "checkpoints are LoRA adapters, not 7 B copies"
        assert json.load(open(os.path.join(c, "config.json")))["policy_class"] == "OpenVLA"
    first, last = load_policy(ckpts[0]), load_policy(ckpts[-1])
    assert isinstance(last, OpenVLAPolicy) and last.lora_enabled and last.lora.rank == 32
    assert first.checkpoint_hash() != last.checkpoint_hash()
    log = [json.loads(line) for line in open(os.path.join(sft_run, "log.jsonl"))]
    assert [r["update"] for r in log] == [1, 2] and all(np.isfinite(r["loss"]) for r in log)


def test_adapt_ppo_one_update_on_the_simulator(work, base):
    out = str(work / "ppo")
    rc = main(["adapt", "--method", "ppo", "--base", f"openvla:{base}", "--task", TARGET, "--updates", "1",
               "--episodes-per-update", "2", "--max-episode-steps", "3", "--workers", "0", "--image-size", "32",
               "--minibatch-size", "6", "--epochs", "1", "--threads", "1", "--no-progress", "--out", out])
    assert rc == 0
    ckpts = list_checkpoints(out)
    assert [os.path.basename(c) for c in ckpts] == ["update-000000", "update-000001"]
    rec = json.loads(open(os.path.join(out, "log.jsonl")).readline())
    assert rec["update"] == 1 and rec["env_steps"] == 6 and np.isfinite(rec["loss"])
    assert load_policy(ckpts[-1]).checkpoint_hash() != load_policy(ckpts[0]).checkpoint_hash()


def test_bench_runs_the_adapter_on_the_cpu_simulator(work, base, sft_run):
    battery = work / "battery.yaml"
    battery.write_text("id: openvla-smoke\nversion: 1\nepisodes: 2\nseed_start: 100000\nmax_episode_steps: 3\n"
                       "tasks:\n  - task: PlaceCubeOnTarget-v1\n")  # the env PPO made: its shaders are compiled
    adapted = list_checkpoints(sft_run)[-1]
    out = str(work / "bench")
    rc = main(["bench", "--policy", adapted, "--base", f"openvla:{base}", "--battery", str(battery), "--episodes", "2",
               "--target", "none", "--workers", "0", "--image-size", "32", "--kl-states-per-task", "4",
               "--videos-per-task", "1", "--no-progress", "--out", out])
    assert rc == 0
    res = json.load(open(os.path.join(out, "results.json")))
    assert set(res["success"]) == {f"openvla:{base}", adapted}
    assert res["success"][adapted]["PlaceCubeOnTarget-v1"]["n"] == 2
    kl = res["kl_to_base"][adapted]
    # 4 states from 2 episodes of 3 steps, spread over them (steps 0, 1 and 1, 2)
    assert kl["n_states"] == 4 and kl["forward"] > 0 and np.isfinite(kl["reverse"]) and kl["reverse_se"] is not None
    assert 0 < kl["tv_ess"] <= 1 and (0 < kl["tv"] <= 1 if kl["tv_reliable"] else kl["tv"] is None)
    assert {r["kind"] for r in res["policies"]} == {"OpenVLAPolicy"}
    episodes = [json.loads(line) for line in open(os.path.join(out, "episodes.jsonl"))]
    assert len(episodes) == 4 and all(e["steps"] == 3 for e in episodes)
