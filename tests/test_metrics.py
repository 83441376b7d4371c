import math

import numpy as np
import pytest

from vla_forget.metrics import (Rate, count_rates, forgetting, forgetting_from_episodes, gain, mover_mean, newcombe_difference,
                                newcombe_paired_difference, wilson_interval)


@pytest.mark.parametrize("k,n,lo,hi", [
    # reference values from the closed form (Wilson 1927), z = 1.96
    (0, 10, 0.0, 0.2775),
    (10, 10, 0.7225, 1.0),
    (5, 10, 0.2366, 0.7634),
    (81, 263, 0.2553, 0.3662),
])
def test_wilson_reference_values(k, n, lo, hi):
    l, h = wilson_interval(k, n)
    assert l == pytest.approx(lo, abs=1e-4) and h == pytest.approx(hi, abs=1e-4)


def test_wilson_properties():
    assert wilson_interval(0, 0) == (0.0, 1.0)
    for n in (1, 7, 50):
        for k in range(n + 1):
            l, h = wilson_interval(k, n)
            assert 0 <= l <= k / n <= h <= 1
    with pytest.raises(ValueError):
        wilson_interval(3, 2)


def test_newcombe_difference_reference():
    # Newcombe (1998), table II example: 56/70 vs 48/80 -> 0.2 [0.0524, 0.3339]
    d, lo, hi = newcombe_difference(Rate(56, 70), Rate(48, 80))
    assert d == pytest.approx(0.2)
    assert lo == pytest.approx(0.0524, abs=1e-3) and hi == pytest.approx(0.3339, abs=1e-3)


def test_forgetting_and_gain():
    base = {"a": Rate(8, 10), "b": Rate(6, 10), "t": Rate(1, 10)}
    pol = {"a": Rate(4, 10), "b": Rate(6, 10), "t": Rate(9, 10)}
    f = forgetting(base, pol, ["a", "b"])
    assert f["value"] == pytest.approx(0.2)
    assert f["per_task"]["a"]["value"] == pytest.approx(0.4)
    assert f["ci_low"] < 0.2 < f["ci_high"]
    g = gain(base["t"], pol["t"])
    assert g["value"] == pytest.approx(0.8)
    assert math.isnan(gain(None, pol["t"])["value"])


def test_count_rates():
    recs = [{"policy": "p", "task": "a", "s": True}, {"policy": "p", "task": "a", "s": False}, {"policy": "q", "task": "a", "s": True}]
    r = count_rates(recs, "s")
    assert r["p"]["a"] == Rate(1, 2) and r["q"]["a"] == Rate(1, 1)


# --------------------------------------------------------------------------
# forgetting from episode records: paired by seed (Newcombe 1998 paired, method 10), MOVER over tasks

def episodes(policy, task, outcomes, seed0=100000):
    """Records of ``policy`` on ``task``: one per outcome, seeds from ``seed0`` up."""
    return [{"policy": policy, "task": task, "seed": seed0 + i, "success_at_end": bool(o)} for i, o in enumerate(outcomes)]


def paired_table(task, a, b, c, d, seed0=100000):
    """Base and policy records whose pairs by seed form the 2x2 table (a: both succeed, b: base only, c: policy only)."""
    base = [1] * a + [1] * b + [0] * c + [0] * d
    pol = [1] * a + [0] * b + [1] * c + [0] * d
    return episodes("base", task, base, seed0), episodes("pol", task, pol, seed0)


def test_newcombe_paired_hand_worked():
    # Table of n = 20 pairs: a = 9 both succeed, b = 6 base only, c = 1 policy only, d = 4 neither.
    # p1 = 15/20 = 0.75, p2 = 10/20 = 0.5, difference (b - c)/n = 0.25.
    # Wilson (z = 1.959964, z^2/n = 0.1920730): 15/20 -> centre 0.7097187, half 0.1784196 -> [0.5312991, 0.8881383];
    #                                            10/20 -> centre 0.5,       half 0.2007020 -> [0.2992980, 0.7007020].
    # phi = (9*4 - 6*1) / sqrt(15*5*10*10) = 30 / sqrt(7500) = 0.3464102.
    # lower: dl1 = p1 - l1 = 0.2187009, du2 = u2 - p2 = 0.2007020,
    #        0.25 - sqrt(dl1^2 - 2 phi dl1 du2 + du2^2) = 0.25 - sqrt(0.0577009) = 0.0097899
    # upper: du1 = u1 - p1 = 0.1381383, dl2 = p2 - l2 = 0.2007020,
    #        0.25 + sqrt(du1^2 - 2 phi du1 dl2 + dl2^2) = 0.25 + sqrt(0.0401553) = 0.4503879
    d, lo, hi = newcombe_paired_difference(9, 6, 1, 4)
    assert d == pytest.approx(0.25, abs=1e-12)
    assert lo == pytest.approx(0.0097899, abs=1e-6) and hi == pytest.approx(0.4503879, abs=1e-6)
    base, pol = paired_table("a", 9, 6, 1, 4)
    f = forgetting_from_episodes(base, pol, ["a"])  # one task: MOVER of one interval is that interval
    assert (f["value"], f["n_tasks"]) == (pytest.approx(0.25), 1)
    assert f["ci_low"] == pytest.approx(0.0097899, abs=1e-6) and f["ci_high"] == pytest.approx(0.4503879, abs=1e-6)
    assert f["per_task"]["a"]["paired"] is True and f["per_task"]["a"]["n"] == 20
    assert "method" in f


def test_mover_mean_hand_worked():
    # mean 0.1; lower 0.1 - sqrt(0.1^2 + 0.1^2)/2 = 0.0292893; upper 0.1 + sqrt(0.2^2 + 0.2^2)/2 = 0.2414214
    m, lo, hi = mover_mean([(0.2, 0.1, 0.4), (0.0, -0.1, 0.2)])
    assert (m, lo, hi) == (pytest.approx(0.1), pytest.approx(0.0292893, abs=1e-6), pytest.approx(0.2414214, abs=1e-6))
    # with limits within [-1, 1] the MOVER limits stay within them; out-of-range input is clipped
    assert mover_mean([(0.95, 0.5, 2.0)])[1:] == (pytest.approx(0.5), 1.0)
    assert all(math.isnan(x) for x in mover_mean([]))


@pytest.mark.parametrize("paired", [True, False])
def test_forgetting_extremes_stay_in_range(paired):
    tasks = ["a", "b", "c"]
    shift = 0 if paired else 50  # different seeds: the unpaired interval
    base = [r for t in tasks for r in episodes("base", t, [1] * 10)]
    pol = [r for t in tasks for r in episodes("pol", t, [0] * 10, 100000 + shift)]
    f = forgetting_from_episodes(base, pol, tasks)  # every skill lost
    assert f["value"] == 1.0 and f["ci_high"] <= 1.0 and -1.0 <= f["ci_low"] < 1.0
    assert all(v["paired"] is paired for v in f["per_task"].values())
    base = [r for t in tasks for r in episodes("base", t, [0] * 10)]
    pol = [r for t in tasks for r in episodes("pol", t, [1] * 10, 100000 + shift)]
    f = forgetting_from_episodes(base, pol, tasks)  # the reverse: everything gained
    assert f["value"] == -1.0 and f["ci_low"] >= -1.0 and -1.0 < f["ci_high"] <= 1.0


def test_forgetting_from_rates_stays_in_range():
    # the normal approximation gave 1.96 * sqrt(0.09 / 10) = 0.186 either side of -0.9: a lower bound of -1.086
    f = forgetting({"a": Rate(1, 10)}, {"a": Rate(10, 10)}, ["a"])
    assert f["value"] == pytest.approx(-0.9) and -1.0 <= f["ci_low"] < -0.9 < f["ci_high"] <= 1.0


def test_base_against_itself_is_exactly_zero():
    tasks = ["a", "b", "c"]
    outcomes = {"a": [1, 1, 1, 0, 0, 0, 0, 0, 0, 0], "b": [1] * 10, "c": [1, 0] * 5}  # 0.3 alone would give +-0.11
    base = [r for t in tasks for r in episodes("base", t, outcomes[t])]
    f = forgetting_from_episodes(base, base, tasks)
    assert (f["value"], f["ci_low"], f["ci_high"]) == (0.0, 0.0, 0.0)
    assert all((v["value"], v["ci_low"], v["ci_high"], v["paired"]) == (0.0, 0.0, 0.0, True) for v in f["per_task"].values())
    # a different policy whose outcomes agree on these seeds has forgetting 0 here, but not an exact 0 interval
    other = [dict(r, policy="other") for r in base]
    g = forgetting_from_episodes(base, other, tasks)
    assert g["value"] == 0.0 and g["ci_low"] < 0.0 < g["ci_high"]


def test_pairing_narrows_the_interval_on_correlated_outcomes():
    # 20 seeds: the policy fails 3 of the base's 15 successes and nothing else changes (phi = 0.65)
    d, lo, hi = newcombe_paired_difference(12, 3, 0, 5)
    du, lou, hiu = newcombe_difference(Rate(15, 20), Rate(12, 20))
    assert d == pytest.approx(du) and lou < lo <= d <= hi < hiu
    assert hi - lo < 0.75 * (hiu - lou)
    base, pol = paired_table("a", 12, 3, 0, 5)
    paired = forgetting_from_episodes(base, pol, ["a"])
    unpaired = forgetting_from_episodes(base, [dict(r, seed=r["seed"] + 1000) for r in pol], ["a"])
    assert paired["per_task"]["a"]["paired"] and not unpaired["per_task"]["a"]["paired"]
    assert (paired["ci_low"], paired["ci_high"]) == (pytest.approx(lo), pytest.approx(hi))
    assert (unpaired["ci_low"], unpaired["ci_high"]) == (pytest.approx(lou), pytest.approx(hiu))


def test_forgetting_from_episodes_skips_and_falls_back():
    base, pol = paired_table("a", 5, 3, 1, 1)
    base += episodes("base", "b", [1, 0, 1])
    pol += episodes("pol", "c", [1, 1])
    f = forgetting_from_episodes(base, pol, ["a", "b", "c", "d"])  # b and c are missing on one side, d on both
    assert f["n_tasks"] == 1 and set(f["per_task"]) == {"a"} and f["value"] == pytest.approx(0.2)
    none = forgetting_from_episodes(base, pol, ["b", "c"])
    assert none["n_tasks"] == 0 and none["per_task"] == {}
    assert all(math.isnan(none[k]) for k in ("value", "ci_low", "ci_high"))
    # a seed run twice on one side, or seed sets that only overlap: no pairing, the unpaired interval on the rates
    dup = forgetting_from_episodes(base + [dict(base[0])], pol, ["a"])["per_task"]["a"]
    assert not dup["paired"] and (dup["n_base"], dup["n_policy"]) == (11, 10)
    part = forgetting_from_episodes(base, pol[:7], ["a"])["per_task"]["a"]
    d, lo, hi = newcombe_difference(Rate(8, 10), Rate(5, 7))
    assert not part["paired"] and (part["value"], part["ci_low"], part["ci_high"]) == (d, lo, hi)


def test_forgetting_from_episodes_coverage():
    # 6 tasks x 10 seeds. Each seed has a difficulty u ~ U(0, 1); the base succeeds when u < p_base; the policy sees
    # the same u with probability 0.7 (else a fresh one) and succeeds when it is < p_policy: correlated pairs.
    # Measured: coverage 0.9426 over these 5000 replicates (0.940 over 60000 others; mean width 0.217).
    # The unpaired interval covers 0.988 and one with phi's sign flipped 0.997, hence the upper limit.
    p_base = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.3])
    p_pol = np.array([0.7, 0.7, 0.4, 0.5, 0.2, 0.3])
    true = float(np.mean(p_base - p_pol))  # 0.15
    tasks = [f"t{i}" for i in range(6)]
    rng = np.random.default_rng(20240601)
    reps, n, hits = 5000, 10, 0
    for _ in range(reps):
        u = rng.random((6, n))
        v = np.where(rng.random((6, n)) < 0.7, u, rng.random((6, n)))
        bo, po = u < p_base[:, None], v < p_pol[:, None]
        base = [r for i, t in enumerate(tasks) for r in episodes("base", t, bo[i])]
        pol = [r for i, t in enumerate(tasks) for r in episodes("pol", t, po[i])]
        f = forgetting_from_episodes(base, pol, tasks)
        assert -1.0 <= f["ci_low"] <= f["value"] <= f["ci_high"] <= 1.0
        hits += f["ci_low"] <= true <= f["ci_high"]
    coverage = hits / reps
    assert 0.93 <= coverage <= 0.975, coverage
