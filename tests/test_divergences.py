"""Chain-rule divergence estimators against brute-force enumeration of the joint."""

import itertools
import math

import pytest
import torch

from vla_forget.divergences import summarize, token_divergences


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
    assert (weights * est["reverse"]).sum().item() == pytest.approx(rev, rel=1e-9, abs=1e-12)
    assert (weights * est["tv"]).sum().item() == pytest.approx(tv, rel=1e-9, abs=1e-12)
    assert fwd > 0.05 and rev > 0.05 and tv > 0.05  # the test is not vacuous


def test_identical_policies_have_zero_divergence():
    p0 = TablePolicy(3, 4, 7)
    seqs = torch.tensor(list(itertools.product(range(4), repeat=3)))
    est = token_divergences(p0.logits(seqs), p0.logits(seqs), seqs)
    for k in ("forward", "reverse", "tv"):
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
    s = summarize(per, n_states=1)
    assert abs(s.forward - fwd) < 4 * s.forward_se + 1e-3
    assert abs(s.reverse - rev) < 4 * s.reverse_se + 1e-3
    assert abs(s.tv - tv) < 4 * s.tv_se + 1e-3
    assert 0 < s.reverse_ess <= 1 and len(s.forward_per_dim) == D


def test_shape_errors_are_clear():
    with pytest.raises(ValueError, match="logit shapes differ"):
        token_divergences(torch.zeros(2, 7, 256), torch.zeros(2, 7, 255), torch.zeros(2, 7, dtype=torch.long))
    with pytest.raises(ValueError, match="tokens"):
        token_divergences(torch.zeros(2, 7, 256), torch.zeros(2, 7, 256), torch.zeros(2, 6, dtype=torch.long))
