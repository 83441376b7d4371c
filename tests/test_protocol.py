"""The protocol a bench runs under: the camera size from the policy, decoding from the battery and target specs
(overridden by --greedy / --temperature), OpenVLA's prompt styles, recorded in results.json; and the OpenVLA
adapter's fidelity points (stored normalisation constants, peft 0.11.1's all-linear targets, the hidden size
read without loading the weights)."""

import json
import os
import shutil

import pytest
import torch

from tests.fakes import patch_fake_rollouts
from vla_forget import rollout
from vla_forget.bench import BenchConfig, BenchError, make_plan, run_bench
from vla_forget.cli import main
from vla_forget.policies import load_policy
from vla_forget.policies.base import Observation, PromptStyleError, TokenPolicy
from vla_forget.spec import SpecError, load_battery


@pytest.fixture()
def world(tmp_path, monkeypatch):
    """Fake tasks; a battery that acts greedily and a target that samples at 0.6; every job is captured."""
    battery = tmp_path / "fake-v1.yaml"
    battery.write_text("id: fake\nversion: 1\nepisodes: 2\nseed_start: 10\ndecoding: greedy\ntasks: [FakeA-v1]\n")
    target = tmp_path / "fake-target-v1.yaml"
    target.write_text("id: fake-target\nversion: 1\ntask: FakeTarget-v1\nepisodes: 2\nseed_start: 500\n"
                      "decoding: {temperature: 0.6}\n")
    jobs = []
    patch_fake_rollouts(monkeypatch, tmp_path, on_job=jobs.append)
    return tmp_path, str(battery), str(target), jobs


def cfg(tmp_path, battery, target, out="run", **kw):
    kw.setdefault("policies", ["small-vla-random-v1"])
    return BenchConfig(base="small-vla-random-v1", out=str(tmp_path / out), battery=battery, target=target, workers=0,
                       videos_per_task=0, kl_states_per_task=4, progress=False, **kw)


# --- decoding ----------------------------------------------------------------------------------------------
def test_each_spec_decides_its_decoding_and_results_record_it(world):
    tmp, battery, target, jobs = world
    res = run_bench(cfg(tmp, battery, target), log=lambda *_: None)
    by_task = {j.task: (j.greedy, j.temperature) for j in jobs}
    assert by_task["FakeA-v1"][0] is True  # the battery: greedy
    assert by_task["FakeTarget-v1"] == (False, 0.6)  # the target: sampling at 0.6
    dec = res["protocol"]["decoding"]
    assert dec["FakeA-v1"] == {"greedy": True, "source": "battery fake-v1"}
    assert dec["FakeTarget-v1"] == {"greedy": False, "temperature": 0.6, "source": "target fake-target-v1"}
    assert res["protocol"]["image_size"] == 128  # the small VLA's own input size
    assert "temperature-1" in res["protocol"]["divergences"]


def test_greedy_and_temperature_override_every_spec(world):
    tmp, battery, target, jobs = world
    run_bench(cfg(tmp, battery, target, out="t", temperature=1.5), log=lambda *_: None)
    assert {(j.greedy, j.temperature) for j in jobs} == {(False, 1.5)}
    jobs.clear()
    res = run_bench(cfg(tmp, battery, target, out="g", greedy=True), log=lambda *_: None)
    assert {j.greedy for j in jobs} == {True}
    assert {d["source"] for d in res["protocol"]["decoding"].values()} == {"--greedy"}


def test_temperature_reaches_the_policy(monkeypatch):
    seen = []

    class Spy(TokenPolicy):
        def sample_tokens(self, obs, *, temperature=1.0, greedy=False, generator=None):
            seen.append((greedy, temperature))
            return torch.zeros(obs.batch_size, 7, dtype=torch.long), torch.zeros(obs.batch_size, 7, 256)

        def decode_actions(self, tokens):
            return tokens.float()

    obs = Observation(image=None, state=torch.zeros(2, 16), instruction=["a", "b"])
    rollout.act(Spy(), obs, greedy=False, temperature=0.6)
    rollout.act(Spy(), obs, greedy=True, temperature=0.6)
    assert seen == [(False, 0.6), (True, 1.0)]


def test_bad_decoding_is_refused_before_any_work(world, tmp_path, capsys):
    tmp, battery, target, jobs = world
    with pytest.raises(BenchError, match="choose one"):
        run_bench(cfg(tmp, battery, target, out="both", greedy=True, temperature=0.5), log=lambda *_: None)
    with pytest.raises(BenchError, match="--temperature must be a number > 0"):
        run_bench(cfg(tmp, battery, target, out="zero", temperature=0.0), log=lambda *_: None)
    assert not jobs and not os.path.exists(tmp / "both" / "episodes.jsonl")
    bad = tmp_path / "bad-v1.yaml"
    bad.write_text("id: bad\nversion: 1\ndecoding: {temperature: -1}\ntasks: [PickCube-v1]\n")
    with pytest.raises(SpecError, match="decoding: must be greedy, sample or"):
        load_battery(str(bad))


def test_shipped_simplerenv_specs_are_greedy_and_tabletop_samples():
    from vla_forget.spec import load_target

    assert load_battery("tabletop-v1").decoding is None  # the default: sampling at temperature 1
    for ref in ("simpler-google-v2", "simpler-bridge-v2"):
        assert load_battery(ref).decoding.greedy, ref
    for ref in ("simpler-pick-coke-can-v2", "simpler-pick-coke-can-visual-matching-v1"):
        assert load_target(ref).decoding.greedy, ref


# --- image size ----------------------------------------------------------------------------------------------
def test_image_size_comes_from_the_base_and_a_mismatch_is_said(world):
    tmp, battery, target, _ = world
    plan = make_plan(BenchConfig(policies=["small-vla-random-v1"], base="openvla-tiny-v1", out=str(tmp / "x"),
                                 battery=battery, target=target, workers=0, progress=False))
    assert plan.config.image_size == 64  # the tiny OpenVLA's processor input size
    assert "openvla-tiny-v1" in plan.image_size_source
    assert any("small-vla-random-v1 takes 128 px" in n and "--image-size 128" in n for n in plan.notes)
    given = make_plan(BenchConfig(policies=["small-vla-random-v1"], base="small-vla-random-v1", out=str(tmp / "y"),
                                  battery=battery, target=target, workers=0, image_size=96, progress=False))
    assert given.config.image_size == 96 and given.image_size_source == "--image-size"
    assert any("takes 128 px" in n for n in given.notes)
    zero = make_plan(BenchConfig(policies=["zero-v1"], base="zero-v1", out=str(tmp / "z"), battery=battery,
                                 target=target, workers=0, progress=False))
    assert zero.config.image_size == 128 and not zero.notes  # no policy declares a size: the default


def test_cli_saves_the_resolved_image_size_and_resume_keeps_it(world, capsys):
    tmp, battery, target, jobs = world
    out = str(tmp / "cli")
    args = ["bench", "--policy", "small-vla-random-v1", "--base", "small-vla-random-v1", "--battery", battery,
            "--target", target, "--out", out, "--workers", "0", "--videos-per-task", "0", "--kl-states-per-task", "4",
            "--no-progress"]
    assert main(args) == 0
    saved = json.load(open(os.path.join(out, "config.json")))["config"]
    assert saved["image_size"] == 128 and saved["temperature"] is None and saved["prompt"] is None
    assert {j.image_size for j in jobs} == {128}
    assert main(["bench", "--out", out, "--resume", "--no-progress", "--workers", "0"]) == 0


# --- prompt styles ----------------------------------------------------------------------------------------------
def test_prompt_styles_of_openvla_and_a_clear_error_elsewhere(world):
    tmp, battery, target, _ = world
    default, bare = load_policy("openvla-tiny-v1"), load_policy("openvla-tiny-v1#prompt=bare")
    assert default.prompt_style == "openvla" and bare.prompt_style == "bare"
    tok = bare.text_tokenizer
    instr = "Pick Coke Can"
    # bare: <s> + the instruction as it is + the empty piece that predict_action appends; no template, no lower-casing
    want = list(tok(instr).input_ids) + [tok.convert_tokens_to_ids("\u2581")]
    assert bare.prompt_ids(instr) == want
    assert default.prompt_ids(instr) != want and len(default.prompt_ids(instr)) > len(want)
    assert default.checkpoint_hash() != bare.checkpoint_hash()  # the prompt is part of what is measured
    with pytest.raises(PromptStyleError, match="takes no prompt style"):
        load_policy("small-vla-random-v1#prompt=bare")
    with pytest.raises(Exception, match="unknown prompt style 'chat'"):
        load_policy("openvla-tiny-v1#prompt=chat")
    with pytest.raises(BenchError, match="--prompt bare: small-vla-random-v1"):
        make_plan(BenchConfig(policies=["openvla-tiny-v1"], base="small-vla-random-v1", out=str(tmp / "p"),
                              battery=battery, target=target, workers=0, prompt="bare", progress=False))
    plan = make_plan(BenchConfig(policies=["openvla-tiny-v1"], base="openvla-tiny-v1", out=str(tmp / "q"), battery=battery, target=target,
                                 workers=0, prompt="bare", progress=False))
    assert plan.base.spec == "openvla-tiny-v1#prompt=bare" and plan.protocol()["prompt"] == {"openvla-tiny-v1": "bare"}


def test_an_adapter_keeps_its_prompt_style(tmp_path):
    p = load_policy("openvla-tiny-v1#prompt=bare")
    p.enable_lora(rank=2)
    p.save(str(tmp_path / "adapter"))
    assert load_policy(str(tmp_path / "adapter")).prompt_style == "bare"
    assert load_policy(str(tmp_path / "adapter") + "#prompt=openvla").prompt_style == "openvla"


# --- OpenVLA fidelity ------------------------------------------------------------------------------------------
def test_stored_normalisation_constants_are_used():
    from vla_forget.policies.openvla import ImagePreprocessor, OpenVLAError

    dino, siglip = [0.485, 0.456, 0.406], [0.5, 0.5, 0.5]
    stored = [0.484375, 0.455078125, 0.40625]  # the bf16-rounded DINOv2 mean OpenVLA-7B's processor stores
    cfg = {"image_resize_strategy": "resize-naive", "input_sizes": [[3, 4, 4], [3, 4, 4]],
           "means": [dino, siglip], "stds": [[0.229, 0.224, 0.225], [0.5, 0.5, 0.5]],
           "tvf_normalize_params": [{"mean": stored, "std": [0.228515625, 0.2236328125, 0.224609375], "inplace": False},
                                    {"mean": siglip, "std": [0.5, 0.5, 0.5], "inplace": False}]}
    pre = ImagePreprocessor(cfg, "test")
    img = torch.full((1, 4, 4, 3), 124, dtype=torch.uint8)
    x = pre(img, torch.float32)
    want = (124 / 255 - stored[0]) / 0.228515625
    assert x[0, 0, 0, 0].item() == pytest.approx(want, abs=1e-6)
    assert abs(x[0, 0, 0, 0].item() - (124 / 255 - dino[0]) / 0.229) > 1e-3  # the recomputed constants differ
    assert pre.normalize_source == "tvf_normalize_params"
    with pytest.raises(OpenVLAError, match="tvf_normalize_params must be 2 entries"):
        ImagePreprocessor({**cfg, "tvf_normalize_params": [{"mean": stored, "std": stored}]}, "test")


def test_all_linear_targets_follow_peft_0_11_1():
    from vla_forget.policies.openvla import all_linear_targets

    class Tower(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.patch_embed = torch.nn.Module()
            self.patch_embed.proj = torch.nn.Conv2d(3, 8, 2, 2)  # shares the last name "proj" with attn.proj
            self.attn = torch.nn.Module()
            self.attn.proj = torch.nn.Linear(8, 8)
            self.stem = torch.nn.Conv2d(3, 3, 1)  # a convolution with no Linear's name: not adapted
            self.norm = torch.nn.LayerNorm(8)

    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.tower, self.tower2 = Tower(), Tower()
            self.lm = torch.nn.Module()
            self.lm.lm_head = torch.nn.Linear(8, 16)  # peft 0.11.1 keeps the head (it removes the full name only)

    assert all_linear_targets(Model()) == ["lm.lm_head", "tower.attn.proj", "tower.patch_embed.proj",
                                           "tower2.attn.proj", "tower2.patch_embed.proj"]
    tiny = load_policy("openvla-tiny-v1")
    tiny.enable_lora(rank=2)
    from peft.tuners.lora import LoraLayer

    adapted = {n for n, m in tiny._core().named_modules() if isinstance(m, LoraLayer)}
    assert "vision_backbone.patch_embed.proj" in adapted and "language_model.lm_head" in adapted


def test_feature_dim_is_read_without_loading_the_weights(tmp_path):
    from vla_forget.policies.openvla import embedding_width

    src = load_policy("openvla-tiny-v1").folder
    dst = tmp_path / "diff-serialised"
    shutil.copytree(src, dst)
    cfg = json.load(open(dst / "config.json"))
    cfg["text_config"].pop("hidden_size", None)  # as OpenVLA-7B's config.json: a diff from Llama-2's defaults
    json.dump(cfg, open(dst / "config.json", "w"))
    p = load_policy(f"openvla:{dst}")
    assert p.feature_dim == embedding_width(str(dst)) == 64 and not p.loaded


def test_a_policy_decoding_in_other_units_than_the_task_is_named(tmp_path):
    plan = make_plan(BenchConfig(policies=["openvla-tiny-v1"], base="openvla-tiny-v1", out=str(tmp_path / "u"),
                                 battery="simpler-google-v2", workers=0, progress=False))
    key = plan.base.unnorm_key
    assert key and key != "fractal20220817_data"
    notes = [n for n in plan.notes if "units" in n]
    assert notes and all("#unnorm_key=fractal20220817_data" in n for n in notes)
    assert plan.config.image_size == 64 and plan.decoding("SimplerOpenDrawer-v1")[0].greedy


def test_report_states_the_protocol(world):
    tmp, battery, target, _ = world
    run_bench(cfg(tmp, battery, target, out="rep"), log=lambda *_: None)
    text = open(tmp / "rep" / "report.md").read()
    assert "Protocol: cameras at 128 px (the input size of small-vla-random-v1)" in text
    assert "greedy (battery fake-v1): FakeA-v1" in text
    assert "sampling at temperature 0.6 (target fake-target-v1): FakeTarget-v1" in text


def test_greedy_ties_go_to_the_highest_bin_for_openvla_as_its_generate():
    from vla_forget.policies.base import pick_tokens

    tied = torch.zeros(1, 256)
    tied[0, 3] = tied[0, 200] = 5.0  # bins 3 and 200: ids vocab-4 and vocab-201; OpenVLA's argmax takes the lower id
    assert int(pick_tokens(tied, greedy=True)) == 3
    assert int(pick_tokens(tied, greedy=True, ties_to_high_bins=True)) == 200
    policy = load_policy("openvla-tiny-v1")
    assert policy.greedy_ties_to_high_bins and not load_policy("small-vla-random-v1").greedy_ties_to_high_bins


def test_tasks_that_cannot_run_here_are_refused_before_any_episode(world, monkeypatch):
    from vla_forget.envs import TASKS

    tmp, battery, target, jobs = world
    entry = TASKS.get("FakeTarget-v1")
    monkeypatch.setattr(entry, "metadata", {**(entry.metadata or {}), "backend": "simpler"})
    monkeypatch.setattr("vla_forget.envs.task_unavailable_reason",
                        lambda t: f"{t} cannot run here: the drawers' ray tracing on a CPU renderer" if t == "FakeTarget-v1" else None)
    with pytest.raises(BenchError, match="(?s)nothing was run.*FakeTarget-v1 cannot run here"):
        run_bench(cfg(tmp, battery, target, out="refused"), log=lambda *_: None)
    assert not jobs  # not even the battery's episodes, which could have run
