"""The forgetting-law fits (known parameters, hand-computed R^2, undefined cases), Pareto frontiers and the plots."""

from __future__ import annotations

import pytest

from vla_forget import law


def test_linear_fit_and_r2_match_a_hand_computation():
    x, y = [0.0, 1.0, 2.0, 3.0], [0.0, 1.0, 1.0, 3.0]
    f = law.fit(x, y, "linear")
    # Sxy = 4.5, Sxx = 5 -> a = 0.9, b = 1.25 - 0.9 * 1.5 = -0.1;
    # residuals 0.1, 0.2, -0.7, 0.4 -> SS_res = 0.70; SS_tot = 4.75 -> R^2 = 1 - 0.70 / 4.75
    assert f.params == pytest.approx({"a": 0.9, "b": -0.1})
    assert f.r2 == pytest.approx(1 - 0.70 / 4.75) and f.n == 4 and f.defined
    p = law.fit(x, y, "proportional")
    assert p.params["a"] == pytest.approx(12 / 14)  # sum(xy) / sum(x^2)
    ss_res = sum((b - 12 / 14 * a) ** 2 for a, b in zip(x, y))
    assert p.r2 == pytest.approx(1 - ss_res / 4.75)


def test_fits_recover_known_parameters():
    import numpy as np

    rng = np.random.default_rng(0)
    x = rng.uniform(0, 2, 200)
    assert law.fit(x, 0.3 * x + 0.05, "linear").params == pytest.approx({"a": 0.3, "b": 0.05})
    assert law.fit(x, 0.3 * x + 0.05, "linear").r2 == pytest.approx(1.0)
    assert law.fit(x, 0.7 * x, "proportional").params == pytest.approx({"a": 0.7})
    q = law.fit(x, 0.2 * x ** 2 - 0.1 * x + 0.02, "quadratic")
    assert q.params == pytest.approx({"a": 0.2, "b": -0.1, "c": 0.02}, abs=1e-9)
    noisy = law.fit(x, 0.3 * x + 0.05 + rng.normal(0, 0.05, 200), "linear")
    assert noisy.params["a"] == pytest.approx(0.3, abs=0.02) and 0.8 < noisy.r2 < 1.0
    assert law.fit([0.1, float("nan"), 0.3, 0.5, None], [0.1, 0.2, 0.3, 0.5, 0.9]).n == 3  # non-finite pairs dropped


def test_undefined_fits_say_why_instead_of_crashing():
    two = law.fit([0.1, 0.2], [0.0, 0.1])
    assert not two.defined and two.r2 is None and "2 points" in two.reason and "at least 3" in two.reason
    assert "at least 4" in law.fit([0.1, 0.2, 0.3], [0.0, 0.1, 0.3], "quadratic").reason
    assert "single value" in law.fit([0.2, 0.2, 0.2], [0.0, 0.1, 0.3]).reason
    flat = law.fit([0.1, 0.2, 0.3], [0.05, 0.05, 0.05])
    assert flat.defined and flat.r2 is None and "R^2 undefined" in flat.reason
    assert law.fit([], []).to_dict() == {"model": "linear", "formula": "forgetting = a * x + b", "params": {}, "r2": None,
                                          "n": 0, "defined": False, "reason": "undefined: 0 points, the linear fit needs at least 3"}
    with pytest.raises(ValueError, match="unknown law model"):
        law.fit([1], [1], "cubic")


def test_law_section():
    pts = [{"forward_kl": k, "reverse_kl": 2 * k, "tv": None, "forward_kl_battery": k * k, "forgetting": 0.1 * k + 0.01}
           for k in (0.5, 1.0, 2.0, 4.0)]
    s = law.law_section(pts)
    assert s["model"] == "linear" and s["predictor"] == "forward_kl" and s["n"] == 4
    assert s["params"] == pytest.approx({"a": 0.1, "b": 0.01}) and s["r2"] == pytest.approx(1.0)
    assert s["fits"]["quadratic"]["defined"] and s["predictors"]["reverse_kl"]["r2"] == pytest.approx(1.0)
    assert s["predictors"]["tv"]["n"] == 0 and "undefined" in s["predictors"]["tv"]["reason"]
    assert law.law_section([])["defined"] is False


def test_per_method_fits_find_the_lines_that_the_pooled_fit_misses():
    # two methods on two lines through the base (1 and 8 points of forgetting per nat): the pooled line
    # fits them badly, each method's own line exactly; a point without a method belongs to no group
    pts = [{"method": "ppo", "forward_kl": k, "forgetting": 0.01 * k} for k in (1.0, 4.0, 8.0)]
    pts += [{"method": "sft", "forward_kl": k, "forgetting": 0.08 * k} for k in (1.0, 2.0, 3.0)]
    pts += [{"method": None, "forward_kl": 5.0, "forgetting": 0.5}]
    pooled = law.law_section(pts)
    assert pooled["r2"] < 0.5
    by = law.per_method(pts)
    assert set(by) == {"ppo", "sft"} and by["ppo"]["n"] == 4 and by["ppo"]["with_base"]  # 3 checkpoints + the base
    assert by["ppo"]["params"] == pytest.approx({"a": 0.01, "b": 0.0}, abs=1e-9) and by["ppo"]["r2"] == pytest.approx(1.0)
    assert by["sft"]["params"]["a"] == pytest.approx(0.08) and by["sft"]["r2"] == pytest.approx(1.0)
    one = law.per_method([{"method": "grpo", "forward_kl": 1.0, "forgetting": 0.1}])  # base + 1 point: too few
    assert not one["grpo"]["defined"] and one["grpo"]["n"] == 2 and one["grpo"]["reason"]


def test_group_by_method_leaves_out_or_gathers_points_without_a_method():
    pts = [{"method": "sft", "i": 0}, {"method": None, "i": 1}, {"method": "ppo", "i": 2}, {"method": "sft", "i": 3}]
    assert {m: [p["i"] for p in g] for m, g in law.group_by_method(pts).items()} == {"ppo": [2], "sft": [0, 3]}
    other = law.group_by_method(pts, other="a-other")  # first by name, yet placed last
    assert [(m, [p["i"] for p in g]) for m, g in other.items()] == [("ppo", [2]), ("sft", [0, 3]), ("a-other", [1])]


def test_pareto_frontier_on_a_hand_example():
    pts = [(0.1, 0.9), (0.5, 0.5), (0.4, 0.4), (0.9, 0.1), (0.5, 0.5), (0.2, 0.95), (float("nan"), 1.0), (0.9, 0.05)]
    # (0.1, 0.9) < (0.2, 0.95); (0.4, 0.4) < (0.5, 0.5); (0.9, 0.05) < (0.9, 0.1); equal points both stay
    assert law.pareto_frontier(pts) == [5, 1, 4, 3]
    assert law.pareto_frontier([]) == [] and law.pareto_frontier([(0.3, 0.3)]) == [0]


def results_fixture(n_points=6):
    methods = ["ppo", "sft", "iterative-sft"]
    rows, points = [], []
    for i in range(n_points):
        m = methods[i % 3]
        kl = 0.1 * (i + 1) * (3 if m == "sft" else 1)
        key = f"{m}_lr1e-4_b8_s0@update-{i:06d}"
        row = {"key": key, "policy": key, "run": key.split("@")[0], "method": m, "update": i, "env_steps": i,
               "target_success": min(1.0, 0.1 * i), "battery_success": 0.8 - 0.05 * kl, "forgetting": 0.05 * kl,
               "forward_kl": kl}
        rows.append(row)
        points.append({"policy": key, "method": m, "forward_kl": kl, "forgetting": 0.05 * kl,
                       "target_success": row["target_success"], "battery_success": row["battery_success"]})
    points.append({"policy": "expert-v1", "method": None, "forward_kl": None, "forgetting": -0.1,
                   "target_success": 1.0, "battery_success": 0.9})
    section = law.law_section(points)
    section.update(states="target", points=points, by_method=law.per_method(points))
    return {"base": "small-vla-base-v4", "target": {"id": "t-v1", "task": "PlaceCubeOnTarget-v1"},
            "success": {"small-vla-base-v4": {"PlaceCubeOnTarget-v1": {"rate": 0.1}}},
            "battery_mean_success": {"small-vla-base-v4": 0.8}, "checkpoints": rows, "law": section}


def test_plots_are_written(tmp_path):
    pytest.importorskip("matplotlib", reason="needs the plots extra: pip install 'vla-forget[plots]'")
    from vla_forget import plots

    out = plots.write_plots(results_fixture(), str(tmp_path))
    assert out == {"pareto": "pareto.png", "law": "forgetting_vs_kl.png"}
    for name in out.values():
        data = (tmp_path / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    few = results_fixture(2)  # the law is undefined: the plot says so instead of failing
    assert not few["law"]["defined"]
    (tmp_path / "few").mkdir()
    plots.write_plots(few, str(tmp_path / "few"))
    assert (tmp_path / "few" / "forgetting_vs_kl.png").stat().st_size > 5000
    empty = {"base": "b", "target": None, "success": {}, "battery_mean_success": {}, "law": law.law_section([])}
    assert set(plots.write_plots(empty, str(tmp_path))) == {"pareto", "law"}
    # the Pareto plot takes every checkpoint plus the policies outside any run (expert-v1 here)
    assert [p["key"] for p in plots.pareto_points(results_fixture())][-1] == "expert-v1"


def test_pareto_names_the_few_policies_outside_any_run(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib", reason="needs the plots extra: pip install 'vla-forget[plots]'")
    from matplotlib.axes import Axes

    from vla_forget import plots

    named = []
    real = Axes.annotate
    monkeypatch.setattr(Axes, "annotate", lambda self, text, *a, **k: named.append(text) or real(self, text, *a, **k))
    plots.plot_pareto(results_fixture(), str(tmp_path / "p.png"))
    assert named == ["expert-v1"]  # the run's checkpoints are in the legend by method, not named one by one
    many = results_fixture()
    extra = [{"policy": f"shipped-{i}", "method": None, "forward_kl": None, "forgetting": 0.0, "target_success": 0.5,
              "battery_success": 0.5} for i in range(plots.MAX_NAMED_OTHERS)]
    many["law"]["points"] += extra
    named.clear()
    plots.plot_pareto(many, str(tmp_path / "q.png"))
    assert named == []  # too many to name: the legend's "other policies" only


def test_pareto_legend_counts_a_methods_checkpoints_not_its_runs_copies_of_the_base():
    from vla_forget import plots

    res = results_fixture()
    base_copy = {**res["checkpoints"][0], "key": "ppo_lr1e-4_b8_s0@update-000000", "policy": res["base"], "update": 0}
    res["checkpoints"].insert(0, base_copy)  # a run's update 0 is an alias of the base
    ppo = [r for r in plots.pareto_points(res) if r.get("method") == "ppo"]
    assert len(ppo) == 3  # the copy stays a point of the method's frontier ...
    assert plots.pareto_label("ppo", ppo, res["base"]) == "ppo (2)"  # ... but the legend counts 2 checkpoints


def test_report_links_the_plots():
    from vla_forget.report import checkpoint_section

    res = results_fixture()
    res["plots"] = {"pareto": "pareto.png", "law": "forgetting_vs_kl.png"}
    text = "\n".join(checkpoint_section(res))
    assert "](pareto.png)" in text and "](forgetting_vs_kl.png)" in text
    assert "| ppo_lr1e-4_b8_s0 | ppo | 0 |" in text and "(primary)" in text and "R²" in text
    assert "Within each method" in text and "| sft | 3 | 5.00 | +0.0 | 1.000 |" in text
    from vla_forget.report import num as _num, pct as _pct

    assert (_num(-1e-17 * 100, "{:+.1f}"), _num(-0.04, "{:+.1f}"), _pct(-1e-17), _num(-0.2, "{:+.1f}")) == ("+0.0", "+0.0", "0", "-0.2")
    res["plots"] = {"skipped": "plots need matplotlib"}
    assert "Plots skipped: plots need matplotlib" in "\n".join(checkpoint_section(res))


def test_matched_pairs_pick_the_highest_pair_within_the_tolerance():
    pts = [
        {"policy": "sft@1", "method": "sft", "target_success": 0.10},
        {"policy": "sft@2", "method": "sft", "target_success": 0.40},
        {"policy": "sft@3", "method": "sft", "target_success": 0.60},
        {"policy": "ppo@1", "method": "ppo", "target_success": 0.12},
        {"policy": "ppo@2", "method": "ppo", "target_success": 0.36},   # 4 points from sft@2: the highest match
        {"policy": "ppo@3", "method": "ppo", "target_success": 0.50},   # 10 points from both neighbours: no match
        {"policy": "isft@1", "method": "iterative-sft", "target_success": 0.90},
        {"policy": "base", "method": None, "target_success": 0.06},      # no method: never matched
    ]
    got = {tuple(m["methods"]): m for m in law.matched_pairs(pts)}
    assert set(got) == {("iterative-sft", "ppo"), ("iterative-sft", "sft"), ("ppo", "sft")}
    assert got[("ppo", "sft")]["a"] == "ppo@2" and got[("ppo", "sft")]["b"] == "sft@2"
    assert got[("ppo", "sft")]["target_difference"] == pytest.approx(-0.04)
    assert "a" not in got[("iterative-sft", "ppo")] and "within 5 points" in got[("iterative-sft", "ppo")]["reason"]
    # a wider tolerance admits the higher pair
    wide = {tuple(m["methods"]): m for m in law.matched_pairs(pts, tolerance=0.10)}
    assert (wide[("ppo", "sft")]["a"], wide[("ppo", "sft")]["b"]) == ("ppo@3", "sft@3")
