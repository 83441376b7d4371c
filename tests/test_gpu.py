"""GPU-simulation regression tests (`pytest -m gpu`): ManiSkill3 GPU physics, batched policies.

Skipped, with the reason, where there is no CUDA. Run on a GPU box with `make test-gpu`.
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
