"""GPU-simulation regression tests (`pytest -m gpu`): ManiSkill3 GPU physics, batched policies.

Skipped, with the reason, where there is no CUDA (and, for the Bridge digital twins, where their assets
are missing: `vla-forget assets --download bridge --download widowx`). Run on a GPU box with
`make test-gpu`. Covered: 64 parallel GPU envs with batched policy inference; the scripted expert's
success on GPU physics against the CPU's (Wilson intervals overlap); `vla-forget bench` of the small VLA
batched on the GPU; the OpenVLA adapter (tiny OpenVLA-format stand-in) in bfloat16 on CUDA against float32
on the CPU, acting for 64 GPU envs, and one PPO update with LoRA on GPU physics; the Bridge (WidowX)
digital twins with 64 GPU envs.
"""

import pytest

from vla_forget.metrics import wilson_interval

pytestmark = pytest.mark.gpu

N_ENVS = 64


def run(policy_spec, task, seeds, device):
    from vla_forget import rollout
    from vla_forget.envs import make_task_env
    from vla_forget.policies import load_policy

    policy = load_policy(policy_spec, device=device)
    env = make_task_env(task, num_envs=N_ENVS, render_images=getattr(policy, "needs_image", True), privileged=True,
                        sim_backend="gpu", image_size=128)
    try:
        job = rollout.EpisodeJob(policy_key=policy_spec, policy_spec=policy_spec, policy_hash="gpu-test", task=task,
                                 seeds=list(seeds), device=device, num_envs=N_ENVS, sim_backend="gpu")
        return rollout.run_episodes(env, policy, job)
    finally:
        env.close()


@pytest.mark.parametrize("task", ["PickCube-v1", "PlaceCubeOnTarget-v1"])
def test_expert_success_on_gpu_matches_cpu(task):
    """64 parallel GPU envs; the expert's GPU success rate must be consistent with its CPU rate."""
    gpu = run("expert-v1", task, range(1000, 1000 + N_ENVS), "cuda")
    assert len(gpu) == N_ENVS
    k_gpu = sum(r["success_at_end"] for r in gpu)
    cpu = [run_cpu_episode(task, s) for s in range(1000, 1016)]
    k_cpu = sum(cpu)
    lo_g, hi_g = wilson_interval(k_gpu, N_ENVS)
    lo_c, hi_c = wilson_interval(k_cpu, len(cpu))
    assert lo_g <= hi_c and lo_c <= hi_g, f"GPU {k_gpu}/{N_ENVS} vs CPU {k_cpu}/{len(cpu)}: intervals do not overlap"


def run_cpu_episode(task, seed):
    from vla_forget import rollout
    from vla_forget.envs import make_task_env
    from vla_forget.policies import load_policy

    env = make_task_env(task, render_images=False, privileged=True, sim_backend="cpu")
    try:
        job = rollout.EpisodeJob(policy_key="expert-v1", policy_spec="expert-v1", policy_hash="cpu", task=task, seeds=[seed])
        return rollout.run_episodes(env, load_policy("expert-v1"), job)[0]["success_at_end"]
    finally:
        env.close()


def test_small_vla_runs_batched_on_gpu():
    recs = run("small-vla-random-v1", "PickCube-v1", range(N_ENVS), "cuda")
    assert len(recs) == N_ENVS and {r["seed"] for r in recs} == set(range(N_ENVS))
    assert all(r["steps"] > 0 for r in recs)


def _tiny_openvla(path, unnorm_key="identity"):
    pytest.importorskip("transformers", reason="needs the test extra (transformers, peft)")
    pytest.importorskip("peft", reason="needs the test extra (transformers, peft)")
    from vla_forget.policies.openvla_tiny import build_tiny_openvla, identity_statistics

    return build_tiny_openvla(str(path), statistics={unnorm_key: identity_statistics()})


def test_small_vla_bench_runs_batched_on_gpu(tmp_path):
    """`vla-forget bench` with --num-envs 64 --device cuda: one batch of 64 GPU envs per task and policy."""
    import json
    import os

    from vla_forget.cli import main

    battery = tmp_path / "battery.yaml"
    battery.write_text(f"id: gpu-smoke\nversion: 1\nepisodes: {N_ENVS}\nseed_start: 100000\nmax_episode_steps: 20\n"
                       "tasks:\n  - task: PickCube-v1\n  - task: PushCube-v1\n")
    out = str(tmp_path / "bench")
    rc = main(["bench", "--policy", "small-vla-base-v5", "--base", "small-vla-random-v1", "--battery", str(battery),
               "--episodes", str(N_ENVS), "--target", "none", "--num-envs", str(N_ENVS), "--device", "cuda",
               "--workers", "0", "--kl-states-per-task", "32", "--videos-per-task", "1", "--no-progress", "--out", out])
    assert rc == 0
    res = json.load(open(os.path.join(out, "results.json")))
    for policy in ("small-vla-base-v5", "small-vla-random-v1"):
        for task in ("PickCube-v1", "PushCube-v1"):
            assert res["success"][policy][task]["n"] == N_ENVS
    kl = res["kl_to_base"]["small-vla-base-v5"]
    assert kl["n_states"] > 0 and kl["forward"] >= 0
    episodes = [json.loads(line) for line in open(os.path.join(out, "episodes.jsonl"))]
    assert len(episodes) == 4 * N_ENVS and len({(e["policy"], e["task"], e["seed"]) for e in episodes}) == 4 * N_ENVS


def test_openvla_adapter_bfloat16_on_cuda_matches_float32_on_cpu(tmp_path):
    import torch

    from vla_forget.policies import load_policy
    from vla_forget.policies.base import Observation

    tiny = _tiny_openvla(tmp_path / "tiny")
    gpu = load_policy(f"openvla:{tiny}", device="cuda").eval()
    cpu = load_policy(f"openvla:{tiny}").eval()
    g = torch.Generator().manual_seed(0)
    obs = Observation(image=torch.randint(0, 256, (N_ENVS, 128, 128, 3), dtype=torch.uint8, generator=g),
                      state=torch.zeros(N_ENVS, 16), instruction=["pick up the red cube"] * N_ENVS)
    tokens = torch.randint(0, 256, (N_ENVS, 7), generator=g)
    with torch.no_grad():
        p_gpu = torch.softmax(gpu.action_logits(obs.to("cuda"), tokens.cuda()).float(), -1).cpu()
        p_cpu = torch.softmax(cpu.action_logits(obs, tokens).float(), -1)
    assert gpu._core().get_input_embeddings().weight.dtype == torch.bfloat16, "bf16 on CUDA by default"
    assert (p_gpu - p_cpu).abs().max() < 0.05
    toks, logits = gpu.sample_tokens(obs.to("cuda"), generator=torch.Generator(device="cuda").manual_seed(0))
    assert toks.shape == (N_ENVS, 7) and toks.device.type == "cuda"
    with torch.no_grad():
        assert torch.allclose(gpu.action_logits(obs.to("cuda"), toks).float(), logits, atol=0.15)


def test_openvla_adapter_acts_for_64_gpu_envs(tmp_path):
    tiny = _tiny_openvla(tmp_path / "tiny")
    recs = run(f"openvla:{tiny}", "PickCube-v1", range(N_ENVS), "cuda")
    assert len(recs) == N_ENVS and {r["seed"] for r in recs} == set(range(N_ENVS))
    assert all(r["steps"] > 0 for r in recs)


def test_ppo_with_lora_on_gpu_physics(tmp_path):
    """One PPO update of the OpenVLA adapter (LoRA, bfloat16 base) on 64 GPU envs in the trainer's process."""
    import json
    import os

    from vla_forget.adapt import list_checkpoints
    from vla_forget.cli import main

    tiny = _tiny_openvla(tmp_path / "tiny")
    out = str(tmp_path / "ppo")
    rc = main(["adapt", "--method", "ppo", "--base", f"openvla:{tiny}", "--task", "place-cube-on-target-v1", "--updates", "1",
               "--episodes-per-update", str(N_ENVS), "--num-envs", str(N_ENVS), "--max-episode-steps", "5",
               "--device", "cuda", "--minibatch-size", "64", "--epochs", "1", "--no-progress", "--out", out])
    assert rc == 0
    rec = json.loads(open(os.path.join(out, "log.jsonl")).readline())
    assert rec["env_steps"] == 5 * N_ENVS and rec["loss"] == rec["loss"]  # finite, not NaN
    assert len(list_checkpoints(out)) == 2


def test_bridge_digital_twins_with_64_gpu_envs(tmp_path):
    """WidowX Bridge twins on GPU physics, the tiny OpenVLA (bridge_orig units) acting for 64 envs."""
    from vla_forget import rollout
    from vla_forget.envs import make_task_env, task_unavailable_reason
    from vla_forget.policies import load_policy

    task = "BridgeCarrotOnPlate-v1"
    reason = task_unavailable_reason(task)
    if reason:
        pytest.skip(reason)
    tiny = _tiny_openvla(tmp_path / "tiny", unnorm_key="bridge_orig")
    spec = f"openvla:{tiny}"
    policy = load_policy(spec, device="cuda").eval()
    env = make_task_env(task, num_envs=N_ENVS, sim_backend="gpu", image_size=224, max_episode_steps=5)
    try:
        obs = env.reset(list(range(N_ENVS)))
        assert obs.image.shape == (N_ENVS, 224, 224, 3) and set(obs.instruction) == {"put carrot on plate"}
        job = rollout.EpisodeJob(policy_key=spec, policy_spec=spec, policy_hash="gpu-test", task=task,
                                 seeds=list(range(N_ENVS)), device="cuda", num_envs=N_ENVS, sim_backend="gpu",
                                 max_episode_steps=5)
        recs = rollout.run_episodes(env, policy, job)
    finally:
        env.close()
    assert len(recs) == N_ENVS and all(r["steps"] == 5 for r in recs)
