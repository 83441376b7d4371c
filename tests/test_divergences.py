"""Chain-rule divergence estimators against brute-force enumeration of the joint."""

import itertools
import math

import pytest
import torch

from vla_forget.divergences import TV_MIN_ESS, reverse_on_policy_samples, summarize, token_divergences


class TablePolicy:
    """An autoregressive policy over D tokens of K bins with arbitrary conditionals."""

    def __init__(self, D, K, seed, scale=1.5):
        g = torch.Generator().manual_seed(seed)
        self.D, self.K = D, K
        self.table = {}
        for j in range(D):
            for prefix in itertools.product(range(K), repeat=j):
                self.table[prefix] = torch.randn(K, generator=g, dtype=torch.float64) * scale

    def logits(self, tokens):
        """Teacher-forced logits [N, D, K] on tokens [N, D]."""
        rows = [[self.table[tuple(t[:j].tolist())] for j in range(self.D)] for t in tokens]
        return torch.stack([torch.stack(r) for r in rows])

    def joint(self):
        out = {}
        for a in itertools.product(range(self.K), repeat=self.D):
            lp = 0.0
            for j in range(self.D):
                lp += torch.log_softmax(self.table[a[:j]], -1)[a[j]].item()
            out[a] = torch.tensor(lp, dtype=torch.float64).exp().item()
        return out


def brute_force(p0, p1):
    j0, j1 = p0.joint(), p1.joint()
    fwd = sum(j0[a] * (math.log(j0[a]) - math.log(j1[a])) for a in j0)
    rev = sum(j1[a] * (math.log(j1[a]) - math.log(j0[a])) for a in j0)
    tv = 0.5 * sum(abs(j0[a] - j1[a]) for a in j0)
    return fwd, rev, tv, j0


@pytest.mark.parametrize("D,K,seed", [(2, 3, 0), (3, 3, 1), (3, 4, 2), (2, 5, 3)])
def test_expectation_over_base_samples_equals_joint_divergences(D, K, seed):
    p0, p1 = TablePolicy(D, K, seed), TablePolicy(D, K, seed + 100)
    fwd, rev, tv, j0 = brute_force(p0, p1)
    seqs = torch.tensor(list(j0.keys()))
    weights = torch.tensor([j0[tuple(a.tolist())] for a in seqs], dtype=torch.float64)
    est = token_divergences(p0.logits(seqs), p1.logits(seqs), seqs)
    # The exact expectation of each estimator under a ~ pi0 is the joint divergence.
    assert (weights * est["forward"]).sum().item() == pytest.approx(fwd, rel=1e-9, abs=1e-12)
    assert (weights * est["reverse_weighted"]).sum().item() == pytest.approx(rev, rel=1e-9, abs=1e-12)
    assert (weights * est["tv"]).sum().item() == pytest.approx(tv, rel=1e-9, abs=1e-12)
    # Reverse KL from the policy's own samples: its expectation under a ~ pi is the joint reverse KL.
    j1 = p1.joint()
    w1 = torch.tensor([j1[tuple(a.tolist())] for a in seqs], dtype=torch.float64)
    own = reverse_on_policy_samples(p1.logits(seqs), p0.logits(seqs))
    assert (w1 * own["reverse"]).sum().item() == pytest.approx(rev, rel=1e-9, abs=1e-12)
    assert own["reverse_per_dim"].shape == (len(seqs), D)
    assert fwd > 0.05 and rev > 0.05 and tv > 0.05  # the test is not vacuous


def test_identical_policies_have_zero_divergence():
    p0 = TablePolicy(3, 4, 7)
    seqs = torch.tensor(list(itertools.product(range(4), repeat=3)))
    est = token_divergences(p0.logits(seqs), p0.logits(seqs), seqs)
    est["reverse"] = reverse_on_policy_samples(p0.logits(seqs), p0.logits(seqs))["reverse"]
    for k in ("forward", "reverse_weighted", "reverse", "tv"):
        assert torch.allclose(est[k], torch.zeros_like(est[k]), atol=1e-12)


def test_monte_carlo_estimate_converges_and_summary_fields():
    D, K = 3, 4
    p0, p1 = TablePolicy(D, K, 11, scale=0.7), TablePolicy(D, K, 12, scale=0.7)
    fwd, rev, tv, j0 = brute_force(p0, p1)
    keys = list(j0.keys())
    probs = torch.tensor([j0[a] for a in keys])
    g = torch.Generator().manual_seed(0)
    idx = torch.multinomial(probs, 20000, replacement=True, generator=g)
    seqs = torch.tensor(keys)[idx]
    per = token_divergences(p0.logits(seqs), p1.logits(seqs), seqs)
    own_seqs = sample_joint(p1, 20000, seed=1)
    s = summarize(per, samples_per_state=1, reverse=reverse_on_policy_samples(p1.logits(own_seqs), p0.logits(own_seqs)))
    assert abs(s["forward"] - fwd) < 4 * s["forward_se"] + 1e-3
    assert abs(s["reverse"] - rev) < 4 * s["reverse_se"] + 1e-3
    assert abs(s["tv"] - tv) < 4 * s["tv_se"] + 1e-3
    assert s["tv_reliable"] and TV_MIN_ESS <= s["tv_ess"] <= 1 and len(s["forward_per_dim"]) == D
    assert s["n_states"] == s["n_samples"] == 20000 and s["reverse_estimator"] == "policy samples"


def sample_joint(policy, n, seed):
    j = policy.joint()
    keys = list(j)
    idx = torch.multinomial(torch.tensor([j[a] for a in keys]), n, replacement=True, generator=torch.Generator().manual_seed(seed))
    return torch.tensor(keys)[idx]


def test_reverse_kl_of_a_far_pair_no_longer_collapses_and_tv_is_flagged():
    """Far apart, the importance-weighted reverse KL on the base's samples comes out far too low with a tiny
    standard error; from the policy's own samples it matches enumeration, and TV is marked unreliable."""
    D, K = 3, 12
    p0, p1 = TablePolicy(D, K, 21, scale=4.0), TablePolicy(D, K, 22, scale=4.0)
    fwd, rev, tv, _ = brute_force(p0, p1)
    base_seqs, own_seqs = sample_joint(p0, 400, seed=0), sample_joint(p1, 400, seed=10)
    per = token_divergences(p0.logits(base_seqs), p1.logits(base_seqs), base_seqs)
    s = summarize(per, samples_per_state=4, reverse=reverse_on_policy_samples(p1.logits(own_seqs), p0.logits(own_seqs)))
    assert rev > 5  # far apart
    assert s["reverse_weighted"] < 0.7 * rev  # the old estimator collapses...
    assert abs(s["reverse"] - rev) < 4 * s["reverse_se"] + 1e-3  # ...the new one does not
    assert abs(s["forward"] - fwd) < 4 * s["forward_se"] + 1e-3
    assert s["tv_ess"] < TV_MIN_ESS and not s["tv_reliable"]
    assert s["n_states"] == 100 and s["n_samples"] == 400


def test_summary_by_phase_and_state_clustered_errors():
    per = {"forward": torch.tensor([1.0, 3.0, 2.0, 2.0, 10.0, 10.0], dtype=torch.float64),
           "tv": torch.zeros(6, dtype=torch.float64), "reverse_weighted": torch.zeros(6, dtype=torch.float64),
           "log_ratio_tv": torch.zeros(6, dtype=torch.float64), "log_ratio": torch.zeros(6, dtype=torch.float64),
           "forward_per_dim": torch.zeros(6, 7, dtype=torch.float64)}
    s = summarize(per, samples_per_state=2, phases=[0, 0, 3])
    # three states with means 2, 2, 10: the error is over states, not over the 6 samples
    assert s["forward"] == pytest.approx(14 / 3) and s["n_states"] == 3
    assert s["forward_se"] == pytest.approx(torch.tensor([2.0, 2.0, 10.0]).std().item() / 3 ** 0.5)
    rows = {r["phase"]: r for r in s["forward_by_phase"]}
    assert rows[0]["forward"] == pytest.approx(2.0) and rows[0]["n_states"] == 2 and rows[0]["forward_se"] == 0.0
    assert rows[3]["forward"] == pytest.approx(10.0) and rows[3]["forward_se"] is None
    assert rows[1]["forward"] is None and rows[1]["n_states"] == 0
    assert s["tv_ess"] == 1.0 and s["tv_reliable"]
    with pytest.raises(ValueError, match="2 phases for 3 states"):
        summarize(per, samples_per_state=2, phases=[0, 1])


def test_shape_errors_are_clear():
    with pytest.raises(ValueError, match="logit shapes differ"):
        token_divergences(torch.zeros(2, 7, 256), torch.zeros(2, 7, 255), torch.zeros(2, 7, dtype=torch.long))
    with pytest.raises(ValueError, match="tokens"):
        token_divergences(torch.zeros(2, 7, 256), torch.zeros(2, 7, 256), torch.zeros(2, 6, dtype=torch.long))
