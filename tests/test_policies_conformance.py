"""Every registered policy passes the same checks (generated from the registry).

Policies that read privileged simulator state (scripted experts) are left out:
they need a real env's ``Observation.privileged``; their own tests cover them.
"""

import inspect

import pytest
import torch

from vla_forget.policies import POLICIES, load_policy
from vla_forget.policies.base import Observation, TokenPolicy

BATCH = 3


def _policy_class(policy_id):
    obj = POLICIES.get(policy_id).load()
    if inspect.ismethod(obj):  # a classmethod factory such as SmallVLA.random_init
        obj = obj.__self__
    return obj


def _learned_ids():
    return [pid for pid in POLICIES.ids() if not getattr(_policy_class(pid), "needs_privileged", False)]


def synthetic_obs(batch=BATCH, seed=0, policy=None):
    """Observations as ``policy`` reads them: front and wrist views side by side for a two-camera policy."""
    g = torch.Generator().manual_seed(seed)
    width = 256 if getattr(policy, "wrist_camera", False) else 128
    return Observation(
        image=torch.randint(0, 256, (batch, 128, width, 3), dtype=torch.uint8, generator=g),
        state=torch.randn(batch, 16, generator=g),
        instruction=["pick up the red cube", "push the cube to the goal", "put the green cube on the blue target"][:batch],
    )


@pytest.mark.parametrize("policy_id", _learned_ids())
def test_act_returns_bounded_actions(policy_id):
    policy = load_policy(policy_id)
    assert not policy.needs_privileged
    obs = synthetic_obs(policy=policy)
    policy.reset(BATCH)
    with torch.no_grad():
        actions = policy.act(obs, generator=torch.Generator().manual_seed(0))
        greedy = policy.act(obs, greedy=True)
    for a in (actions, greedy):
        assert a.shape == (BATCH, 7)
        assert a.dtype == torch.float32
        assert torch.isfinite(a).all()
        assert a.abs().max() <= 1.0 + 1e-5
    assert isinstance(policy.checkpoint_hash(), str) and policy.checkpoint_hash()


@pytest.mark.parametrize("policy_id", _learned_ids())
def test_token_policy_round_trips_through_a_checkpoint(policy_id, tmp_path):
    policy = load_policy(policy_id)
    if not isinstance(policy, TokenPolicy):
        pytest.skip(f"{policy_id} has no action distribution to save")
    obs = synthetic_obs(policy=policy)
    tokens = torch.randint(0, policy.n_bins, (BATCH, policy.action_dim), generator=torch.Generator().manual_seed(1))
    path = str(tmp_path / policy_id)
    policy.save(path)
    loaded = load_policy(path)
    assert type(loaded) is type(policy)
    assert loaded.checkpoint_hash() == policy.checkpoint_hash()
    with torch.no_grad():
        logits = policy.action_logits(obs, tokens)
        assert logits.shape == (BATCH, policy.action_dim, policy.n_bins)
        assert torch.allclose(loaded.action_logits(obs, tokens), logits, atol=1e-6)
        feats = loaded.features(obs)
    assert feats.shape == (BATCH, loaded.feature_dim)
    assert torch.equal(loaded.decode_actions(tokens), policy.decode_actions(tokens))
