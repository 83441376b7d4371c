"""The Ray executor on a one-machine cluster (head on 127.0.0.1, 2 worker CPUs): the same episodes as the local
executor on the real simulator, every job recorded once when a worker dies mid-run, clear errors before any work."""

from __future__ import annotations

import json
import os

import pytest

ray = pytest.importorskip("ray", reason="needs the ray extra: pip install 'vla-forget[ray]'")

from vla_forget.bench import BenchConfig, BenchError, run_bench  # noqa: E402
from vla_forget.executors import ExecutorError, RayExecutor, node_facts, node_problems, run_jobs  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _start():
    """A local cluster (head on 127.0.0.1, 2 CPUs); its workers import the tests package (the repository on their
    path)."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, _node_ip_address="127.0.0.1",
             configure_logging=False, runtime_env={"env_vars": {"PYTHONPATH": ROOT}})


@pytest.fixture(scope="module", autouse=True)
def _stop_at_the_end():
    yield
    if ray.is_initialized():
        ray.shutdown()


@pytest.fixture()
def cluster():
    """The module's cluster, started on first use (or again after a test that had to run without one)."""
    if not ray.is_initialized():
        _start()


def _records(out):
    with open(os.path.join(out, "episodes.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    drop = ("wall_s", "env_stats")
    return sorted(({k: v for k, v in r.items() if k not in drop} for r in rows),
                  key=lambda r: (r["policy"], r["task"], r["seed"]))


def test_a_bench_on_ray_records_the_local_executors_episodes(cluster, tmp_path):
    battery = tmp_path / "two-v2.yaml"
    battery.write_text("id: two\nversion: 2\nepisodes: 2\nseed_start: 100000\nmax_episode_steps: 12\n"
                       "tasks: [PushCube-v2, PickCube-v2]\n")

    def bench(out, executor):
        cfg = BenchConfig(policies=["expert-v2", "small-vla-base-v6"], base="small-vla-base-v6", out=str(tmp_path / out),
                          battery=str(battery), target="none", workers=2, videos_per_task=1, review_size=96,
                          kl_states_per_task=4, kl_samples_per_state=1, progress=False, executor=executor)
        run_bench(cfg, log=lambda *_: None)
        return cfg.out

    local, remote = bench("local", "local"), bench("ray", "ray")
    a, b = _records(local), _records(remote)
    assert len(a) == 2 * 2 * 2 and a == b  # seeds, instructions, outcomes, steps, returns, videos: identical
    for r in b:  # the workers wrote their videos and stills into the run folder
        if r["video"]:
            assert os.path.exists(os.path.join(remote, "videos", r["policy"], r["video"]))
    assert json.load(open(os.path.join(remote, "results.json")))["success"] == \
        json.load(open(os.path.join(local, "results.json")))["success"]
    # the driver died after half the episodes: --resume on the cluster runs the rest, each episode once
    path = os.path.join(remote, "episodes.jsonl")
    lines = open(path).readlines()
    open(path, "w").writelines(lines[: len(lines) // 2])
    cfg = BenchConfig(policies=["expert-v2", "small-vla-base-v6"], base="small-vla-base-v6", out=remote,
                      battery=str(battery), target="none", workers=2, videos_per_task=1, review_size=96,
                      kl_states_per_task=4, kl_samples_per_state=1, progress=False, executor="ray")
    run_bench(cfg, resume=True, log=lambda *_: None)
    assert _records(remote) == a


def _square(job):
    return job * job


def test_a_worker_lost_mid_run_has_its_job_run_again_and_counted_once(cluster, tmp_path):
    marker = tmp_path / "died"
    from tests.ray_jobs import die_once

    results = []
    ex = RayExecutor("auto", 2, needs_vulkan=False)
    jobs = [(i, str(marker)) for i in range(8)]
    ex.run(die_once, jobs, results.append)
    assert marker.exists() and ex.replaced == 1  # job 3's worker died once and was replaced
    assert sorted(results) == [i * i for i in range(8)]  # every job once: none lost, none twice


def test_a_job_lost_every_time_stops_the_run_with_the_reason(cluster, tmp_path):
    from tests.ray_jobs import always_die

    results = []
    with pytest.raises(ExecutorError, match=r"lost 3 times .* continue with --resume"):
        RayExecutor("auto", 1, needs_vulkan=False, retries=2).run(always_die, [1, 2], results.append)
    assert results == []


def test_an_error_in_a_job_is_raised_as_it_would_be_locally(cluster):
    from tests.ray_jobs import refuse

    with pytest.raises(ValueError, match="job 2 is bad"):
        run_jobs(refuse, [1, 2, 3], lambda r: None, executor="ray", workers=2)


def test_version_skew_and_a_missing_run_folder_are_refused_before_any_episode(cluster, tmp_path):
    facts = node_facts()
    assert node_problems(facts, facts) == []
    assert node_problems({**facts, "vla_forget": "0.0.1"}, facts) == [f"vla_forget {facts['vla_forget']} (the driver has 0.0.1)"]
    ex = RayExecutor("auto", 1, run_dir=str(tmp_path / "nowhere"), needs_vulkan=False)
    with pytest.raises(ExecutorError, match=r"cannot write to the run folder .*nowhere.*every node shares"):
        ex.run(_square, [1], lambda r: None)


def test_no_cluster_at_the_address_is_a_clear_error(tmp_path, monkeypatch):
    if ray.is_initialized():
        ray.shutdown()
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    with pytest.raises(ExecutorError, match=r"--ray-address auto: no Ray cluster there .*ray start --head"):
        RayExecutor("auto", 1, needs_vulkan=False).connect()
    with pytest.raises(BenchError, match="--workers N >= 1"):
        run_bench(BenchConfig(policies=["zero-v1"], base="zero-v1", out=str(tmp_path / "b"), executor="ray",
                              workers=0, progress=False), log=lambda *_: None)
    assert not (tmp_path / "b").exists()


def test_adaptation_rollouts_on_ray_train_the_same_policy_as_local_workers(cluster, tmp_path):
    """RLOO for two updates with its rollouts on local workers and on Ray actors (kept for the run, the weights
    through the object store): the same rollouts, the same log, the same weights bit for bit."""
    import torch
    from safetensors.torch import load_file

    from vla_forget.adapt import list_checkpoints, load_method
    from vla_forget.adapt.configs import make_config

    def train(out, executor):
        cfg = make_config("rloo", base="small-vla-base-v6", out=str(tmp_path / out), task="place-cube-on-target-v2",
                          updates=2, save_every=2, episodes_per_update=4, group_size=2, max_draws=1,
                          dynamic_sampling=False, max_episode_steps=10, workers=2, threads=1, progress=False,
                          kl_log_states=0, save_traces=False, executor=executor, lr=1e-4)
        load_method("rloo")(cfg)
        with open(os.path.join(cfg.out, "log.jsonl")) as f:
            log = [{k: v for k, v in json.loads(line).items() if not k.endswith("_s")} for line in f]
        return log, load_file(os.path.join(list_checkpoints(cfg.out)[-1], "model.safetensors"))

    log_local, w_local = train("local", "local")
    log_ray, w_ray = train("ray", "ray")
    assert log_local == log_ray and len(log_ray) == 2
    assert all(torch.equal(w_local[k], w_ray[k]) for k in w_local)


def test_demonstrations_on_ray_are_the_local_ones(cluster, tmp_path):
    import numpy as np

    from vla_forget.config import DemoConfig
    from vla_forget.datasets import open_dataset
    from vla_forget.demos import collect_demos

    def demos(out, executor):
        cfg = DemoConfig(task="PushCube-v2", episodes=3, out=str(tmp_path / out), workers=2, image_size=64,
                         progress=False, executor=executor)
        collect_demos(cfg)
        return open_dataset(cfg.out)

    a, b = demos("local", "local"), demos("ray", "ray")
    assert a.num_episodes == b.num_episodes == 3
    for i in range(3):
        ea, eb = a.episode(i), b.episode(i)
        assert np.array_equal(ea.action, eb.action) and np.array_equal(ea.image, eb.image)


def test_a_node_without_vulkan_is_named_before_any_episode(monkeypatch):
    """The per-node check, run in this process: a node whose simulator finds no Vulkan device is a problem."""
    import vla_forget.envs.vulkan as vulkan
    from vla_forget.executors import _Worker

    def no_vulkan(*a, **k):
        raise RuntimeError("no Vulkan ICD found\nmore detail")

    monkeypatch.setattr(vulkan, "check_vulkan", no_vulkan)
    hello = _Worker.hello(object.__new__(_Worker), node_facts(), None, True)
    assert hello["problems"] == ["no Vulkan device for the simulator (no Vulkan ICD found)"]


class _Uninstalled:
    def __init__(self):
        raise ModuleNotFoundError("No module named 'vla_forget'")

    def hello(self, *a):
        return {}


def test_a_cluster_without_the_project_installed_is_a_clear_error(cluster):
    ex = RayExecutor("auto", 1, needs_vulkan=False)
    ex._cls = ray.remote(num_cpus=1, max_restarts=0)(_Uninstalled)  # what a node without vla-forget starts
    with pytest.raises(ExecutorError, match=r"could not start: .*Is vla-forget installed on every node"):
        ex.run(_square, [1], lambda r: None)


def test_more_workers_than_the_cluster_has_cpus_is_refused_at_once(cluster):
    with pytest.raises(ExecutorError, match=r"too small for --workers 5: it needs 5 CPUs \(it has 2\)"):
        RayExecutor("auto", 5, needs_vulkan=False).run(_square, [1], lambda r: None)
