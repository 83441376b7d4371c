import math

import pytest

from vla_forget.metrics import Rate, count_rates, forgetting, gain, newcombe_difference, wilson_interval


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
