"""The OpenVLA adapter (policies/openvla.py) on the tiny OpenVLA-format stand-in (policies/openvla_tiny.py).

The stand-in is built offline into a temporary folder once per module (seconds):
the real loading code (Auto classes, tokenizer, safetensors, statistics, the
Prismatic image processor's settings), the prompt, the action-token ids, the
one-pass teacher forcing, the cached sampling, LoRA and both save formats run
exactly as they would on OpenVLA-7B. Bad inputs get a clear error each.
"""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest

pytest.importorskip("transformers", reason="needs the test extra: pip install -c constraints.txt -e '.[test]'")
pytest.importorskip("peft", reason="needs the test extra: pip install -c constraints.txt -e '.[test]'")

import torch  # noqa: E402

from vla_forget.policies import CheckpointError, load_policy  # noqa: E402
from vla_forget.policies.base import Observation, TokenPolicy  # noqa: E402
from vla_forget.policies.openvla import (  # noqa: E402
    PROMPT,
    OpenVLAError,
    OpenVLAPolicy,
    describe_action_vocabulary,
    parse_spec,
)
from vla_forget.policies.openvla_tiny import build_tiny_openvla, identity_statistics  # noqa: E402

INSTRUCTIONS = ["pick up the red cube", "Push the blue cube", "put the red cube on the green target", "pick up the red cube"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return build_tiny_openvla(str(tmp_path_factory.mktemp("openvla") / "tiny"), seed=0)


@pytest.fixture()
def policy(tiny):
    return load_policy(f"openvla:{tiny}").eval()


def observation(batch=4, size=96, seed=0):
    g = torch.Generator().manual_seed(seed)
    return Observation(image=torch.randint(0, 256, (batch, size, size, 3), dtype=torch.uint8, generator=g),
                       state=torch.zeros(batch, 16), instruction=[INSTRUCTIONS[i % 4] for i in range(batch)])


def copy_checkpoint(tiny, dst):
    shutil.copytree(tiny, dst)
    return str(dst)


# --- loading and conventions ---------------------------------------------------------------
def test_loads_lazily_and_fits_the_protocol(tiny):
    p = load_policy(f"openvla:{tiny}")
    assert isinstance(p, TokenPolicy) and isinstance(p, OpenVLAPolicy)
    assert not p.loaded, "describing a policy (hash, kind) must not load the weights"
    h = p.checkpoint_hash()
    assert len(h) == 16 and not p.loaded
    assert p.feature_dim == 64 and p.needs_image
    # a folder with a Hugging Face config.json is recognised without the prefix
    assert isinstance(load_policy(tiny), OpenVLAPolicy)
    assert load_policy(tiny).checkpoint_hash() == h


def test_prompt_and_action_token_ids(policy):
    tok = policy.text_tokenizer
    ids = policy.prompt_ids("Pick up the red cube")
    text = PROMPT.format(instruction="pick up the red cube")
    assert ids[0] == tok.bos_token_id and ids[-1] == tok.convert_tokens_to_ids("\u2581")
    assert ids[:-1] == list(tok(text).input_ids), "the prompt is OpenVLA's template (instruction lower-cased), then ▁"
    v = describe_action_vocabulary(policy)
    # OpenVLA's vocab_size = padded embedding size - pad_to_multiple_of (32064 - 64 = 32000 for OpenVLA-7B)
    assert v["action_vocab_size"] == 512 and v["lm_head_outputs"] == 576
    assert policy._token_ids(torch.tensor([0, 255])).tolist() == [511, 256]  # bin b = vocab_size - 1 - b
    logits = torch.arange(576.0).expand(2, 576)
    sliced = policy._action_slice(logits)
    assert sliced.shape == (2, 256) and sliced[0, 0] == 511 and sliced[0, 255] == 256


def test_teacher_forcing_is_one_batched_pass_and_matches_sampling(policy):
    obs = observation()
    g = torch.Generator().manual_seed(0)
    tokens, sampled = policy.sample_tokens(obs, generator=g)
    assert tokens.shape == (4, 7) and sampled.shape == (4, 7, 256)
    tf = policy.action_logits(obs, tokens)
    assert tf.shape == (4, 7, 256)
    assert torch.allclose(tf, sampled, atol=1e-4), "the sampler's logits are the teacher-forced logits of its sample"
    for i in range(4):  # right padding never reaches a read position
        one = policy.action_logits(obs.index([i]), tokens[i:i + 1])
        assert torch.allclose(one, tf[i:i + 1], atol=1e-4)
    policy.fast_path = False  # the model's own forward (full logits) agrees with the assembled one
    assert torch.allclose(policy.action_logits(obs, tokens), tf, atol=1e-4)
    policy.fast_path = None
    logits, feats = policy.logits_and_features(obs, tokens)
    assert torch.allclose(logits, tf, atol=1e-5) and torch.allclose(feats, policy.features(obs), atol=1e-5)
    assert feats.shape == (4, 64) and feats.dtype == torch.float32


def test_greedy_actions_equal_the_models_own_predict_action(policy):
    """The batched cached path decodes exactly what OpenVLA's predict_action loop decodes."""
    obs = observation(batch=3, size=64, seed=1)
    tokens, _ = policy.sample_tokens(obs, greedy=True)
    actions = policy.decode_actions(tokens)
    core = policy._core()
    space = policy.text_tokenizer.convert_tokens_to_ids("\u2581")
    for i in range(3):
        ids = torch.tensor([policy.prompt_ids(obs.instruction[i])[:-1]])
        ref = core.predict_action(ids, policy.pixel_values(obs.index([i])), space_token_id=space, actions_only=True)
        np.testing.assert_allclose(actions[i].numpy(), ref, atol=1e-6)


def test_image_preprocessing_follows_the_processor_config(policy):
    img = torch.full((1, 64, 64, 3), 255, dtype=torch.uint8)
    pv = policy.pixel_values(Observation(image=img, state=torch.zeros(1, 16), instruction=["x"]))
    assert pv.shape == (1, 3, 64, 64)  # resize-naive to the model's 64 px, mean/std 0.5
    assert torch.allclose(pv, torch.ones_like(pv))


def test_unnorm_key_is_explicit_with_several_datasets(tiny, tmp_path):
    d = copy_checkpoint(tiny, tmp_path / "multi")
    stats = {"bridge_orig": identity_statistics(), "fractal20220817_data": identity_statistics()}
    stats["fractal20220817_data"]["action"]["q99"] = [0.5] * 7
    with open(os.path.join(d, "dataset_statistics.json"), "w") as f:
        json.dump(stats, f)
    with pytest.raises(OpenVLAError, match="bridge_orig, fractal20220817_data") as e:
        load_policy(f"openvla:{d}")
    assert "unnorm_key" in str(e.value)
    with pytest.raises(OpenVLAError, match="unknown unnorm_key 'nope'.*available keys: bridge_orig, fractal20220817_data"):
        load_policy(f"openvla:{d}#unnorm_key=nope")
    p = load_policy(f"openvla:{d}#unnorm_key=fractal20220817_data")
    assert p.unnorm_key == "fractal20220817_data" and p.action_statistics.q99[0] == 0.5
    assert p.checkpoint_hash() != load_policy(f"openvla:{d}#unnorm_key=bridge_orig").checkpoint_hash()


def test_bad_checkpoints_get_clear_errors(tiny, tmp_path):
    d = copy_checkpoint(tiny, tmp_path / "nostats")
    os.remove(os.path.join(d, "dataset_statistics.json"))
    cfg = json.load(open(os.path.join(d, "config.json")))
    cfg.pop("norm_stats")
    json.dump(cfg, open(os.path.join(d, "config.json"), "w"))
    with pytest.raises(CheckpointError, match="no action statistics.*dataset_statistics.json"):
        load_policy(d)
    # norm_stats in config.json (as OpenVLA's HF checkpoints carry them) is enough
    d2 = copy_checkpoint(tiny, tmp_path / "normstats")
    os.remove(os.path.join(d2, "dataset_statistics.json"))
    assert load_policy(d2).unnorm_key == "identity"
    with pytest.raises(OpenVLAError, match="no such checkpoint folder"):
        load_policy("openvla:./does/not/exist")
    with pytest.raises(OpenVLAError, match="bad option"):
        parse_spec("openvla:x#unorm_key=a")


def test_remote_code_needs_trust_and_the_pinned_transformers(tiny, tmp_path, monkeypatch):
    d = copy_checkpoint(tiny, tmp_path / "remote")
    cfg = json.load(open(os.path.join(d, "config.json")))
    cfg["auto_map"] = {"AutoConfig": "configuration_prismatic.OpenVLAConfig",
                       "AutoModelForVision2Seq": "modeling_prismatic.OpenVLAForActionPrediction"}
    json.dump(cfg, open(os.path.join(d, "config.json"), "w"))
    monkeypatch.delenv("VLA_FORGET_TRUST_REMOTE_CODE", raising=False)
    with pytest.raises(OpenVLAError, match="--trust-remote-code") as e:
        load_policy(f"openvla:{d}")
    assert "modeling_prismatic.py" in str(e.value)
    import importlib.metadata as md

    real = md.version
    monkeypatch.setattr(md, "version", lambda name: "5.0.0" if name == "transformers" else real(name))
    with pytest.raises(OpenVLAError, match=r"transformers 5\.0\.0 is installed, OpenVLA's code needs 4\.40\.x") as e:
        load_policy(f"openvla:{d}", trust_remote_code=True)
    assert "vla-forget[openvla]" in str(e.value) or ".[openvla]" in str(e.value)
    monkeypatch.setenv("VLA_FORGET_TRUST_REMOTE_CODE", "1")  # what --trust-remote-code sets for workers
    with pytest.raises(OpenVLAError, match="transformers 5.0.0"):
        load_policy(f"openvla:{d}")


# --- LoRA, training, saving -----------------------------------------------------------------
def test_lora_trains_adapters_only_and_saves_adapter_and_merged(tiny, tmp_path):
    p = load_policy(f"openvla:{tiny}#lora_rank=8")
    obs = observation(batch=4, size=64)
    tokens = torch.randint(0, 256, (4, 7), generator=torch.Generator().manual_seed(3))
    before = p.eval().action_logits(obs, tokens).detach()
    params = p.trainable_parameters()
    assert p.lora_enabled and all(p_.requires_grad for p_ in params)
    n_all, n_lora = p.num_parameters(), sum(x.numel() for x in params)
    assert 0 < n_lora < n_all
    assert torch.allclose(p.action_logits(obs, tokens), before), "Gaussian LoRA init: the adapted policy starts as the base"
    opt = torch.optim.AdamW(params, lr=1e-2)
    p.train()
    for _ in range(2):
        loss = -p.log_prob(obs, tokens).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    p.eval()
    after = p.action_logits(obs, tokens).detach()
    assert not torch.allclose(after, before)
    h = p.checkpoint_hash()

    p.save(str(tmp_path / "adapter"))
    files = set(os.listdir(tmp_path / "adapter"))
    assert {"adapter_config.json", "adapter_model.safetensors", "config.json", "dataset_statistics.json"} <= files
    a = load_policy(str(tmp_path / "adapter"))
    assert a.checkpoint_hash() == h and not a.loaded, "an adapter's hash is the same before and after loading"
    assert torch.allclose(a.eval().action_logits(obs, tokens), after, atol=1e-5)
    assert a.lora_enabled and a.lora.rank == 8

    p.save(str(tmp_path / "merged"), merged=True)
    m = load_policy(str(tmp_path / "merged"))
    assert not m.lora_enabled
    assert torch.allclose(m.eval().action_logits(obs, tokens), after, atol=1e-4)

    # the compact state dict (adapter tensors only) moves weights between processes
    state = p.state_dict()
    assert state and all(k.startswith("lora.") for k in state)
    fresh = load_policy(f"openvla:{tiny}#lora_rank=8").eval()
    fresh.load_state_dict(state)
    assert torch.allclose(fresh.action_logits(obs, tokens), after, atol=1e-5)


def test_enable_lora_refuses_a_different_rank_once_on(policy):
    policy.enable_lora(rank=4)
    policy.enable_lora(rank=4)
    with pytest.raises(OpenVLAError, match="already on"):
        policy.enable_lora(rank=8)
