"""The OpenVLA adapter (policies/openvla.py) against OpenVLA's own code, on a toy-scale checkpoint.

OpenVLA-7B's weights are a 15 GB download; what the adapter must agree with is
OpenVLA's *code*: ``modeling_prismatic.py`` (``OpenVLAForActionPrediction``,
``predict_action``, ``generate``), ``processing_prismatic.py`` (the Prismatic
image processor) and ``configuration_prismatic.py``, as shipped next to the
weights of ``openvla/openvla-7b`` and run with ``trust_remote_code=True``.
This module builds, at test time, a toy-scale checkpoint in exactly that
format and checks the adapter against OpenVLA's classes on it.

Runs only where it can (else it skips, saying why):

* ``VLA_FORGET_OPENVLA_CODE=DIR`` points at a checkout of github.com/openvla/openvla
  (its ``prismatic/extern/hf/*.py`` are copied into the checkpoint folder at run
  time, as the published checkpoint ships them; nothing of OpenVLA's is part of
  this project);
* the interpreter has OpenVLA's pinned stack: transformers 4.40.x, timm 0.9.x,
  peft, torchvision (``pip install -c constraints.txt -e ".[openvla]" pytest``
  in a separate virtualenv).

The toy checkpoint follows ``vla-scripts/extern/convert_openvla_weights_to_hf.py``:

* ``OpenVLAConfig(vision_backbone_id="dinosiglip-vit-so-224px", llm_backbone_id="llama2-7b-pure")``:
  the fused DINOv2 + SigLIP backbone (timm ``vit_large_patch14_reg4_dinov2.lvd142m`` and
  ``vit_so400m_patch14_siglip_224``, 224 px, 6 input channels), the fused-GELU projector,
  a Llama whose vocabulary is 32000 + ``pad_to_multiple_of`` 64 = 32064 (pad id 32000),
  ``norm_stats`` in the config, ``auto_map`` naming the copied code files;
* the towers are tiny: OpenVLA's code creates its towers by these timm ids
  (``VISION_BACKBONE_TO_TIMM_ID``, ``timm.create_model(id, pretrained=False, ...)``),
  so while the module runs the two ids' timm entry points are replaced by the
  same entry points called with a smaller width and depth (DINOv2: 32 wide, 3 blocks;
  SigLIP: 48 wide, 3 blocks). Everything else of the families stays: patch 14,
  4 registers and LayerScale (DINOv2), no class token and the attention-pool head
  (SigLIP), the pretrained configs' means, stds and interpolation. The entry points
  are restored afterwards. The Llama is 2 layers of width 64;
* the image processor is ``PrismaticImageProcessor`` built as the converter builds
  it (under ``torch.set_default_dtype(torch.bfloat16)``), so ``preprocessor_config.json``
  holds ``tvf_normalize_params`` with bfloat16-rounded DINOv2 constants
  (mean 0.484375, 0.455078125, 0.40625), which the published processor applies;
* a Llama-layout tokenizer built offline (``▁`` at id 29871, which ``predict_action``
  appends after ``Out:``; the 256 action bins at ids 31744..31999; ``<PAD>`` 32000);
* the weights are seeded and made decisive (:func:`make_decisive`): every Linear and
  Conv2d ~ N(0, 1/fan_in), so that the choices depend on the image and the instruction;
  the LM head's action rows large and its other rows small, so that OpenVLA's argmax over
  the whole vocabulary is an action id; DINOv2's LayerScale 0.5, so that the vision
  blocks count. Saved in bfloat16, as the converter does; loaded in float32 and in bfloat16.

Checks, each in float32 and bfloat16:

(a) greedy actions of the adapter (``sample_tokens(greedy=True)`` -> bins -> actions) equal
    ``predict_action(..., unnorm_key=..., do_sample=False)`` for 16 image/instruction pairs in one
    batch, with the ``bare`` prompt style too, and where two action ids' logits tie exactly
    (``generate``'s argmax over vocabulary ids takes the lower id, the higher bin; bfloat16
    logits of a few units tie often, their spacing being 1/16 to 1/8);
(b) the adapter's one-pass teacher-forced logits (``action_logits``) equal the logits of
    OpenVLA's ``generate(..., output_scores=True)`` at each of the 7 steps (the 256 action ids);
(c) the adapter's pixel values equal ``PrismaticProcessor``'s on the same 224 px PIL image;
(d) the adapter's LoRA targets are the modules peft selects with ``target_modules="all-linear"``
    on OpenVLA's own model class (what ``vla-scripts/finetune.py`` adapts), and a LoRA-adapted
    policy saved with ``save(dir, merged=True)`` loads in OpenVLA's classes with the same logits.

Run (2-3 minutes on a CPU)::

    VLA_FORGET_OPENVLA_CODE=path/to/openvla python -m pytest -q tests/test_openvla_reference.py -s
"""

from __future__ import annotations

import importlib.metadata as md
import json
import os
import shutil
import time

import numpy as np
import pytest

CODE_ENV = "VLA_FORGET_OPENVLA_CODE"
HF_FILES = ("configuration_prismatic.py", "modeling_prismatic.py", "processing_prismatic.py")
SETUP_HINT = ('a separate virtualenv with OpenVLA\'s pinned stack: pip install -c constraints.txt -e ".[openvla]" pytest')


def _skip_reason():
    code = os.environ.get(CODE_ENV)
    if not code:
        return f"set {CODE_ENV}=DIR, a checkout of github.com/openvla/openvla, to compare with OpenVLA's own code"
    hf = os.path.join(code, "prismatic", "extern", "hf")
    missing = [f for f in HF_FILES if not os.path.isfile(os.path.join(hf, f))]
    if missing:
        return f"{CODE_ENV}={code} is not a checkout of openvla/openvla (no prismatic/extern/hf/{', '.join(missing)})"
    want = {"transformers": "4.40.", "timm": "0.9.", "tokenizers": "", "peft": "", "torchvision": "", "pillow": ""}
    for pkg, prefix in want.items():
        try:
            v = md.version(pkg)
        except md.PackageNotFoundError:
            return f"{pkg} is not installed; OpenVLA's code needs {SETUP_HINT}"
        if not v.startswith(prefix):
            return f"{pkg} {v} is installed; OpenVLA's code needs {pkg} {prefix}x: {SETUP_HINT}"
    return None


_REASON = _skip_reason()
if _REASON:
    pytest.skip(_REASON, allow_module_level=True)

import torch  # noqa: E402
from PIL import Image  # noqa: E402

from vla_forget.policies import load_policy  # noqa: E402
from vla_forget.policies.base import Observation  # noqa: E402

# --- the toy checkpoint's shape ---------------------------------------------------------------------
VISION_BACKBONE_ID = "dinosiglip-vit-so-224px"  # OpenVLA-7B's
LLM_BACKBONE_ID = "llama2-7b-pure"  # OpenVLA-7B's
DINO, SIGLIP = "vit_large_patch14_reg4_dinov2", "vit_so400m_patch14_siglip_224"
TINY_TOWERS = {DINO: dict(embed_dim=32, depth=3, num_heads=2), SIGLIP: dict(embed_dim=48, depth=3, num_heads=2)}
LLAMA = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
             max_position_embeddings=2048, rms_norm_eps=1e-5)
LLAMA_VOCAB, PAD_TO_MULTIPLE_OF, SPACE_ID, N_BINS = 32000, 64, 29871, 256
FIRST_ACTION_ID = LLAMA_VOCAB - N_BINS
#: OpenVLA's prompt (README, deploy.py); instructions are given in lower case
PROMPT = "In: What action should the robot take to {instruction}?\nOut:"
INSTRUCTIONS = ["pick up the red cube", "push the blue cube to the left", "open the drawer",
                "put the red cube on the green target"]
UNNORM_KEY = "toy_b"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def norm_stats():
    """Two datasets in OpenVLA's dataset_statistics.json layout (unnorm_key picks one; gripper unmasked)."""
    def entry(q01, q99):
        d = len(q01)
        return {"action": {"mean": [0.0] * d, "std": [1.0] * d, "max": list(q99), "min": list(q01),
                           "q01": list(q01), "q99": list(q99), "mask": [True] * 6 + [False]},
                "proprio": {k: [0.0] * d for k in ("mean", "std", "max", "min", "q01", "q99")},
                "num_transitions": 100, "num_trajectories": 10}

    return {"toy_a": entry([-1.0] * 7, [1.0] * 7),
            "toy_b": entry([-0.03, -0.05, -0.02, -0.2, -0.15, -0.3, 0.0], [0.04, 0.06, 0.05, 0.25, 0.1, 0.35, 1.0])}


# --- tiny timm towers under OpenVLA's timm ids ------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_towers():
    """Replace the two timm entry points OpenVLA's code creates its towers with by the same entry points
    at toy width and depth (restored at the end of the module)."""
    from timm.models import _registry

    saved = {name: _registry._model_entrypoints[name] for name in TINY_TOWERS}

    def shrunk(original, sizes):
        def entry(pretrained=False, **kwargs):
            assert not pretrained, "the toy towers have no pretrained weights"
            return original(pretrained=False, **{**kwargs, **sizes})

        return entry

    for name, sizes in TINY_TOWERS.items():
        _registry._model_entrypoints[name] = shrunk(saved[name], sizes)
    try:
        yield TINY_TOWERS
    finally:
        _registry._model_entrypoints.update(saved)


# --- the offline Llama-layout tokenizer --------------------------------------------------------------
def build_tokenizer():
    """Character pieces, ``▁`` (word marker) at Llama's id 29871, the action bins at 31744..31999,
    ``<PAD>`` at 32000 (OpenVLA's pad id): a 32001-token fast tokenizer built with `tokenizers`."""
    from tokenizers import Tokenizer, decoders, models, normalizers, processors
    from transformers import PreTrainedTokenizerFast

    marker = "\u2581"
    pieces = ["<unk>", "<s>", "</s>"] + [chr(c) for c in range(33, 127)] + ["\n"]
    vocab = {p: i for i, p in enumerate(pieces)}
    for i in range(len(pieces), LLAMA_VOCAB):
        vocab[f"<unused{i}>"] = i
    for p in list(vocab):
        if vocab[p] == SPACE_ID or vocab[p] >= FIRST_ACTION_ID:
            del vocab[p]
    vocab[marker] = SPACE_ID
    for i in range(FIRST_ACTION_ID, LLAMA_VOCAB):
        vocab[f"<action{LLAMA_VOCAB - 1 - i}>"] = i
    vocab["<PAD>"] = LLAMA_VOCAB
    assert sorted(vocab.values()) == list(range(LLAMA_VOCAB + 1))
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>", fuse_unk=True))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend(marker), normalizers.Replace(" ", marker)])
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 1)])
    tok.decoder = decoders.Sequence([decoders.Replace(marker, " "), decoders.Fuse(), decoders.Strip(" ", 1, 0)])
    tok.add_special_tokens(["<unk>", "<s>", "</s>", "<PAD>"])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                   pad_token="<PAD>", padding_side="right", model_max_length=2048,
                                   model_input_names=["input_ids", "attention_mask"])  # as LlamaTokenizerFast


def make_decisive(model, seed=1):
    """Weights whose greedy choices depend on the image and the instruction, and whose argmax over the whole
    vocabulary is an action id: every Linear/Conv2d weight ~ N(0, 1/fan_in) (OpenVLA's 0.02 leaves a 2-layer
    toy's last hidden state nearly its input embedding), the LM head's 256 action rows ~ N(0, 0.5^2) (logits
    of a few units) and its other rows ~ N(0, 0.005^2), DINOv2's LayerScale 0.5 (1e-5 at init)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, m in sorted(model.named_modules()):
            if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d)):
                fan_in = m.weight[0].numel()
                m.weight.copy_(torch.randn(m.weight.shape, generator=gen) / fan_in ** 0.5)
        head = model.language_model.get_output_embeddings().weight
        head.copy_(torch.randn(head.shape, generator=gen) * 0.005)
        head[FIRST_ACTION_ID:LLAMA_VOCAB] = torch.randn(N_BINS, head.shape[1], generator=gen) * 0.5
        for name, p in model.named_parameters():
            if name.endswith("scale_factor"):
                p.fill_(0.5)


# --- the checkpoint ------------------------------------------------------------------------------------
def _dynamic(folder, ref):
    from transformers.dynamic_module_utils import get_class_from_dynamic_module

    return get_class_from_dynamic_module(ref, folder)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, tiny_towers):
    """A toy OpenVLA checkpoint folder, built as convert_openvla_weights_to_hf.py builds openvla-7b's."""
    import timm
    import timm.data

    folder = str(tmp_path_factory.mktemp("openvla") / "toy-openvla")
    os.makedirs(folder)
    hf = os.path.join(os.environ[CODE_ENV], "prismatic", "extern", "hf")
    for name in HF_FILES:  # shipped next to the weights, as on the hub
        shutil.copyfile(os.path.join(hf, name), os.path.join(folder, name))
    OpenVLAConfig = _dynamic(folder, "configuration_prismatic.OpenVLAConfig")
    OpenVLAForActionPrediction = _dynamic(folder, "modeling_prismatic.OpenVLAForActionPrediction")
    PrismaticImageProcessor = _dynamic(folder, "processing_prismatic.PrismaticImageProcessor")
    PrismaticProcessor = _dynamic(folder, "processing_prismatic.PrismaticProcessor")

    stats = norm_stats()
    config = OpenVLAConfig(vision_backbone_id=VISION_BACKBONE_ID, llm_backbone_id=LLM_BACKBONE_ID,
                           arch_specifier="no-align+fused-gelu-mlp", image_resize_strategy="resize-naive",
                           llm_max_length=2048, torch_dtype=torch.bfloat16, norm_stats=stats,
                           text_config=dict(LLAMA, vocab_size=LLAMA_VOCAB))
    assert config.timm_model_ids == [f"{DINO}.lvd142m", SIGLIP] and config.use_fused_vision_backbone
    config.text_config.vocab_size += config.pad_to_multiple_of  # as the converter: 32000 + 64
    config.text_config.pad_token_id = config.pad_token_id
    config.text_config.torch_dtype = torch.bfloat16
    config.auto_map = {"AutoConfig": "configuration_prismatic.OpenVLAConfig",
                       "AutoModelForVision2Seq": "modeling_prismatic.OpenVLAForActionPrediction"}
    config.architectures = ["OpenVLAForActionPrediction"]

    tokenizer = build_tokenizer()
    assert tokenizer.pad_token_id == config.pad_token_id and len(tokenizer) > LLAMA_VOCAB
    assert tokenizer.convert_tokens_to_ids("\u2581") == SPACE_ID

    # image processor: the towers' timm data configs, under the converter's default dtype (bfloat16)
    input_sizes, interpolations, means, stds = [], [], [], []
    for idx, timm_id in enumerate(config.timm_model_ids):
        tower = timm.create_model(timm_id, pretrained=False, num_classes=0, img_size=config.image_sizes[idx],
                                  act_layer=config.timm_override_act_layers[idx])
        data_cfg = timm.data.resolve_model_data_config(tower)
        input_sizes.append((3, config.image_sizes[idx], config.image_sizes[idx]))
        interpolations.append(data_cfg["interpolation"])
        means.append(data_cfg["mean"])
        stds.append(data_cfg["std"])
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        image_processor = PrismaticImageProcessor(use_fused_vision_backbone=True, image_resize_strategy="resize-naive",
                                                  input_sizes=input_sizes, interpolations=interpolations,
                                                  means=means, stds=stds)
    finally:
        torch.set_default_dtype(default)

    torch.manual_seed(0)  # timm's and OpenVLA's (_init_weights) initialisation draw from the global generator
    model = OpenVLAForActionPrediction(config)
    make_decisive(model)
    model.to(torch.bfloat16)
    model.save_pretrained(folder)

    PrismaticImageProcessor.register_for_auto_class("AutoImageProcessor")
    PrismaticProcessor.register_for_auto_class("AutoProcessor")
    processor = PrismaticProcessor(image_processor=image_processor, tokenizer=tokenizer)
    image_processor.save_pretrained(folder)
    processor.save_pretrained(folder)
    with open(os.path.join(folder, "dataset_statistics.json"), "w") as f:
        json.dump(stats, f, indent=2)
    return folder


@pytest.fixture(scope="module")
def openvla(checkpoint):
    """OpenVLA's own classes on the checkpoint, per dtype: (model, processor)."""
    from transformers import AutoModelForVision2Seq, AutoProcessor

    cache = {}

    def get(dtype_name):
        if dtype_name not in cache:
            model = AutoModelForVision2Seq.from_pretrained(checkpoint, trust_remote_code=True,
                                                           torch_dtype=DTYPES[dtype_name], low_cpu_mem_usage=True)
            processor = AutoProcessor.from_pretrained(checkpoint, trust_remote_code=True)
            cache[dtype_name] = (model.eval(), processor)
        return cache[dtype_name]

    return get


def adapter(checkpoint, dtype_name):
    return load_policy(f"openvla:{checkpoint}#unnorm_key={UNNORM_KEY},dtype={dtype_name}", trust_remote_code=True).eval()


def images(n=4, size=224, seed=0):
    """Noise, a gradient and blocks: PIL RGB images of ``size`` px."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        if i % 3 == 0:
            a = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        elif i % 3 == 1:
            y, x = np.mgrid[0:size, 0:size]
            a = np.stack([x * 255 // (size - 1), y * 255 // (size - 1), (x + y) * 255 // (2 * size - 2)], -1).astype(np.uint8)
        else:
            a = np.kron(rng.integers(0, 256, (8, 8, 3)), np.ones((size // 8, size // 8, 1))).astype(np.uint8)
        out.append(Image.fromarray(a, "RGB"))
    return out


def observation(pil_images, instructions):
    arr = np.stack([np.asarray(im, dtype=np.uint8) for im in pil_images])
    return Observation(image=torch.from_numpy(arr), state=torch.zeros(len(pil_images), 16),
                       instruction=list(instructions))


def openvla_inputs(processor, image, instruction, dtype):
    inputs = processor(PROMPT.format(instruction=instruction), image)
    inputs["pixel_values"] = inputs["pixel_values"].to(dtype)
    return inputs


def openvla_generate(model, inputs):
    """OpenVLA's predict_action path up to the token ids: ``▁`` appended, 7 greedy steps of generate
    (one prefix pass, then one-token steps with the KV cache); the ids and the 7 steps' logits."""
    ids = inputs["input_ids"]
    if not torch.all(ids[:, -1] == SPACE_ID):
        ids = torch.cat([ids, torch.tensor([[SPACE_ID]])], dim=1)
    with torch.no_grad():
        out = model.generate(ids, attention_mask=inputs["attention_mask"], pixel_values=inputs["pixel_values"],
                             max_new_tokens=7, do_sample=False, output_scores=True, return_dict_in_generate=True)
    new = out.sequences[0, -7:]
    scores = torch.stack([s[0].float() for s in out.scores])  # [7, 32064]
    return new, scores


def bins_of(ids):
    return LLAMA_VOCAB - 1 - ids


def action_slice(vocab_logits):
    """[..., 32064] -> [..., 256] over bins (bin b = id 31999 - b)."""
    return vocab_logits[..., FIRST_ACTION_ID:LLAMA_VOCAB].flip(-1)


def report(msg):
    print(f"\n[openvla-reference] {msg}", end="")


# --- the checkpoint is what the converter writes ----------------------------------------------------
def test_toy_checkpoint_has_openvla_7b_layout(checkpoint):
    cfg = json.load(open(os.path.join(checkpoint, "config.json")))
    assert cfg["auto_map"]["AutoModelForVision2Seq"] == "modeling_prismatic.OpenVLAForActionPrediction"
    assert cfg["timm_model_ids"] == [f"{DINO}.lvd142m", SIGLIP] and cfg["use_fused_vision_backbone"]
    assert cfg["text_config"]["vocab_size"] == 32064 and cfg["pad_token_id"] == 32000 and cfg["pad_to_multiple_of"] == 64
    assert cfg["norm_stats"] == norm_stats()
    pre = json.load(open(os.path.join(checkpoint, "preprocessor_config.json")))
    assert pre["input_sizes"] == [[3, 224, 224], [3, 224, 224]] and pre["image_resize_strategy"] == "resize-naive"
    assert pre["means"][0] == [0.485, 0.456, 0.406] and pre["stds"][0] == [0.229, 0.224, 0.225]
    # what the published processor applies: the bfloat16-rounded constants
    assert pre["tvf_normalize_params"][0]["mean"] == [0.484375, 0.455078125, 0.40625]
    assert pre["tvf_normalize_params"][0]["std"] == [0.228515625, 0.2236328125, 0.224609375]
    assert pre["tvf_normalize_params"][1]["mean"] == [0.5, 0.5, 0.5]
    for name in HF_FILES:
        assert os.path.isfile(os.path.join(checkpoint, name))


# --- (a) greedy actions ---------------------------------------------------------------------------------
def openvla_greedy(model, processor, pairs, dtype, prompt=PROMPT):
    """predict_action's actions, the bins behind them and generate's logits over the bins, one
    (image, instruction) at a time."""
    actions, bins, logits = [], [], []
    for image, instruction in pairs:
        inputs = processor(prompt.format(instruction=instruction), image)
        inputs["pixel_values"] = inputs["pixel_values"].to(dtype)
        with torch.no_grad():
            actions.append(model.predict_action(**inputs, unnorm_key=UNNORM_KEY, do_sample=False))
        ids, scores = openvla_generate(model, inputs)
        assert bool(((ids >= FIRST_ACTION_ID) & (ids < LLAMA_VOCAB)).all()), "the toy's argmax must be action ids"
        bins.append(bins_of(ids))
        logits.append(action_slice(scores))
    return np.stack(actions), torch.stack(bins), torch.stack(logits)


def compare_greedy(policy, model, processor, pairs, dtype, label, prompt=PROMPT):
    obs = observation([p[0] for p in pairs], [p[1] for p in pairs])
    with torch.no_grad():
        tokens, _ = policy.sample_tokens(obs, greedy=True)
    tokens = tokens.cpu()
    ours = policy.tokenizer.decode(tokens.numpy())  # float64, as predict_action
    ours_f32 = policy.decode_actions(tokens).cpu().numpy()
    theirs, their_bins, their_logits = openvla_greedy(model, processor, pairs, dtype, prompt)
    same = tokens == their_bins
    # where the greedy sequences first part: is it an exact tie in generate's logits?
    first = [(i, int((~same[i]).nonzero()[0])) for i in range(len(pairs)) if not same[i].all()]
    ties = sum(bool(their_logits[i, j, tokens[i, j]] == their_logits[i, j, their_bins[i, j]]) for i, j in first)
    report(f"(a) {label}: greedy bins equal for {int(same.sum())}/{same.numel()} tokens "
           f"({int(same.all(1).sum())}/{len(pairs)} observations); max |actions - predict_action| "
           f"{np.abs(ours - theirs).max():.3g} (decode_actions, float32: {np.abs(ours_f32 - theirs).max():.3g}); "
           f"{len({tuple(r) for r in theirs.round(9)})} distinct actions; where they part, generate's logits of the "
           f"two bins tie exactly in {ties}/{len(first)} observations")
    assert torch.equal(tokens, their_bins), (
        f"greedy bins differ from predict_action's in {len(first)} observations, {ties} of them first at an exact "
        f"tie of the two bins' logits (generate's argmax over vocabulary ids takes the lower id, i.e. the higher "
        f"bin):\n{tokens}\n{their_bins}")
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-8)
    np.testing.assert_allclose(ours_f32, theirs, rtol=0, atol=1e-6)


@pytest.mark.parametrize("dtype_name", list(DTYPES))
def test_greedy_actions_equal_predict_action(checkpoint, openvla, dtype_name):
    model, processor = openvla(dtype_name)
    policy = adapter(checkpoint, dtype_name)
    imgs = images(4)
    pairs = [(imgs[i], INSTRUCTIONS[j]) for i in range(4) for j in range(4)]  # one batch, prompts of 4 lengths
    compare_greedy(policy, model, processor, pairs, DTYPES[dtype_name], dtype_name)


@pytest.mark.parametrize("dtype_name", list(DTYPES))
def test_greedy_actions_equal_predict_action_bare_prompt(checkpoint, openvla, dtype_name):
    """``prompt=bare``: the instruction alone, as SimplerEnv's OpenVLA wrapper calls ``processor(task, image)``."""
    model, processor = openvla(dtype_name)
    policy = load_policy(f"openvla:{checkpoint}#unnorm_key={UNNORM_KEY},dtype={dtype_name},prompt=bare",
                         trust_remote_code=True).eval()
    imgs = images(2, seed=5)
    pairs = [(imgs[i], t) for i in range(2) for t in ("Pick Coke Can", "open the top drawer")]
    compare_greedy(policy, model, processor, pairs, DTYPES[dtype_name], f"{dtype_name}, bare prompt", prompt="{instruction}")


def test_greedy_ties_break_as_predict_action(checkpoint, tmp_path, openvla):
    """An exact tie between two action ids: OpenVLA's ``generate`` takes the argmax over vocabulary ids, i.e. the
    lower id (the higher bin). A checkpoint whose LM head repeats each action row twice makes every step a tie
    (bfloat16 logits tie by rounding too: their spacing is 1/16 at 8..16)."""
    from safetensors.torch import load_file, save_file

    tied = str(tmp_path / "tied")
    shutil.copytree(checkpoint, tied)
    weights = os.path.join(tied, "model.safetensors")
    state = load_file(weights)
    head = state["language_model.lm_head.weight"]
    head[FIRST_ACTION_ID + 1:LLAMA_VOCAB:2] = head[FIRST_ACTION_ID:LLAMA_VOCAB:2]
    save_file(state, weights, metadata={"format": "pt"})
    from transformers import AutoModelForVision2Seq

    model = AutoModelForVision2Seq.from_pretrained(tied, trust_remote_code=True, torch_dtype=torch.float32).eval()
    _, processor = openvla("float32")
    policy = load_policy(f"openvla:{tied}#unnorm_key={UNNORM_KEY},dtype=float32", trust_remote_code=True).eval()
    imgs = images(2, seed=6)
    pairs = [(imgs[i], INSTRUCTIONS[i]) for i in range(2)]
    _, their_bins, _ = openvla_greedy(model, processor, pairs, torch.float32)
    assert bool((their_bins % 2 == 1).all()), "predict_action takes the lower id of a tie, the odd bin of each pair"
    compare_greedy(policy, model, processor, pairs, torch.float32, "float32, every step an exact tie")


# --- (b) teacher-forced logits vs generate's ---------------------------------------------------------------
#: one pass (teacher forcing) against one prefix pass + 6 cached steps: float32 rounding, or 4 bfloat16 steps at the
#: toy's logits (up to ~13, where bfloat16's spacing is 1/16)
LOGIT_TOL = {"float32": 1e-4, "bfloat16": 0.25}
#: a merged checkpoint rounds every adapted weight to the dtype once more: twice the tolerance
MERGED_TOL = {k: 2 * v for k, v in LOGIT_TOL.items()}


@pytest.mark.parametrize("dtype_name", list(DTYPES))
def test_teacher_forced_logits_equal_generate_scores(checkpoint, openvla, dtype_name):
    model, processor = openvla(dtype_name)
    policy = adapter(checkpoint, dtype_name)
    imgs = images(4, seed=1)
    theirs, bins, t_generate = [], [], 0.0
    for image, instruction in zip(imgs, INSTRUCTIONS):
        inputs = openvla_inputs(processor, image, instruction, DTYPES[dtype_name])
        t0 = time.perf_counter()
        ids, scores = openvla_generate(model, inputs)
        t_generate += time.perf_counter() - t0
        theirs.append(action_slice(scores))
        bins.append(bins_of(ids))
    theirs, bins = torch.stack(theirs), torch.stack(bins)  # [4, 7, 256], [4, 7]
    obs = observation(imgs, INSTRUCTIONS)
    with torch.no_grad():
        policy.action_logits(obs, bins)  # loads the weights
        t0 = time.perf_counter()
        ours = policy.action_logits(obs, bins).float().cpu()
        t_tf = time.perf_counter() - t0
        tokens, cached = policy.sample_tokens(obs, greedy=True)
    # the cached logits of sample_tokens are comparable where its own greedy prefix is generate's
    agree = torch.cat([torch.ones(4, 1, dtype=torch.bool), (tokens.cpu() == bins)[:, :-1]], 1).cumprod(1).bool()
    scale = theirs.abs().max().item()
    d_tf = (ours - theirs).abs().max().item()
    d_cached = (cached.cpu() - theirs).abs().amax(-1)[agree].max().item()
    report(f"(b) {dtype_name}: max |action_logits - generate scores| {d_tf:.3g} over 4 x 7 steps; max |sample_tokens "
           f"logits - generate scores| {d_cached:.3g} over the {int(agree.sum())} steps after an equal greedy prefix "
           f"(logits up to {scale:.3g}); time for the 4 states: OpenVLA's generate {t_generate:.3f} s (one at a time), "
           f"action_logits {t_tf:.3f} s (one batch)")
    assert ours.shape == theirs.shape == (4, 7, N_BINS)
    assert d_tf <= LOGIT_TOL[dtype_name], f"teacher-forced logits differ from generate's by {d_tf}"
    assert d_cached <= LOGIT_TOL[dtype_name], f"cached logits differ from generate's by {d_cached}"


# --- (c) pixel values -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype_name", list(DTYPES))
def test_pixel_values_equal_prismatic_processor(checkpoint, openvla, dtype_name):
    _, processor = openvla("float32")
    policy = adapter(checkpoint, dtype_name)
    imgs = images(6, seed=2)
    theirs = torch.from_numpy(processor.image_processor(imgs)["pixel_values"]).to(DTYPES[dtype_name]).float()
    with torch.no_grad():
        ours = policy.pixel_values(observation(imgs, ["x"] * len(imgs))).float().cpu()
    assert ours.shape == theirs.shape == (6, 6, 224, 224)
    d = (ours - theirs).abs()
    report(f"(c) {dtype_name}: max |pixel values - PrismaticProcessor| {d.max().item():.3g} "
           f"(DINOv2 channels {d[:, :3].max().item():.3g}, SigLIP channels {d[:, 3:].max().item():.3g})")
    assert d.max().item() <= (1e-6 if dtype_name == "float32" else 0.0), (
        "the adapter does not reproduce the processor's normalisation (preprocessor_config.json's "
        "tvf_normalize_params, the bfloat16-rounded constants OpenVLA's processor applies)")


# --- (d) LoRA ------------------------------------------------------------------------------------------------------
def _lora_modules(model):
    from peft.tuners.lora import LoraLayer

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return {name: type(m.get_base_layer()).__name__ for name, m in base.named_modules() if isinstance(m, LoraLayer)}


def test_lora_targets_equal_openvla_finetune(checkpoint, openvla):
    from peft import LoraConfig, get_peft_model

    model, _ = openvla("float32")
    reference = get_peft_model(type(model).from_pretrained(checkpoint, torch_dtype=torch.float32),
                               LoraConfig(r=32, lora_alpha=16, lora_dropout=0.0, target_modules="all-linear",
                                          init_lora_weights="gaussian"))  # vla-scripts/finetune.py
    theirs = _lora_modules(reference)
    policy = adapter(checkpoint, "float32")
    policy.enable_lora()
    ours = {k[len("lora."):] for k in policy.state_dict()}
    ours = {k.replace("base_model.model.", "", 1).rsplit(".lora_", 1)[0] for k in ours}
    kinds = {}
    for k in theirs.values():
        kinds[k] = kinds.get(k, 0) + 1
    report(f"(d) peft all-linear on OpenVLA's class adapts {len(theirs)} modules ({kinds}); the adapter adapts "
           f"{len(ours)}; missing {sorted(set(theirs) - ours)}; extra {sorted(ours - set(theirs))}")
    assert "language_model.lm_head" in theirs  # peft 0.11.1 keeps the nested LM head
    assert {n for n, k in theirs.items() if k == "Conv2d"} == {"vision_backbone.featurizer.patch_embed.proj",
                                                               "vision_backbone.fused_featurizer.patch_embed.proj"}
    assert ours == set(theirs)


@pytest.mark.parametrize("dtype_name", list(DTYPES))
def test_merged_lora_checkpoint_loads_in_openvla(checkpoint, tmp_path, dtype_name):
    from transformers import AutoModelForVision2Seq

    dtype = DTYPES[dtype_name]
    policy = adapter(checkpoint, dtype_name)
    policy.enable_lora()
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in policy.trainable_parameters():  # a trained adapter: lora_B is no longer zero
            p.copy_(torch.randn(p.shape, generator=gen).to(p.dtype) * 0.05)
    imgs = images(3, seed=4)
    obs = observation(imgs, INSTRUCTIONS[:3])
    tokens = torch.randint(0, N_BINS, (3, 7), generator=gen)
    with torch.no_grad():
        ours = policy.action_logits(obs, tokens).float()
        base = adapter(checkpoint, dtype_name).action_logits(obs, tokens).float()
    policy.save(str(tmp_path / "merged"), merged=True)
    merged = AutoModelForVision2Seq.from_pretrained(str(tmp_path / "merged"), trust_remote_code=True,
                                                    torch_dtype=dtype).eval()
    tok = build_tokenizer()
    theirs = []
    for i in range(3):
        ids = tok(PROMPT.format(instruction=INSTRUCTIONS[i])).input_ids + [SPACE_ID]
        n = len(ids)
        ids = torch.tensor([ids + (LLAMA_VOCAB - 1 - tokens[i, :6]).tolist()])
        pv = policy.pixel_values(obs.index([i])).to(dtype)
        with torch.no_grad():
            logits = merged(input_ids=ids, pixel_values=pv).logits[0].float()
        n_patches = logits.shape[0] - ids.shape[1]
        theirs.append(action_slice(logits[n_patches + n - 1:n_patches + n + 6]))
    theirs = torch.stack(theirs)
    d, moved = (ours - theirs).abs().max().item(), (ours - base).abs().max().item()
    report(f"(d) {dtype_name}: merged checkpoint in OpenVLA's classes vs the adapter: max logit difference {d:.3g} "
           f"(the adapter moved the logits by up to {moved:.3g})")
    assert moved > 5 * MERGED_TOL[dtype_name], "the LoRA weights should change the logits"
    assert d <= MERGED_TOL[dtype_name]
