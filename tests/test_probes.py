"""The failure classes of benchmarks/probes/place_failures.py, on hand-made end states."""

import importlib.util
import json
import os

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def classify():
    spec = importlib.util.spec_from_file_location("place_failures", os.path.join(ROOT, "benchmarks", "probes", "place_failures.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.classify


HALF, TOL = 0.02, 0.03
START = np.array([[0.0, 0.0, HALF], [0.1, 0.0, HALF], [0.2, 0.0, HALF]])
DISCS = np.array([[0.0, 0.15, 0.0], [0.1, 0.15, 0.0], [0.2, 0.15, 0.0]])


def _end(named_xyz, others=None):
    end = START.copy() if others is None else others.copy()
    end[0] = named_xyz
    return end


@pytest.mark.parametrize(
    "end, max_z, success, expected",
    [
        (_end([0.0, 0.15, HALF]), [0.1, HALF, HALF], True, "success"),
        (_end([0.01, 0.14, HALF]), [0.1, HALF, HALF], False, "on named disc, not let go"),
        (_end([0.2, 0.15, HALF]), [0.1, HALF, HALF], False, "on another disc"),
        (_end([0.05, 0.05, 0.12]), [0.12, HALF, HALF], False, "carried, still in the air"),
        (_end([0.05, 0.05, HALF]), [0.12, HALF, HALF], False, "carried, put down off every disc"),
        (_end([0.0, 0.0, HALF], np.array([[0, 0, HALF], [0.1, 0.05, HALF], [0.2, 0, HALF]])), [HALF, HALF, HALF], False,
         "moved another cube"),
        (_end([0.0, 0.0, HALF]), [HALF + 0.01, HALF, HALF], False, "no grasp"),
    ],
)
def test_each_ending_falls_in_its_class(classify, end, max_z, success, expected):
    out = classify(START, end, np.array(max_z, dtype=float), DISCS, named=0, disc=0, success=success, half=HALF, tol=TOL)
    assert out["class"] == expected
    assert out["named_to_named_disc_m"] == pytest.approx(np.linalg.norm(end[0, :2] - DISCS[0, :2]), abs=1e-4)


def _load_probe(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "benchmarks", "probes", f"{name}.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _bench_folder(path, outcomes):
    os.makedirs(path)
    with open(os.path.join(path, "episodes.jsonl"), "w") as f:
        for (policy, task, seed), ok in outcomes.items():
            f.write(json.dumps({"policy": policy, "task": task, "seed": seed, "success_at_end": ok}) + "\n")


def test_compare_versions_pairs_tasks_across_versions_by_seed(tmp_path):
    mod = _load_probe("compare_versions")
    seeds = range(40)
    # PickCube: the same outcomes on both versions; PushCube: 30/40 on v1, 5/40 on v2 (worse); one seed only on v1
    v1 = {("p", "PickCube-v1", s): s % 2 == 0 for s in seeds}
    v1.update({("p", "PushCube-v1", s): s < 30 for s in seeds})
    v1[("p", "PickCube-v1", 999)] = True
    v2 = {("p", "PickCube-v2", s): s % 2 == 0 for s in seeds}
    v2.update({("p", "PushCube-v2", s): s < 5 for s in seeds})
    _bench_folder(tmp_path / "a", v1)
    _bench_folder(tmp_path / "b", v2)
    res = mod.compare(str(tmp_path / "a"), str(tmp_path / "b"))
    rows = {r["task"]: r for r in res["rows"]}
    assert rows["PickCube"]["n"] == 40 and rows["PickCube"]["diff"] == 0 and rows["PickCube"]["verdict"] == "same"
    assert (rows["PushCube"]["first"], rows["PushCube"]["second"]) == (30, 5)
    assert rows["PushCube"]["diff"] == pytest.approx(-25 / 40) and rows["PushCube"]["ci_high"] < 0
    assert rows["PushCube"]["verdict"] == "worse" and res["holds"] == {"p": False}
    assert "does NOT hold" in mod.markdown(res, ("v1", "v2"))


def _probe(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "benchmarks", "probes", f"{name}.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("rho", [0.0, 0.05, 0.5])
def test_gradient_snr_recovers_a_known_signal_to_noise_ratio(rho):
    """Synthetic per-group gradients g_k = mu + noise (isotropic, 4000 dimensions): the probe's estimates from
    their Gram matrix recover rho = |mu|^2 / E|noise|^2, and its upper bound covers it."""
    snr = _probe("rloo_gradient_snr").snr
    rng = np.random.default_rng(0)
    n, d = 40, 4000
    mu = rng.normal(size=d)
    mu *= np.sqrt(rho * d) / max(np.linalg.norm(mu), 1e-12)  # |mu|^2 = rho * d, the noise's E|e|^2 = d
    estimates = []
    for _ in range(20):
        G = mu + rng.normal(size=(n, d))
        out = snr(G @ G.T, splits=50, seed=0)
        estimates.append(out)
        assert out["rho_upper_95"] >= out["rho"]
    mean_rho = np.mean([o["rho"] for o in estimates])
    se = np.std([o["rho"] for o in estimates]) / np.sqrt(len(estimates))
    assert abs(mean_rho - rho) < 4 * se + 1e-3  # unbiased
    covered = np.mean([o["rho_upper_95"] >= rho for o in estimates])
    assert covered >= 0.85
    h = n // 2
    split = np.mean([o["split_half_cos"] for o in estimates])
    assert abs(split - rho * h / (1 + rho * h)) < 0.05  # the direct cosine agrees with the formula
    if rho > 0:
        for c in (0.5, 0.7):  # the groups needed for cosine c, from rho itself
            assert estimates[0][f"groups_for_cos_{c}"] > 0


def test_learning_curves_first_against_last(tmp_path):
    lc = _probe("learning_curves")
    run = tmp_path / "run"
    run.mkdir()
    rows = [{"update": u, "success_rate": 0.1 if u <= 3 else 0.4, "kl_to_base_after": 0.01 * u} for u in range(1, 9)]
    (run / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    got = lc.first_last(np.array([r["success_rate"] for r in rows]), 3)
    assert got["first"] == pytest.approx(0.1) and got["last"] == pytest.approx(0.4) and got["se"] == pytest.approx(0)
    assert lc.main([str(run), "--window", "3"]) == 0
    with pytest.raises(SystemExit, match="no log.jsonl"):
        lc.main([str(tmp_path / "missing")])
