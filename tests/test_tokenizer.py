"""OpenVLA's action tokenizer and BOUNDS_Q99 normalisation against the published formulas."""

import json

import numpy as np
import pytest

from vla_forget.tokenizer import (ActionStatistics, ActionTokenizer, StatisticsError, load_dataset_statistics,
                                  select_statistics)


def openvla_reference_token_ids(normalized, vocab_size=32000):
    """OpenVLA's ActionTokenizer.__call__, written out: digitize on linspace(-1, 1, 256)."""
    bins = np.linspace(-1, 1, 256)
    a = np.clip(normalized, -1.0, 1.0)
    return vocab_size - np.digitize(a, bins)


def openvla_reference_decode(token_ids, vocab_size=32000):
    bins = np.linspace(-1, 1, 256)
    centers = (bins[:-1] + bins[1:]) / 2.0
    d = vocab_size - token_ids
    d = np.clip(d - 1, a_min=0, a_max=centers.shape[0] - 1)
    return centers[d]


STATS = ActionStatistics(q01=[-0.3, -0.2, -0.4, -0.5, -0.5, -1.0, -1.0], q99=[0.3, 0.25, 0.35, 0.5, 0.5, 1.0, 1.0],
                         mask=[True] * 6 + [False])


def test_normalisation_formula_and_clip():
    tok = ActionTokenizer(STATS)
    a = np.array([[0.0, 0.25, -0.4, 0.1, 2.0, -3.0, 0.7]])
    n = tok.normalize(a)
    expected = 2 * (a - STATS.q01) / (STATS.q99 - STATS.q01) - 1
    expected = np.clip(expected, -1, 1)
    np.testing.assert_allclose(n[0, :6], expected[0, :6])
    assert n[0, 6] == pytest.approx(0.7)  # gripper is masked: not normalised
    assert n[0, 4] == 1.0 and n[0, 5] == -1.0  # clipped


def test_token_ids_match_openvla_reference():
    tok = ActionTokenizer(STATS)
    rng = np.random.default_rng(0)
    n = np.concatenate([rng.uniform(-1.2, 1.2, size=(500, 7)), np.array([[-1, 1, 0, -0.999, 0.999, 1e-9, -1e-9]])])
    ids = tok.bins_to_token_ids(tok.bin_normalized(n), 32000)
    np.testing.assert_array_equal(ids, openvla_reference_token_ids(n))
    np.testing.assert_allclose(tok.debin(tok.token_ids_to_bins(ids, 32000)), openvla_reference_decode(ids))


def test_bin_edges():
    tok = ActionTokenizer()
    edges = np.linspace(-1, 1, 256)
    # a value exactly on edge i falls in bin i (np.digitize, right=False), just below it in bin i-1
    for i in [1, 50, 128, 254]:
        assert tok.bin_normalized(edges[i]) == i
        assert tok.bin_normalized(np.nextafter(edges[i], -2)) == i - 1
    assert tok.bin_normalized(-1.0) == 0
    assert tok.bin_normalized(1.0) == 255  # only a_n == 1 reaches the last bin
    assert tok.debin(255) == tok.debin(254)  # ... and it decodes to the last centre


def test_round_trip_error_within_half_a_bin():
    tok = ActionTokenizer(STATS)
    rng = np.random.default_rng(1)
    a = rng.uniform(STATS.q01, STATS.q99, size=(2000, 7))
    back = tok.decode(tok.encode(a))
    half_bin = (STATS.q99 - STATS.q01) / 255  # bin width 2/255 in normalised units -> half = 1/255
    assert np.all(np.abs(back - a)[:, :6] <= half_bin[:6] + 1e-12)
    assert np.all(np.abs(back - a)[:, 6] <= 1 / 255 + 1e-12)


def test_gripper_mask_passes_through_and_zero_range_dimension():
    stats = ActionStatistics(q01=[-0.1, 0.0, 0, 0, 0, 0, -1.0], q99=[0.1, 0.0, 0, 0, 0, 0, -1.0], mask=[True] * 6 + [False])
    tok = ActionTokenizer(stats)
    a = np.array([0.05, 0.0, 0.0, 0.0, 0.0, 0.0, -1.0])
    n = tok.normalize(a)
    assert np.all(np.isfinite(n))
    assert n[1] == 0.0  # q01 == q99: normalises to 0 (no division by zero)
    back = tok.decode(tok.encode(a))
    assert back[1] == pytest.approx(0.0, abs=1e-12)
    assert back[6] == pytest.approx(-1.0 + 1 / 255, abs=1e-9)  # gripper: bin centre, not un-normalised


def test_statistics_from_actions_match_numpy(tmp_path):
    rng = np.random.default_rng(2)
    a = rng.normal(size=(1000, 7))
    s = ActionStatistics.from_actions(a)
    np.testing.assert_allclose(s.q01, np.quantile(a, 0.01, axis=0))
    np.testing.assert_allclose(s.q99, np.quantile(a, 0.99, axis=0))
    np.testing.assert_allclose(s.mean, a.mean(0))
    assert s.mask.tolist() == [True] * 6 + [False]
    path = tmp_path / "dataset_statistics.json"
    path.write_text(json.dumps({"my_data": {"action": s.to_dict()}}))
    s2 = select_statistics(load_dataset_statistics(str(tmp_path)), "my_data")
    np.testing.assert_allclose(s2.q99, s.q99)


def test_statistics_errors(tmp_path):
    path = tmp_path / "dataset_statistics.json"
    path.write_text(json.dumps({"a": {"action": STATS.to_dict()}, "b": {"action": STATS.to_dict()}}))
    stats = load_dataset_statistics(str(path))
    with pytest.raises(StatisticsError, match="available keys: a, b"):
        select_statistics(stats, "bridge_orig")
    with pytest.raises(StatisticsError, match="choose an unnorm_key"):
        select_statistics(stats, None)
    with pytest.raises(StatisticsError, match="does not exist"):
        load_dataset_statistics(str(tmp_path / "nope.json"))
    with pytest.raises(StatisticsError, match="inconsistent shapes"):
        ActionStatistics(q01=[0, 0], q99=[1, 1, 1], mask=[True, True])
    with pytest.raises(ValueError, match="dimensions"):
        ActionTokenizer(STATS).encode(np.zeros((3, 6)))
