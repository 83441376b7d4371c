"""The small VLA: size, shapes, causality, cached sampling, checkpoints, learnability."""

import json
import os

import pytest
import torch

from vla_forget.policies import CheckpointError, load_policy
from vla_forget.policies.base import Observation
from vla_forget.policies.small_vla import SmallVLA, SmallVLAConfig

B = 4


def make_obs(batch=B, size=128, seed=0, instructions=None):
    g = torch.Generator().manual_seed(seed)
    colours = ["red", "green", "blue", "yellow"]
    return Observation(
        image=torch.randint(0, 256, (batch, size, size, 3), dtype=torch.uint8, generator=g),
        state=torch.randn(batch, 16, generator=g),
        instruction=instructions or [f"put the {colours[i % 4]} cube on the target" for i in range(batch)],
    )


@pytest.fixture(scope="module")
def model():
    return SmallVLA.random_init(seed=0)


def random_tokens(batch=B, seed=1):
    return torch.randint(0, 256, (batch, 7), generator=torch.Generator().manual_seed(seed))


def test_parameter_count_under_10m(model):
    assert model.num_parameters() < 10_000_000


def test_shapes(model):
    obs = make_obs()
    with torch.no_grad():
        logits = model.action_logits(obs, random_tokens())
        feats = model.features(obs)
        actions = model.act(obs, generator=torch.Generator().manual_seed(0))
    assert logits.shape == (B, 7, 256) and logits.dtype == torch.float32
    assert feats.shape == (B, model.feature_dim)
    assert actions.shape == (B, 7) and actions.dtype == torch.float32
    assert torch.all(actions.abs() <= 1.0)


def test_any_square_image_size_is_accepted(model):
    with torch.no_grad():
        a = model.action_logits(make_obs(size=96), random_tokens())
        b = model.action_logits(make_obs(size=224), random_tokens())
    assert a.shape == b.shape == (B, 7, 256)


def test_random_init_is_deterministic(model):
    other = SmallVLA.random_init(seed=0)
    assert other.checkpoint_hash() == model.checkpoint_hash()
    assert SmallVLA.random_init(seed=1).checkpoint_hash() != model.checkpoint_hash()


def test_causality(model):
    obs = make_obs()
    tokens = random_tokens()
    with torch.no_grad():
        base = model.action_logits(obs, tokens)
        for j in range(6):
            changed = tokens.clone()
            changed[:, j] = (changed[:, j] + 97) % 256
            out = model.action_logits(obs, changed)
            assert torch.allclose(out[:, : j + 1], base[:, : j + 1], atol=1e-5), f"row <= {j} saw token {j}"
            assert not torch.allclose(out[:, j + 1 :], base[:, j + 1 :], atol=1e-4), f"rows > {j} ignore token {j}"


def test_instruction_changes_the_output(model):
    tokens = random_tokens()
    with torch.no_grad():
        a = model.action_logits(make_obs(instructions=["put the red cube on the blue target"] * B), tokens)
        b = model.action_logits(make_obs(instructions=["put the green cube on the blue target"] * B), tokens)
    assert not torch.allclose(a, b, atol=1e-4)


def test_sampled_logits_equal_teacher_forced(model):
    obs = make_obs()
    for kwargs in ({"greedy": True}, {"temperature": 1.0}, {"temperature": 0.5}):
        tokens, logits = model.sample_tokens(obs, generator=torch.Generator().manual_seed(3), **kwargs)
        with torch.no_grad():
            forced = model.action_logits(obs, tokens)
        assert torch.allclose(logits, forced, atol=1e-4), kwargs


def test_greedy_is_the_argmax_chain(model):
    obs = make_obs()
    tokens, logits = model.sample_tokens(obs, greedy=True)
    again, _ = model.sample_tokens(obs, greedy=True)
    assert torch.equal(tokens, again)
    assert torch.equal(tokens, logits.argmax(-1))


def test_seeded_sampling_is_reproducible(model):
    obs = make_obs()
    a, _ = model.sample_tokens(obs, generator=torch.Generator().manual_seed(7))
    b, _ = model.sample_tokens(obs, generator=torch.Generator().manual_seed(7))
    c, _ = model.sample_tokens(obs, generator=torch.Generator().manual_seed(8))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


TINY = dict(image_size=32, conv_channels=(8, 16), residual_stages=1, image_grid=1, d_model=32, heads=2, n_layers=2, text_layers=1, text_tokens=2)


def test_sampling_follows_the_distribution():
    """The empirical histogram of token 0 over many draws matches softmax(logits / T)."""
    model = SmallVLA.random_init(seed=0, **TINY)
    with torch.no_grad():
        model.head.weight.mul_(300.0)  # a peaked, non-uniform distribution
    n = 4000
    obs = make_obs(batch=1, size=32)
    big = Observation(obs.image.expand(n, -1, -1, -1), obs.state.expand(n, -1), obs.instruction * n)
    tokens, logits = model.sample_tokens(big, generator=torch.Generator().manual_seed(0), temperature=0.7)
    p = torch.softmax(logits[0, 0] / 0.7, -1)
    assert p.max() > 0.05
    emp = torch.bincount(tokens[:, 0], minlength=256).float() / n
    assert (emp - p).abs().sum() < 0.1


def test_text_cache_follows_weight_updates():
    model = SmallVLA.random_init(seed=0)
    obs = make_obs()
    tokens = random_tokens()
    with torch.no_grad():
        before = model.action_logits(obs, tokens)
        model.text.pool.queries.add_(0.5)  # an in-place update, as an optimiser makes
        after = model.action_logits(obs, tokens)
    model.cache_instructions = False
    with torch.no_grad():
        uncached = model.action_logits(obs, tokens)
    assert not torch.allclose(before, after)
    assert torch.allclose(after, uncached, atol=1e-6)


def test_save_load_round_trip(model, tmp_path):
    path = str(tmp_path / "ckpt")
    model.save(path)
    assert sorted(os.listdir(path)) == ["config.json", "dataset_statistics.json", "model.safetensors"]
    with open(os.path.join(path, "config.json")) as f:
        assert json.load(f)["policy_class"] == "SmallVLA"
    with open(os.path.join(path, "dataset_statistics.json")) as f:
        stats = json.load(f)
    assert set(stats[model.unnorm_key]["action"]) >= {"q01", "q99", "mask"}
    loaded = load_policy(path)
    assert isinstance(loaded, SmallVLA)
    assert loaded.checkpoint_hash() == model.checkpoint_hash()
    obs, tokens = make_obs(), random_tokens()
    with torch.no_grad():
        assert torch.equal(loaded.action_logits(obs, tokens), model.action_logits(obs, tokens))
    assert torch.equal(loaded.decode_actions(tokens), model.decode_actions(tokens))


def test_statistics_and_unnorm_key(tmp_path):
    model = SmallVLA.random_init(seed=0)
    stats = {
        "pick": {"action": {"q01": [-0.1] * 6 + [-1], "q99": [0.1] * 6 + [1], "mask": [True] * 6 + [False]}},
        "push": {"action": {"q01": [-0.2] * 6 + [-1], "q99": [0.2] * 6 + [1], "mask": [True] * 6 + [False]}},
    }
    model.set_statistics(stats, "push")
    tokens = torch.full((1, 7), 255)
    assert model.decode_actions(tokens)[0, 0].item() == pytest.approx(0.2, abs=1e-3)
    path = str(tmp_path / "ckpt")
    model.save(path)
    assert SmallVLA.load(path).unnorm_key == "push"
    assert SmallVLA.load(path, unnorm_key="pick").decode_actions(tokens)[0, 0].item() == pytest.approx(0.1, abs=1e-3)
    with pytest.raises(CheckpointError, match="unnorm_key"):
        SmallVLA.load(path, unnorm_key="nope")


def test_wrong_shape_raises_a_clear_error(tmp_path):
    small = SmallVLA.random_init(seed=0, d_model=64, heads=4)
    path = str(tmp_path / "ckpt")
    small.save(path)
    with open(os.path.join(path, "config.json")) as f:
        cfg = json.load(f)
    cfg["config"]["d_model"] = 128
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(cfg, f)
    with pytest.raises(CheckpointError, match=r"model\.safetensors.*wrong shape.*\[.*64.*\] vs config \[.*128.*\]"):
        load_policy(path)


def test_missing_weights_raise(tmp_path, model):
    path = str(tmp_path / "ckpt")
    model.save(path)
    os.remove(os.path.join(path, "model.safetensors"))
    with pytest.raises(CheckpointError, match="model.safetensors is missing"):
        load_policy(path)


def test_not_safetensors_raises(tmp_path, model):
    path = str(tmp_path / "ckpt")
    model.save(path)
    with open(os.path.join(path, "model.safetensors"), "wb") as f:
        f.write(b"\x80\x04 this is a pickle, not safetensors")
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        SmallVLA.load(path)


def test_other_class_raises(tmp_path, model):
    path = str(tmp_path / "ckpt")
    model.save(path)
    with open(os.path.join(path, "config.json")) as f:
        cfg = json.load(f)
    cfg["policy_class"] = "OpenVLA"
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(cfg, f)
    with pytest.raises(CheckpointError, match="policy_class='OpenVLA'"):
        SmallVLA.load(path)


def test_gradient_steps_lower_the_loss():
    torch.manual_seed(0)
    model = SmallVLA.random_init(seed=0, dropout=0.0).train()
    obs = make_obs(batch=4)
    target = torch.randint(0, 256, (4, 7), generator=torch.Generator().manual_seed(5))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(6):
        logits = model.action_logits(obs, target)
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, 256), target.reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.5, losses


def test_config_round_trips():
    cfg = SmallVLAConfig(d_model=64, conv_channels=(16, 32, 64))
    assert SmallVLAConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    with pytest.raises(ValueError, match="unknown"):
        SmallVLAConfig.from_dict({"d_modle": 3})


def test_spatial_softmax_finds_a_peak():
    """A heat map peaked at one feature cell puts the keypoint at that cell's centre in [-1, 1]."""
    from vla_forget.policies.small_vla import SpatialSoftmax

    ss = SpatialSoftmax(cin=1, keypoints=1, d=8)
    with torch.no_grad():
        ss.conv.weight.fill_(1.0)
        ss.conv.bias.zero_()
        ss.log_temperature.fill_(-5.0)  # temperature e^-5: the softmax is all but an argmax
    x = torch.zeros(2, 1, 16, 16)
    x[0, 0, 3, 12] = 1.0  # row 3, column 12
    x[1, 0, 15, 0] = 1.0
    kp = ss.coordinates(x)
    cell = 2.0 / 16
    expected = torch.tensor([[[-1 + cell * 12.5, -1 + cell * 3.5]], [[-1 + cell * 0.5, -1 + cell * 15.5]]])
    assert torch.allclose(kp, expected, atol=1e-3), kp


def test_keypoints_add_one_image_token_and_follow_the_image(model):
    assert model.config.keypoints > 0 and model.n_memory == model.config.image_grid**2 + 1 + model.config.text_tokens + 1
    obs = make_obs(batch=2)
    with torch.no_grad():
        memory = model.encode(obs)
    kp_token = memory[:, model.config.image_grid**2]
    assert memory.shape[1] == model.n_memory
    assert not torch.allclose(kp_token[0], kp_token[1])  # different images, different keypoints


def test_configs_from_before_keypoints_load_without_them(tmp_path):
    """A checkpoint saved before the keypoint field existed loads as the model it was (no keypoint token)."""
    old = SmallVLA.random_init(seed=0, keypoints=0)
    old.save(str(tmp_path))
    meta = json.loads((tmp_path / "config.json").read_text())
    del meta["config"]["keypoints"], meta["config"]["keypoint_stage"]
    (tmp_path / "config.json").write_text(json.dumps(meta))
    loaded = SmallVLA.load(str(tmp_path))
    assert loaded.config.keypoints == 0
    assert loaded.checkpoint_hash() == old.checkpoint_hash()
