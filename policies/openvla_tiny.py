"""A tiny stand-in for OpenVLA-7B in OpenVLA's own checkpoint format, built offline.

OpenVLA-7B's weights are a 15 GB download; this module builds, in seconds and
without any download, a Hugging Face vision-language model that follows every
convention the OpenVLA adapter (:mod:`vla_forget.policies.openvla`) relies on,
so that the real loading, prompting, tokenisation, LoRA and save/load code
runs end to end on a CPU:

* the Prismatic layout of ``OpenVLAForActionPrediction``: a ``vision_backbone``
  (here one patch-embedding conv and one pre-norm ViT block), a ``projector``
  MLP (``fc1``/``fc2``) and a ``language_model`` that is a Llama causal LM
  (``transformers.LlamaForCausalLM``, here 2 layers of width 64); the
  projected patches are inserted right after ``<s>`` (BOS), as in OpenVLA;
* OpenVLA's vocabulary layout: the language vocabulary has ``action_vocab_size``
  ids whose last 256 are the action bins (bin ``b`` is id
  ``action_vocab_size - 1 - b``), then a ``<PAD>`` token at id
  ``action_vocab_size``, and the embedding matrix padded to a multiple of
  ``pad_to_multiple_of`` (64): ``text_config.vocab_size = action_vocab_size + 64``,
  exactly OpenVLA-7B's 32000 + 64;
* a Llama-style tokenizer built with the ``tokenizers`` library (``▁`` word
  marker prepended and replacing spaces, ``<s>`` added in front, character
  pieces; the empty piece ``▁`` that OpenVLA appends after ``Out:`` is a token);
* ``dataset_statistics.json`` (and ``norm_stats`` in ``config.json``) in OpenVLA's
  layout, ``preprocessor_config.json`` in the Prismatic image processor's layout;
* weights saved with ``save_pretrained`` as safetensors; the model class is
  registered with the ``transformers`` Auto classes in this process (no remote
  code: ``config.json`` has no ``auto_map``).

Build one::

    python -m vla_forget.policies.openvla_tiny OUT_DIR [--seed 0] [--unnorm-key identity]
    vla-forget bench --policy openvla:OUT_DIR --base openvla:OUT_DIR ...

Works with the transformers 4.40.1 pin of OpenVLA and with current 5.x.
"""

from __future__ import annotations

import argparse
import json
import math
import os
from typing import Any, Dict, List, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoConfig, LlamaConfig, LlamaForCausalLM, PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast

MODEL_TYPE = "vlaf-tiny-openvla"
N_BINS = 256
PAD_TO_MULTIPLE_OF = 64
SPECIAL_TOKENS = ["<unk>", "<s>", "</s>"]
#: printable ASCII minus the space (spaces become the word marker ``▁``)
CHARACTERS = [chr(c) for c in range(33, 127)]
WORD_MARKER = "\u2581"


class TinyOpenVLAConfig(PretrainedConfig):
    """Config of :class:`TinyOpenVLAForActionPrediction` (OpenVLA's field names where they exist)."""

    model_type = MODEL_TYPE
    sub_configs = {"text_config": LlamaConfig}

    def __init__(
        self,
        text_config: Optional[Any] = None,
        image_size: int = 64,
        patch_size: int = 16,
        vision_dim: int = 32,
        vision_heads: int = 2,
        n_action_bins: int = N_BINS,
        pad_to_multiple_of: int = PAD_TO_MULTIPLE_OF,
        norm_stats: Optional[Dict[str, Any]] = None,
        **kwargs: Any,
    ):
        if text_config is None:
            text_config = LlamaConfig()
        elif isinstance(text_config, dict):
            text_config = LlamaConfig(**{k: v for k, v in text_config.items() if k != "model_type"})
        self.text_config = text_config
        self.image_size = image_size
        self.patch_size = patch_size
        self.vision_dim = vision_dim
        self.vision_heads = vision_heads
        self.n_action_bins = n_action_bins
        self.pad_to_multiple_of = pad_to_multiple_of
        self.norm_stats = norm_stats
        self.image_sizes = [image_size]
        self.use_fused_vision_backbone = False
        super().__init__(**kwargs)

    def to_dict(self) -> Dict[str, Any]:
        out = super().to_dict()
        if isinstance(out.get("text_config"), PretrainedConfig):
            out["text_config"] = out["text_config"].to_dict()
        return out


class ViTBlock(nn.Module):
    """Pre-norm self-attention + MLP with plain ``nn.Linear`` layers (LoRA targets them)."""

    def __init__(self, d: int, heads: int):
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.fc1 = nn.Linear(d, 4 * d)
        self.fc2 = nn.Linear(4 * d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, D = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(B, T, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(B, T, D)
        x = x + self.proj(a)
        return x + self.fc2(F.gelu(self.fc1(self.norm2(x))))


class TinyPatchEmbed(nn.Module):
    """timm's ``PatchEmbed`` layout: the patchifying convolution is ``patch_embed.proj``, as in OpenVLA's towers
    (which is why its ``all-linear`` LoRA adapts that convolution too: a Linear is also called ``proj``)."""

    def __init__(self, config: TinyOpenVLAConfig):
        super().__init__()
        self.proj = nn.Conv2d(3, config.vision_dim, config.patch_size, config.patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


class TinyVisionBackbone(nn.Module):
    """pixel_values ``[B, 3, S, S]`` -> patch features ``[B, (S/p)^2, vision_dim]``."""

    def __init__(self, config: TinyOpenVLAConfig):
        super().__init__()
        n = (config.image_size // config.patch_size) ** 2
        self.patch_embed = TinyPatchEmbed(config)
        self.pos_embed = nn.Parameter(torch.zeros(1, n, config.vision_dim))
        self.block = ViTBlock(config.vision_dim, config.vision_heads)
        self.norm = nn.LayerNorm(config.vision_dim)
        self.embed_dim = config.vision_dim

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(pixel_values).flatten(2).transpose(1, 2) + self.pos_embed
        return self.norm(self.block(x))


class TinyProjector(nn.Module):
    """Prismatic's (unfused) projector: fc1 -> GELU -> fc2."""

    def __init__(self, vision_dim: int, llm_dim: int):
        super().__init__()
        self.fc1 = nn.Linear(vision_dim, llm_dim)
        self.fc2 = nn.Linear(llm_dim, llm_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class TinyOpenVLAForActionPrediction(PreTrainedModel):
    """OpenVLA's Prismatic layout at toy scale (see the module docstring)."""

    config_class = TinyOpenVLAConfig
    base_model_prefix = "tiny_openvla"
    main_input_name = "input_ids"
    _no_split_modules: List[str] = []

    def __init__(self, config: TinyOpenVLAConfig):
        super().__init__(config)
        self.vision_backbone = TinyVisionBackbone(config)
        self.projector = TinyProjector(config.vision_dim, config.text_config.hidden_size)
        self.language_model = LlamaForCausalLM(config.text_config)
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        std = 0.02
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            module.weight.data.normal_(0.0, std)
            if module.bias is not None:
                module.bias.data.zero_()
        elif isinstance(module, nn.Embedding):
            module.weight.data.normal_(0.0, std)
        elif isinstance(module, nn.LayerNorm):
            module.weight.data.fill_(1.0)
            module.bias.data.zero_()

    # --- PreTrainedModel boilerplate (as Prismatic delegates to its LLM) -----------
    def get_input_embeddings(self) -> nn.Module:
        return self.language_model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.language_model.set_input_embeddings(value)

    def get_output_embeddings(self) -> nn.Module:
        return self.language_model.get_output_embeddings()

    def set_output_embeddings(self, value: nn.Module) -> None:
        self.language_model.set_output_embeddings(value)

    def get_decoder(self) -> nn.Module:
        return self.language_model.get_decoder()

    def tie_weights(self, *args: Any, **kwargs: Any) -> None:  # nothing is tied (as Llama-2)
        return None

    @property
    def action_vocab_size(self) -> int:
        """OpenVLA's ``vocab_size`` for de-tokenisation: the padded embedding size minus the padding."""
        return self.config.text_config.vocab_size - self.config.pad_to_multiple_of

    # --- forward: Prismatic's multimodal forward -------------------------------
    def forward(
        self,
        input_ids: Optional[torch.LongTensor] = None,
        attention_mask: Optional[torch.Tensor] = None,
        pixel_values: Optional[torch.FloatTensor] = None,
        labels: Optional[torch.LongTensor] = None,
        output_hidden_states: Optional[bool] = None,
        return_dict: Optional[bool] = None,
        **kwargs: Any,
    ) -> CausalLMOutputWithPast:
        """Patches are inserted after ``<s>`` (position 0), as OpenVLA does; labels of patches are ignored."""
        embeds = self.get_input_embeddings()(input_ids)
        mask = attention_mask
        if pixel_values is not None:
            patches = self.projector(self.vision_backbone(pixel_values.to(embeds.dtype)))
            embeds = torch.cat([embeds[:, :1], patches, embeds[:, 1:]], dim=1)
            if mask is not None:
                ones = torch.ones(patches.shape[:2], dtype=mask.dtype, device=mask.device)
                mask = torch.cat([mask[:, :1], ones, mask[:, 1:]], dim=1)
            if labels is not None:
                ignore = torch.full(patches.shape[:2], -100, dtype=labels.dtype, device=labels.device)
                labels = torch.cat([labels[:, :1], ignore, labels[:, 1:]], dim=1)
        out = self.language_model(inputs_embeds=embeds, attention_mask=mask, labels=labels,
                                  output_hidden_states=output_hidden_states, return_dict=True)
        return CausalLMOutputWithPast(loss=out.loss, logits=out.logits, hidden_states=out.hidden_states)

    @torch.no_grad()
    def predict_action(self, input_ids: torch.LongTensor, pixel_values: torch.Tensor,
                       unnorm_key: Optional[str] = None, space_token_id: Optional[int] = None,
                       actions_only: bool = False) -> np.ndarray:
        """OpenVLA's ``predict_action`` for one observation, as a plain greedy loop over full forward
        passes (the reference the adapter's batched path is tested against): append the empty
        piece ``▁`` after the prompt, pick 7 argmax tokens over the whole vocabulary (over the 256
        action ids only with ``actions_only``, as the adapter's distribution), map them to bins with
        ``vocab_size - id``, take bin centres and un-normalise with the q01/q99 statistics."""
        ids = input_ids
        if space_token_id is not None and int(ids[0, -1]) != space_token_id:
            ids = torch.cat([ids, torch.tensor([[space_token_id]], device=ids.device)], dim=1)
        stats = _pick_stats(self.config.norm_stats, unnorm_key)
        dim = len(stats["q01"])
        V = self.action_vocab_size
        for _ in range(dim):
            logits = self(input_ids=ids, pixel_values=pixel_values).logits[:, -1]
            if actions_only:
                logits = torch.full_like(logits, float("-inf")).index_copy(
                    1, torch.arange(V - self.config.n_action_bins, V, device=logits.device),
                    logits[:, V - self.config.n_action_bins:V])
            ids = torch.cat([ids, logits.argmax(-1, keepdim=True)], dim=1)
        predicted = ids[0, -dim:].cpu().numpy()
        bins = np.linspace(-1, 1, self.config.n_action_bins)
        centers = (bins[:-1] + bins[1:]) / 2.0
        discretized = np.clip(self.action_vocab_size - predicted - 1, 0, centers.shape[0] - 1)
        normalized = centers[discretized]
        mask = np.asarray(stats.get("mask", np.ones(dim, dtype=bool)))
        high, low = np.asarray(stats["q99"]), np.asarray(stats["q01"])
        return np.where(mask, 0.5 * (normalized + 1) * (high - low) + low, normalized)


def _pick_stats(norm_stats: Dict[str, Any], unnorm_key: Optional[str]) -> Dict[str, Any]:
    if unnorm_key is None:
        if len(norm_stats) != 1:
            raise ValueError(f"choose an unnorm_key from {sorted(norm_stats)}")
        unnorm_key = next(iter(norm_stats))
    return norm_stats[unnorm_key]["action"]


def register_auto_classes() -> None:
    """Register the tiny config and model with the transformers Auto classes (idempotent, no remote code)."""
    import transformers

    try:
        AutoConfig.register(MODEL_TYPE, TinyOpenVLAConfig)
    except ValueError:  # already registered in this process
        pass
    for name in ("AutoModelForVision2Seq", "AutoModelForImageTextToText", "AutoModel"):
        auto = getattr(transformers, name, None)
        if auto is None:
            continue
        try:
            auto.register(TinyOpenVLAConfig, TinyOpenVLAForActionPrediction)
        except ValueError:
            pass


register_auto_classes()


# --------------------------------------------------------------------------
# the tokenizer
# --------------------------------------------------------------------------
def build_tokenizer(action_vocab_size: int):
    """A Llama-style fast tokenizer (``<s>`` in front, ``▁`` for spaces, character pieces), built
    offline with the ``tokenizers`` library; ids ``action_vocab_size - 256 ..`` are the action bins,
    ``<PAD>`` is ``action_vocab_size`` (OpenVLA's pad id 32000 for a 32000-id Llama vocabulary)."""
    from tokenizers import Tokenizer, models, normalizers, processors
    from transformers import PreTrainedTokenizerFast

    pieces = SPECIAL_TOKENS + [WORD_MARKER] + CHARACTERS
    first_action = action_vocab_size - N_BINS
    if len(pieces) > first_action:
        raise ValueError(f"action_vocab_size={action_vocab_size} leaves no room for {len(pieces)} text pieces")
    fillers = [f"<unused{i}>" for i in range(first_action - len(pieces))]
    actions = [f"<bin{N_BINS - 1 - i}>" for i in range(N_BINS)]  # id vocab-1-b is bin b
    vocab = {p: i for i, p in enumerate(pieces + fillers + actions + ["<PAD>"])}
    model = models.BPE(vocab=vocab, merges=[], unk_token="<unk>", fuse_unk=True)
    tok = Tokenizer(model)
    tok.normalizer = normalizers.Sequence([normalizers.Prepend(WORD_MARKER), normalizers.Replace(" ", WORD_MARKER)])
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 1)])
    from tokenizers import decoders

    tok.decoder = decoders.Sequence([decoders.Replace(WORD_MARKER, " "), decoders.Fuse(), decoders.Strip(" ", 1, 0)])
    tok.add_special_tokens(["<unk>", "<s>", "</s>", "<PAD>"])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                   pad_token="<PAD>", padding_side="right")


# --------------------------------------------------------------------------
# building a checkpoint folder
# --------------------------------------------------------------------------
def identity_statistics() -> Dict[str, Any]:
    """OpenVLA-layout statistics with q01 = -1, q99 = 1 (the task envs' controller units pass through)."""
    d = 7
    return {
        "action": {"mean": [0.0] * d, "std": [0.5] * d, "max": [1.0] * d, "min": [-1.0] * d,
                   "q01": [-1.0] * d, "q99": [1.0] * d, "mask": [True] * 6 + [False]},
        "proprio": {"mean": [0.0] * d, "std": [1.0] * d, "max": [0.0] * d, "min": [0.0] * d,
                    "q01": [0.0] * d, "q99": [0.0] * d},
        "num_transitions": 0,
        "num_trajectories": 0,
    }


def build_tiny_openvla(
    out: str,
    *,
    seed: int = 0,
    statistics: Optional[Dict[str, Any]] = None,
    action_vocab_size: int = 512,
    hidden_size: int = 64,
    layers: int = 2,
    heads: int = 4,
    image_size: int = 64,
    patch_size: int = 16,
) -> str:
    """Write a tiny OpenVLA-format checkpoint into ``out`` and return ``out``.

    ``statistics``: OpenVLA's ``{unnorm_key: {"action": {...}, ...}}`` (default: one
    ``identity`` entry). The weights are a seeded random initialisation: the same
    seed gives the same files on every machine and transformers version.
    """
    stats = statistics or {"identity": identity_statistics()}
    tokenizer = build_tokenizer(action_vocab_size)
    text_config = LlamaConfig(
        vocab_size=action_vocab_size + PAD_TO_MULTIPLE_OF, hidden_size=hidden_size, intermediate_size=2 * hidden_size,
        num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=heads, max_position_embeddings=512,
        bos_token_id=1, eos_token_id=2, pad_token_id=action_vocab_size, tie_word_embeddings=False,
    )
    config = TinyOpenVLAConfig(
        text_config=text_config, image_size=image_size, patch_size=patch_size, norm_stats=stats,
        pad_token_id=action_vocab_size, architectures=["TinyOpenVLAForActionPrediction"],
    )
    torch.manual_seed(seed)  # some transformers versions initialise inside the constructor
    model = TinyOpenVLAForActionPrediction(config)
    gen = torch.Generator().manual_seed(int(seed))
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            if name.endswith("bias"):
                p.zero_()
            elif "norm" in name and p.ndim == 1:
                p.fill_(1.0)
            else:
                fan_in = p[0].numel() if p.ndim > 1 else p.numel()
                p.copy_(torch.randn(p.shape, generator=gen) * min(0.02 * 4, 1.0 / math.sqrt(max(fan_in, 1))))
    os.makedirs(out, exist_ok=True)
    model.save_pretrained(out)  # safetensors (the default in 4.40 and the only format in 5.x)
    tokenizer.save_pretrained(out)
    _portable_tokenizer_config(out)
    with open(os.path.join(out, "preprocessor_config.json"), "w") as f:
        json.dump(preprocessor_config(image_size), f, indent=2)
        f.write("\n")
    with open(os.path.join(out, "dataset_statistics.json"), "w") as f:
        json.dump(stats, f, indent=2)
        f.write("\n")
    return out


def _portable_tokenizer_config(out: str) -> None:
    """Name the tokenizer class ``PreTrainedTokenizerFast``, which transformers 4.40 and 5.x both load
    (5.x writes its new ``TokenizersBackend`` name, which 4.40 does not know)."""
    path = os.path.join(out, "tokenizer_config.json")
    with open(path) as f:
        cfg = json.load(f)
    cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
    with open(path, "w") as f:
        json.dump(cfg, f, indent=2)
        f.write("\n")


def load_tiny(seed: int = 0, **overrides: Any):
    """The registered ``openvla-tiny-v1``: the stand-in built (once, atomically) into the cache, then loaded
    by the OpenVLA adapter like any OpenVLA-format folder."""
    import shutil
    import tempfile

    from vla_forget.policies.openvla import OpenVLAPolicy

    cache = os.environ.get("VLA_FORGET_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "vla-forget")
    # "-r2": the vision tower's patch convolution is ``patch_embed.proj`` (timm's layout) since this revision
    path = os.path.join(cache, "policies", f"openvla-tiny-v1-r2-seed{int(seed)}")
    if not os.path.exists(os.path.join(path, "dataset_statistics.json")):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = tempfile.mkdtemp(prefix=".build-", dir=os.path.dirname(path))
        try:
            build_tiny_openvla(tmp, seed=int(seed))
            try:
                os.rename(tmp, path)  # atomic; another process may have won the race
            except OSError:
                pass
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return OpenVLAPolicy.from_spec(path, **overrides)


def preprocessor_config(image_size: int) -> Dict[str, Any]:
    """The Prismatic image processor's settings (single backbone, resize-naive, bicubic, mean/std 0.5), with the
    ``tvf_normalize_params`` the real processor writes."""
    return {
        "image_processor_type": "PrismaticImageProcessor",
        "processor_class": "PrismaticProcessor",
        "image_resize_strategy": "resize-naive",
        "input_sizes": [[3, image_size, image_size]],
        "interpolations": ["bicubic"],
        "means": [[0.5, 0.5, 0.5]],
        "stds": [[0.5, 0.5, 0.5]],
        # what the real processor saves and then normalises with (its own attributes override means/stds)
        "tvf_normalize_params": [{"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5], "inplace": False}],
        "use_fused_vision_backbone": False,
    }


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m vla_forget.policies.openvla_tiny",
                                description="Build a tiny OpenVLA-format checkpoint folder offline (a stand-in for OpenVLA-7B).")
    p.add_argument("out", help="folder to write (config.json, model.safetensors, tokenizer, dataset_statistics.json)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random weights (default 0)")
    p.add_argument("--statistics", help="a dataset_statistics.json to ship instead of the identity statistics")
    args = p.parse_args(argv)
    stats = None
    if args.statistics:
        with open(args.statistics) as f:
            stats = json.load(f)
    build_tiny_openvla(args.out, seed=args.seed, statistics=stats)
    print(f"tiny OpenVLA-format checkpoint: {args.out} (use it as --policy openvla:{args.out})")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
