"""A small deterministic bench (fake tasks, seeded random small VLAs) against its recorded ``results.json``.

The golden file pins the whole results schema and every figure the analysis derives from the episodes and the
divergences: success with intervals, forgetting, gain, the divergences by phase, the law's inputs. A change of
the schema or of a figure must be deliberate: rewrite the file with ``VLA_FORGET_UPDATE_GOLDEN=1 pytest
tests/test_golden_results.py`` and say why in the commit. Floats compare to 1e-6 relative (the CPU's
summation order may differ between machines); everything else exactly.
"""

from __future__ import annotations

import json
import math
import os

import pytest

from tests.fakes import patch_fake_rollouts
from vla_forget.bench import BenchConfig, run_bench

GOLDEN = os.path.join(os.path.dirname(os.path.abspath(__file__)), "golden", "bench-results.json")
#: fields that vary from run to run or machine to machine (not the bench's figures)
VOLATILE = ("software", "wall_s", "created", "started", "finished")


def _normalise(x, tmp: str):
    """The results with the run's own folder written as ``<tmp>``, volatile fields and timings dropped."""
    if isinstance(x, dict):
        return {k: _normalise(v, tmp) for k, v in x.items()
                if k not in VOLATILE and not k.endswith("_s") and k not in ("cache_hits", "base_passes")}
    if isinstance(x, list):
        return [_normalise(v, tmp) for v in x]
    if isinstance(x, str):
        return x.replace(tmp, "<tmp>")
    return x


def _compare(got, want, where="results"):
    if isinstance(want, dict):
        assert isinstance(got, dict), where
        assert sorted(got) == sorted(want), f"{where}: keys {sorted(set(got) ^ set(want))} differ"
        for k in want:
            _compare(got[k], want[k], f"{where}.{k}")
    elif isinstance(want, list):
        assert isinstance(got, list) and len(got) == len(want), f"{where}: length {len(got)} != {len(want)}"
        for i, (g, w) in enumerate(zip(got, want)):
            _compare(g, w, f"{where}[{i}]")
    elif isinstance(want, float) and not isinstance(want, bool):
        assert isinstance(got, (int, float)), f"{where}: {got!r} is not a number"
        if math.isnan(want):
            assert math.isnan(got), f"{where}: {got} != nan"
        else:
            assert got == pytest.approx(want, rel=1e-6, abs=1e-9), f"{where}: {got} != {want}"
    else:
        assert got == want, f"{where}: {got!r} != {want!r}"


@pytest.fixture()
def golden_bench(tmp_path, monkeypatch):
    from vla_forget.policies import POLICIES
    from vla_forget.registry import Entry

    POLICIES.ids()
    monkeypatch.setitem(POLICIES.by_id, "small-vla-random-s1-v1",
                        Entry("small-vla-random-s1-v1", "vla_forget.policies.small_vla:SmallVLA.random_init",
                              {"seed": 1}, "small-vla-random-v1 from seed 1"))
    patch_fake_rollouts(monkeypatch, tmp_path)
    battery = tmp_path / "fake-v1.yaml"
    battery.write_text("id: fake\nversion: 1\nepisodes: 6\nseed_start: 10\ntasks: [FakeA-v1, FakeB-v1]\n")
    target = tmp_path / "fake-target-v1.yaml"
    target.write_text("id: fake-target\nversion: 1\ntask: FakeTarget-v1\nepisodes: 6\nseed_start: 500\n")
    cfg = BenchConfig(policies=["small-vla-random-v1", "small-vla-random-s1-v1", "zero-v1"],
                      base="small-vla-random-v1", out=str(tmp_path / "run"), battery=str(battery), target=str(target),
                      workers=0, image_size=16, videos_per_task=1, kl_states_per_task=6, kl_samples_per_state=2,
                      progress=False)
    run_bench(cfg, log=lambda *_: None)
    with open(tmp_path / "run" / "results.json") as f:
        return _normalise(json.load(f), str(tmp_path))


def test_a_small_bench_writes_the_recorded_results(golden_bench):
    if os.environ.get("VLA_FORGET_UPDATE_GOLDEN"):
        os.makedirs(os.path.dirname(GOLDEN), exist_ok=True)
        with open(GOLDEN, "w") as f:
            json.dump(golden_bench, f, indent=1, sort_keys=True)
            f.write("\n")
    with open(GOLDEN) as f:
        want = json.load(f)
    _compare(golden_bench, want)
    # the figures the file pins are real ones: two token policies, so divergences and forgetting are computed
    assert want["kl_to_base"]["small-vla-random-s1-v1"]["forward"] > 0
    assert "small-vla-random-s1-v1" in want["forgetting"]
