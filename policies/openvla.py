"""OpenVLA-7B, and any checkpoint in its Hugging Face format, behind the :class:`TokenPolicy` protocol.

What it loads
-------------
A folder (or a Hugging Face hub id) holding an OpenVLA-format checkpoint:
``config.json`` + safetensors weights + tokenizer files + ``preprocessor_config.json``
(the Prismatic image processor's settings) + the action statistics
(``dataset_statistics.json``, or ``norm_stats`` in ``config.json``). Two kinds:

* **remote code** (the published ``openvla/openvla-7b``): ``config.json`` has an
  ``auto_map`` naming ``modeling_prismatic.py`` in the checkpoint. It runs only
  with an explicit ``trust_remote_code=True`` (``--trust-remote-code`` on the
  command line), and only under OpenVLA's pinned stack (transformers 4.40.1,
  tokenizers 0.19.1, timm 0.9.x: the ``openvla`` extra), which is checked
  before anything is imported from the checkpoint;
* **registered classes**: any ``model_type`` the running transformers knows
  (e.g. the tiny stand-in of :mod:`vla_forget.policies.openvla_tiny`, which
  this module registers); no remote code, any transformers version.

Specs (``load_policy``/``--policy``/``--base``)::

    openvla:openvla/openvla-7b#unnorm_key=bridge_orig      hub id (downloads once into the HF cache)
    openvla:/data/openvla-7b#unnorm_key=fractal20220817_data,dtype=bfloat16
    /data/my-merged-openvla                                 a folder with an HF config.json is detected
    runs/adapt/checkpoints/update-000010                    a LoRA adapter folder saved by this class

Options after ``#`` (comma-separated ``key=value``): ``unnorm_key``, ``dtype``
(``bfloat16``/``float32``; default bfloat16 on CUDA, float32 on the CPU),
``lora_rank``, ``lora_alpha``, ``lora_dropout``, ``attn_implementation``.

How OpenVLA fits the protocol
-----------------------------
Prompt ``In: What action should the robot take to {instruction}?\\nOut:`` (the
instruction lower-cased, as OpenVLA's training data), tokenised with ``<s>``
in front; OpenVLA appends the empty piece ``▁`` (Llama id 29871) when the
prompt does not end with it, so does this adapter. The image is resized and
normalised as the checkpoint's Prismatic image processor does (batched, in
torch, on the policy's device); its projected patches go right after ``<s>``.
The action tokens are the last 256 ids of OpenVLA's ``vocab_size`` =
``text_config.vocab_size - pad_to_multiple_of`` (32064 - 64 = 32000 for
OpenVLA-7B: the Llama tokenizer's vocabulary, not the padded embedding
matrix): bin ``b`` is token ``vocab_size - 1 - b``. So

* ``action_logits(obs, tokens)``: prompt + ``tokens[:, :6]`` as one right-padded
  causal batch, **one forward pass**; the logits at the 7 positions before each
  action token, sliced to the 256 action ids and reversed, are ``[B, 7, 256]``
  over bins. Right padding never reaches a read position (causal attention),
  so no attention mask is needed, identically in every transformers version;
* the distribution is the softmax over those 256 ids only (OpenVLA's ``generate``
  takes the argmax over the whole vocabulary; a trained OpenVLA puts nearly all
  its mass on action ids, and the greedy actions agree whenever that argmax is an
  action id). An exact tie (common in bfloat16) goes, as in ``generate``, to the
  lowest vocabulary id, i.e. the highest bin;
* ``sample_tokens``: one pass over each group of equal-length prompts, then 6
  single-token steps with the key/value cache (the returned logits are the
  teacher-forced logits of the sample);
* ``features(obs)``: the language model's last hidden state at the last prompt
  position (``▁``), ``[B, hidden_size]`` in float32, for a value head;
  ``logits_and_features`` gives both from one pass.

The forward is assembled from the Prismatic parts (``vision_backbone``,
``projector``, ``language_model``) so that the LM head runs on 7 positions,
not on the whole sequence (OpenVLA-7B's full logits are B x ~290 x 32064
floats); checkpoints without these parts go through ``model(...)`` instead.

Adaptation: LoRA through peft (:meth:`OpenVLAPolicy.enable_lora`, or the first
:meth:`trainable_parameters` call): rank 32 on the modules peft 0.11.1 adapts for
OpenVLA's own fine-tuning (``target_modules="all-linear"``: every linear layer, the LM head
included, and the vision towers' ``patch_embed.proj`` convolutions; :func:`all_linear_targets`), alpha
min(rank, 16), Gaussian init (the adapted policy starts equal to the base), as
OpenVLA's fine-tuning script. ``save(dir)``
writes the adapter (peft's files plus a ``config.json`` naming the base and the
``unnorm_key``); ``save(dir, merged=True)`` writes a plain HF checkpoint with
the adapter folded into the weights.

The weights load at first use (the first forward, ``parameters()``,
``trainable_parameters()`` or ``save``): describing a policy (its checkpoint
hash, its kind) costs no 15 GB load. Every check on the checkpoint (files,
statistics, ``unnorm_key``, remote code, library versions) runs at construction.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import shutil
from dataclasses import asdict, dataclass
from typing import Any, Dict, Iterator, List, Optional, Tuple

import torch
import torch.nn.functional as F

from vla_forget.policies import CheckpointError, parse_spec_options
from vla_forget.policies.base import ACTION_DIM, N_BINS, Observation, TokenPolicy, pick_tokens
from vla_forget.tokenizer import (
    STATS_FILENAME,
    ActionTokenizer,
    StatisticsError,
    select_statistics,
)

POLICY_CLASS = "OpenVLA"
ADAPTER_FORMAT_VERSION = 1
SPEC_PREFIX = "openvla:"
PROMPT = "In: What action should the robot take to {instruction}?\nOut:"
#: prompt styles: OpenVLA's training template (the instruction lower-cased, as its training data), or the bare
#: instruction as SimplerEnv's published OpenVLA wrapper passes it (``processor(task_description, image)``)
PROMPTS = {"openvla": PROMPT, "bare": "{instruction}"}
DEFAULT_PROMPT_STYLE = "openvla"
#: the empty word piece OpenVLA appends after ``Out:`` (Llama's ``▁``, id 29871)
SPACE_PIECE = "\u2581"
#: set to 1 to allow remote code without passing trust_remote_code (what --trust-remote-code does for workers)
TRUST_ENV = "VLA_FORGET_TRUST_REMOTE_CODE"
#: set to 1 to try remote-code checkpoints under an unpinned transformers (at your own risk)
SKIP_VERSION_CHECK_ENV = "VLA_FORGET_SKIP_VERSION_CHECK"
OPENVLA_PINS = {"transformers": "4.40.1", "tokenizers": "0.19.1", "timm": "0.9.16"}
INSTALL_HINT = ("pip install -c constraints.txt -e '.[openvla]' (a separate virtualenv: the core and the test extra "
                "use a current transformers)")
LORA_STATE_PREFIX = "lora."
SPEC_OPTIONS = ("unnorm_key", "dtype", "lora_rank", "lora_alpha", "lora_dropout", "attn_implementation", "prompt")


class OpenVLAError(CheckpointError):
    """An OpenVLA checkpoint that cannot be used as asked; the message says what to do."""


@dataclass
class LoRASettings:
    """LoRA as OpenVLA's fine-tuning script sets it (``vla-scripts/finetune.py``)."""

    rank: int = 32
    """LoRA rank r"""
    alpha: Optional[float] = None
    """scaling numerator; None = min(rank, 16), OpenVLA's choice"""
    dropout: float = 0.0
    """dropout on the LoRA branch"""
    target_modules: Any = "all-linear"
    """"all-linear": what peft 0.11.1 (OpenVLA's pinned version) adapts for OpenVLA with
    ``target_modules="all-linear"`` (:func:`all_linear_targets`): every ``nn.Linear`` (the LM head
    included) and every convolution sharing a Linear's last name (the vision towers'
    ``patch_embed.proj``, since their attention output Linear is also ``proj``); resolved here to full
    module names so that every peft version adapts the same modules. Or a list of module names for peft"""

    def peft_config(self, model: torch.nn.Module):
        from peft import LoraConfig

        alpha = self.alpha if self.alpha is not None else min(self.rank, 16)
        targets = self.target_modules
        if targets == "all-linear":
            targets = all_linear_targets(model)
        return LoraConfig(r=int(self.rank), lora_alpha=alpha, lora_dropout=float(self.dropout),
                          target_modules=targets, init_lora_weights="gaussian")


def all_linear_targets(model: torch.nn.Module) -> List[str]:
    """The modules peft 0.11.1 adapts for ``target_modules="all-linear"``, as full names.

    peft 0.11.1 collects the *last name* of every ``nn.Linear`` and then adapts every module whose name
    ends with one of them. It means to leave the output head out, but removes the head's full name
    (``language_model.lm_head``) from the set of last names, so for OpenVLA the head stays in; and a
    convolution that shares a Linear's last name is adapted too (OpenVLA's DINOv2 and SigLIP towers:
    ``patch_embed.proj`` beside the attention's ``attn.proj``). Later peft versions differ on both
    points, hence the explicit list."""
    linear = {name.rsplit(".", 1)[-1] for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    kinds = (torch.nn.Linear, torch.nn.Conv2d)
    return sorted(name for name, m in model.named_modules()
                  if name and isinstance(m, kinds) and name.rsplit(".", 1)[-1] in linear)


# --------------------------------------------------------------------------
# specs, folders, versions
# --------------------------------------------------------------------------
def parse_spec(spec: str) -> Tuple[str, Dict[str, str]]:
    """``openvla:SOURCE#k=v,k=v`` (prefix optional) -> (SOURCE, options)."""
    s = spec[len(SPEC_PREFIX):] if spec.startswith(SPEC_PREFIX) else spec
    source, _, opts = s.partition("#")
    options = parse_spec_options(opts, spec, allowed=SPEC_OPTIONS, error=OpenVLAError,
                                 hint=f"options are key=value with key in {', '.join(SPEC_OPTIONS)} "
                                      "(e.g. openvla:openvla/openvla-7b#unnorm_key=bridge_orig)")
    if not source:
        raise OpenVLAError(f"policy spec {spec!r} names no checkpoint: use openvla:FOLDER or openvla:HUB_ID")
    return source, options


def resolve_source(source: str) -> str:
    """A local checkpoint folder for a folder path or a Hugging Face hub id (downloaded into the HF cache)."""
    if os.path.isdir(source):
        return os.path.abspath(source)
    if os.path.exists(source):
        raise OpenVLAError(f"{source} is a file; an OpenVLA checkpoint is a folder (config.json, weights, tokenizer, "
                           f"{STATS_FILENAME})")
    looks_like_hub_id = source.count("/") == 1 and not source.startswith((".", "/", "~"))
    if not looks_like_hub_id:
        raise OpenVLAError(f"no such checkpoint folder: {source} (give a folder, or a hub id such as openvla/openvla-7b)")
    try:
        from huggingface_hub import snapshot_download

        return snapshot_download(source)
    except Exception as e:  # offline, unknown repo, no access: say so plainly
        raise OpenVLAError(f"could not fetch {source!r} from the Hugging Face hub ({type(e).__name__}: {e}). Download it "
                           f"where the hub is reachable (huggingface-cli download {source} --local-dir DIR) and pass "
                           f"openvla:DIR") from None


def _read_json(path: str) -> Dict[str, Any]:
    from vla_forget.jsonio import read_json_object

    return read_json_object(path, OpenVLAError)


def _version_tuple(v: str) -> Tuple[int, ...]:
    out = []
    for part in v.split(".")[:3]:
        digits = "".join(ch for ch in part if ch.isdigit())
        out.append(int(digits) if digits else 0)
    return tuple(out)


def check_remote_code_stack(folder: str) -> None:
    """OpenVLA's published code needs its pinned stack; say exactly what differs and how to install it."""
    if os.environ.get(SKIP_VERSION_CHECK_ENV) == "1":
        return
    import importlib.metadata as md

    problems = []
    try:
        tv = md.version("transformers")
    except md.PackageNotFoundError:
        tv = None
    if tv is None:
        problems.append("transformers is not installed")
    elif _version_tuple(tv)[:2] != (4, 40):
        why = (" (transformers 5 has no AutoModelForVision2Seq, which OpenVLA's config maps to)"
               if _version_tuple(tv)[0] >= 5 else "")
        problems.append(f"transformers {tv} is installed, OpenVLA's code needs 4.40.x (4.40.1){why}")
    try:
        timm_v = md.version("timm")
    except md.PackageNotFoundError:
        timm_v = None
    if timm_v is None:
        problems.append("timm is not installed (OpenVLA's vision backbones are timm models; it needs 0.9.10-0.9.16)")
    elif _version_tuple(timm_v)[:2] != (0, 9):
        problems.append(f"timm {timm_v} is installed, OpenVLA's code needs 0.9.x (0.9.16)")
    if problems:
        raise OpenVLAError(f"{folder} runs OpenVLA's own code (remote code), which needs its pinned stack "
                           f"(transformers {OPENVLA_PINS['transformers']}, tokenizers {OPENVLA_PINS['tokenizers']}, "
                           f"timm {OPENVLA_PINS['timm']}): " + "; ".join(problems) + f". Install it with: {INSTALL_HINT}. "
                           f"(Set {SKIP_VERSION_CHECK_ENV}=1 to try anyway.)")


def trust_from_env() -> bool:
    return os.environ.get(TRUST_ENV) == "1"


_FILE_HASHES: Dict[Tuple[str, int, int], str] = {}


def _file_digest(path: str) -> str:
    st = os.stat(path)
    key = (os.path.abspath(path), st.st_size, st.st_mtime_ns)
    if key not in _FILE_HASHES:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(8 << 20), b""):
                h.update(block)
        _FILE_HASHES[key] = h.hexdigest()
    return _FILE_HASHES[key]


def base_fingerprint(folder: str) -> Dict[str, Any]:
    """A cheap identity of an HF checkpoint: config.json's sha256 and the weight files' names and sizes."""
    names = sorted(n for n in os.listdir(folder) if n.endswith((".safetensors", ".bin")) and not n.startswith("adapter_"))
    return {"config_sha256": _file_digest(os.path.join(folder, "config.json")),
            "weights": {n: os.path.getsize(os.path.join(folder, n)) for n in names}}


#: config.json keys that record how or where a checkpoint was saved, not what it computes
VOLATILE_CONFIG_KEYS = {"transformers_version", "_name_or_path", "_commit_hash", "dtype", "torch_dtype",
                        "_attn_implementation_autoset", "attn_implementation"}


def _canonical(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _canonical(v) for k, v in sorted(obj.items()) if k not in VOLATILE_CONFIG_KEYS}
    if isinstance(obj, list):
        return [_canonical(v) for v in obj]
    return obj


def _tensor_digest(path: str) -> str:
    """sha256 of a safetensors file's tensors (names, dtypes, shapes, bytes), not of its header metadata."""
    st = os.stat(path)
    key = (os.path.abspath(path), st.st_size, st.st_mtime_ns, "tensors")
    if key not in _FILE_HASHES:
        from safetensors import safe_open

        h = hashlib.sha256()
        with safe_open(path, framework="pt") as f:
            for name in sorted(f.keys()):
                t = f.get_tensor(name).contiguous()
                h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
                h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
        _FILE_HASHES[key] = h.hexdigest()
    return _FILE_HASHES[key]


def weights_digest(folder: str) -> str:
    """sha256 of what an HF checkpoint folder computes: its config (without save-time fields such as the
    transformers version) and the tensors of every weight file, independent of how the files were sharded
    or annotated; cached per file."""
    h = hashlib.sha256()
    h.update(json.dumps(_canonical(_read_json(os.path.join(folder, "config.json"))), sort_keys=True).encode())
    names = sorted(n for n in os.listdir(folder) if n.endswith((".safetensors", ".bin")) and not n.startswith("adapter_"))
    for name in names:
        path = os.path.join(folder, name)
        h.update((_tensor_digest(path) if name.endswith(".safetensors") else _file_digest(path)).encode())
    return h.hexdigest()


def _cache_argument(decoder: torch.nn.Module) -> str:
    """The decoder's name for the key/value cache: ``past_key_values`` (transformers 4.x, OpenVLA's 4.40.1)
    or ``cache`` (transformers 5 renames it and drops the old name in 5.40)."""
    import inspect

    params = inspect.signature(decoder.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def _cache_of(out: Any) -> Any:
    """The key/value cache of a decoder output, under either name."""
    cache = getattr(out, "cache", None)
    return cache if cache is not None else out.past_key_values


def embedding_width(folder: str) -> Optional[int]:
    """The width of the language model's token embedding (``...embed_tokens.weight``), read from the safetensors
    headers of an HF checkpoint folder (a few kB, no tensor data); None if there is no such tensor."""
    from safetensors import safe_open

    files = sorted(n for n in os.listdir(folder) if n.endswith(".safetensors") and not n.startswith("adapter_"))
    for name in files:
        with safe_open(os.path.join(folder, name), framework="pt") as f:
            for key in f.keys():
                if key.endswith("embed_tokens.weight"):
                    shape = f.get_slice(key).get_shape()
                    return int(shape[1]) if len(shape) == 2 else None
    return None


# --------------------------------------------------------------------------
# image preprocessing (the Prismatic image processor, batched in torch)
# --------------------------------------------------------------------------
class ImagePreprocessor:
    """uint8 ``[B, H, W, 3]`` -> ``pixel_values`` ``[B, 3 k, S, S]`` as the checkpoint's Prismatic processor.

    ``resize-naive`` (OpenVLA-7B): resize to S x S; ``resize-crop``: shorter side
    to S, centre crop; ``letterbox``: pad to a square with the mean colour, resize.
    Then scale to [0, 1] and normalise with each backbone's mean/std; fused
    backbones (OpenVLA-7B: DINOv2 + SigLIP) stack their channels. Resizing is
    torch's antialiased bicubic on floats, clamped to [0, 255] (PIL works on
    uint8): at OpenVLA's 224 px input from 224 px images it is the identity.
    """

    def __init__(self, cfg: Dict[str, Any], where: str):
        self.strategy = cfg.get("image_resize_strategy", "resize-naive")
        if self.strategy not in ("resize-naive", "resize-crop", "letterbox"):
            raise OpenVLAError(f"{where}: image_resize_strategy {self.strategy!r} is not one of resize-naive, resize-crop, letterbox")
        sizes = cfg.get("input_sizes") or [[3, 224, 224]]
        self.size = int(sizes[0][-1])
        if any(int(s[-1]) != self.size or int(s[-2]) != self.size for s in sizes):
            raise OpenVLAError(f"{where}: input_sizes {sizes} differ between backbones; expected one square size")
        n = len(sizes)
        self.means = [list(m) for m in (cfg.get("means") or [[0.5, 0.5, 0.5]] * n)]
        self.stds = [list(s) for s in (cfg.get("stds") or [[0.5, 0.5, 0.5]] * n)]
        # OpenVLA's processor normalises with the constants stored as tvf_normalize_params (the saved processor's
        # own attributes override the ones it recomputes from means/stds; in OpenVLA-7B they are the bf16-rounded
        # DINOv2 mean/std, e.g. 0.484375 for 0.485): use them when present, as it does
        fill = cfg.get("tvf_letterbox_fill")
        self.letterbox_fill = ([int(v) for v in fill] if isinstance(fill, (list, tuple)) and len(fill) == 3
                               else [int(v * 255) for v in self.means[0]])
        tvf = cfg.get("tvf_normalize_params")
        self.normalize_source = "means/stds"
        if tvf is not None:
            if (not isinstance(tvf, list) or len(tvf) != n
                    or not all(isinstance(t, dict) and len(t.get("mean") or []) == 3 and len(t.get("std") or []) == 3
                               for t in tvf)):
                raise OpenVLAError(f"{where}: tvf_normalize_params must be {n} entries with a 3-value mean and std "
                                   f"(one per backbone), got {tvf!r}")
            self.means = [[float(v) for v in t["mean"]] for t in tvf]
            self.stds = [[float(v) for v in t["std"]] for t in tvf]
            self.normalize_source = "tvf_normalize_params"
        interp = (cfg.get("interpolations") or ["bicubic"])[0]
        self.mode = "bilinear" if interp == "bilinear" else "bicubic"
        if len(self.means) != n or len(self.stds) != n:
            raise OpenVLAError(f"{where}: means/stds do not match input_sizes")

    def __call__(self, image: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        if image.ndim != 4 or image.shape[-1] != 3:
            raise ValueError(f"OpenVLA expects images as uint8 [B, H, W, 3], got shape {tuple(image.shape)}")
        if image.dtype != torch.uint8:
            raise ValueError(f"OpenVLA expects uint8 images (0..255), got {image.dtype}")
        x = image.permute(0, 3, 1, 2).float()
        S = self.size
        H, W = x.shape[-2:]
        if self.strategy == "letterbox" and H != W:
            m = max(H, W)
            fill = torch.tensor(self.letterbox_fill, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
            canvas = fill.expand(x.shape[0], 3, m, m).clone()
            top, left = (m - H) // 2, (m - W) // 2
            canvas[:, :, top:top + H, left:left + W] = x
            x, H, W = canvas, m, m
        if self.strategy == "resize-crop" and H != W:
            scale = S / min(H, W)
            nh, nw = max(S, round(H * scale)), max(S, round(W * scale))
            x = F.interpolate(x, size=(nh, nw), mode=self.mode, antialias=True, align_corners=False)
            top, left = (nh - S) // 2, (nw - S) // 2
            x = x[:, :, top:top + S, left:left + S]
        elif (H, W) != (S, S):
            x = F.interpolate(x, size=(S, S), mode=self.mode, antialias=True, align_corners=False)
        x = x.clamp_(0.0, 255.0).div_(255.0)
        parts = []
        for mean, std in zip(self.means, self.stds):
            m = torch.tensor(mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
            s = torch.tensor(std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
            parts.append((x - m) / s)
        return torch.cat(parts, dim=1).to(dtype)


# --------------------------------------------------------------------------
# the policy
# --------------------------------------------------------------------------
class OpenVLAPolicy(TokenPolicy):
    """An OpenVLA-format Hugging Face checkpoint as a :class:`TokenPolicy` (see the module docstring)."""

    needs_image = True

    def __init__(
        self,
        source: str,
        *,
        unnorm_key: Optional[str] = None,
        trust_remote_code: Optional[bool] = None,
        dtype: Optional[str] = None,
        lora: Optional[LoRASettings] = None,
        adapter_dir: Optional[str] = None,
        attn_implementation: Optional[str] = None,
        statistics: Optional[Dict[str, Dict[str, Any]]] = None,
        prompt: Optional[str] = None,
    ):
        super().__init__()
        self.source = source
        self.folder = resolve_source(source)
        self.trust_remote_code = trust_from_env() if trust_remote_code is None else bool(trust_remote_code)
        self.dtype_name = dtype
        self.attn_implementation = attn_implementation
        self.lora = lora or LoRASettings()
        self.adapter_dir = adapter_dir
        self.fast_path: Optional[bool] = None  # None: decide from the model's layout; False forces model(...)
        self._prompt_cache: Dict[str, List[int]] = {}
        self.set_prompt_style(prompt or DEFAULT_PROMPT_STYLE)

        cfg_path = os.path.join(self.folder, "config.json")
        if not os.path.exists(cfg_path):
            raise OpenVLAError(f"{self.folder} is not an OpenVLA-format checkpoint: config.json is missing")
        self.hf_config = _read_json(cfg_path)
        if "policy_class" in self.hf_config:
            raise OpenVLAError(f"{self.folder} is a {self.hf_config['policy_class']} checkpoint of this project, not a "
                               "Hugging Face model folder; load it with load_policy(folder)")
        self.remote_code = bool(self.hf_config.get("auto_map"))
        if self.remote_code and not self.trust_remote_code:
            files = sorted({str(v).split(".")[0] + ".py" for v in self.hf_config["auto_map"].values()})
            raise OpenVLAError(
                f"{self.folder} runs code shipped with the checkpoint ({', '.join(files)}; config.json auto_map). "
                "Read it, then allow it explicitly: --trust-remote-code on the command line, or "
                "load_policy(..., trust_remote_code=True)")
        if self.remote_code:
            check_remote_code_stack(self.folder)

        # action statistics: dataset_statistics.json, else OpenVLA's norm_stats in config.json
        if statistics is None:
            stats_path = os.path.join(self.folder, STATS_FILENAME)
            if os.path.exists(stats_path):
                statistics = _read_json(stats_path)
            elif isinstance(self.hf_config.get("norm_stats"), dict) and self.hf_config["norm_stats"]:
                statistics = self.hf_config["norm_stats"]
            else:
                raise OpenVLAError(
                    f"{self.folder} has no action statistics: neither {STATS_FILENAME} nor norm_stats in config.json. "
                    "OpenVLA needs each dataset's q01/q99 to turn action tokens into actions; copy the "
                    f"{STATS_FILENAME} written when the model was trained into the folder")
        self.set_statistics(statistics, unnorm_key)

        pre_path = os.path.join(self.folder, "preprocessor_config.json")
        if not os.path.exists(pre_path):
            raise OpenVLAError(f"{self.folder} has no preprocessor_config.json (the Prismatic image processor's "
                               "input size and normalisation); copy it from the checkpoint the model was fine-tuned from")
        self.image_processor = ImagePreprocessor(_read_json(pre_path), pre_path)

        text = self.hf_config.get("text_config") or {}
        self.hidden_size = int(text.get("hidden_size") or self.hf_config.get("hidden_size") or 0)
        padded = text.get("vocab_size") or self.hf_config.get("vocab_size")
        pad_multiple = self.hf_config.get("pad_to_multiple_of")
        #: OpenVLA's vocab_size for actions: the padded embedding size minus the padding (32000 for OpenVLA-7B)
        self.action_vocab_size = int(padded) - int(pad_multiple) if (padded and pad_multiple) else None

        self._model = None
        self._text_tokenizer = None
        self._device = torch.device("cpu")
        self._weights_digest: Optional[str] = None
        self._lora_on = adapter_dir is not None
        self.training = False  # loaded policies start in eval mode (as SmallVLA.load); train() switches

    # --- construction helpers ----------------------------------------------
    @classmethod
    def from_spec(cls, spec: str, *, unnorm_key: Optional[str] = None, trust_remote_code: Optional[bool] = None,
                  **overrides: Any) -> "OpenVLAPolicy":
        """``openvla:SOURCE#opts`` or a folder (an HF model folder or an adapter folder saved by :meth:`save`)."""
        source, opts = parse_spec(spec)
        if unnorm_key is not None:
            opts["unnorm_key"] = unnorm_key
        opts.update({k: str(v) for k, v in overrides.items()})
        unknown = sorted(set(opts) - set(SPEC_OPTIONS))
        if unknown:
            raise OpenVLAError(f"unknown OpenVLA options {unknown}; known: {', '.join(SPEC_OPTIONS)}")
        cfg_path = os.path.join(source, "config.json")
        if os.path.isdir(source) and os.path.exists(cfg_path) and _read_json(cfg_path).get("policy_class") == POLICY_CLASS:
            return cls.from_adapter_folder(source, trust_remote_code=trust_remote_code, **opts)
        lora = LoRASettings()
        if "lora_rank" in opts:
            lora.rank = int(opts["lora_rank"])
        if "lora_alpha" in opts:
            lora.alpha = float(opts["lora_alpha"])
        if "lora_dropout" in opts:
            lora.dropout = float(opts["lora_dropout"])
        return cls(source, unnorm_key=opts.get("unnorm_key"), trust_remote_code=trust_remote_code,
                   dtype=opts.get("dtype"), lora=lora, attn_implementation=opts.get("attn_implementation"),
                   prompt=opts.get("prompt"))

    @classmethod
    def from_adapter_folder(cls, path: str, *, trust_remote_code: Optional[bool] = None, **opts: Any) -> "OpenVLAPolicy":
        """A LoRA adapter folder written by :meth:`save`: its base is loaded, then the adapter."""
        meta = _read_json(os.path.join(path, "config.json"))
        if meta.get("format_version") != ADAPTER_FORMAT_VERSION:
            raise OpenVLAError(f"{path}/config.json has format_version={meta.get('format_version')!r}; this code reads "
                               f"{ADAPTER_FORMAT_VERSION}")
        for name in ("adapter_config.json", "adapter_model.safetensors"):
            if not os.path.exists(os.path.join(path, name)):
                raise OpenVLAError(f"{path} is an OpenVLA adapter folder without {name}; it was not saved completely")
        base = meta.get("base")
        if not base:
            raise OpenVLAError(f"{path}/config.json does not name its base checkpoint")
        statistics = None
        if os.path.exists(os.path.join(path, STATS_FILENAME)):
            statistics = _read_json(os.path.join(path, STATS_FILENAME))
        lora = LoRASettings(**{k: v for k, v in (meta.get("lora") or {}).items() if k in LoRASettings.__dataclass_fields__})
        try:
            policy = cls(base, unnorm_key=opts.get("unnorm_key", meta.get("unnorm_key")), trust_remote_code=trust_remote_code,
                         dtype=opts.get("dtype"), lora=lora, adapter_dir=os.path.abspath(path),
                         attn_implementation=opts.get("attn_implementation"), statistics=statistics,
                         prompt=opts.get("prompt", meta.get("prompt_style")))
        except OpenVLAError as e:
            raise OpenVLAError(f"{path} adapts {base}: {e}") from None
        want = meta.get("base_fingerprint")
        if want:
            got = base_fingerprint(policy.folder)
            if got != want:
                raise OpenVLAError(f"{path} was trained on another base than {policy.folder} holds now (config.json or "
                                   "weight files differ); point the 'base' in its config.json at the right checkpoint")
        return policy

    prompt_styles = tuple(PROMPTS)
    greedy_ties_to_high_bins = True  # as OpenVLA's generate: the argmax over ids takes the lowest tied id

    def set_prompt_style(self, style: str) -> None:
        """``openvla`` (its training template, default) or ``bare`` (the instruction alone, as SimplerEnv's
        published OpenVLA evaluation passes it)."""
        if style not in PROMPTS:
            raise OpenVLAError(f"unknown prompt style {style!r} for {self.folder}: choose one of {', '.join(PROMPTS)} "
                               "(openvla: its training template; bare: the instruction alone, as SimplerEnv's OpenVLA "
                               "evaluation)")
        super().set_prompt_style(style)
        self._prompt_cache.clear()

    @property
    def input_image_size(self) -> int:  # type: ignore[override]
        """The processor's input size (OpenVLA-7B: 224): benches render at it unless ``--image-size`` says otherwise."""
        return int(self.image_processor.size)

    def set_statistics(self, statistics: Dict[str, Dict[str, Any]], unnorm_key: Optional[str] = None) -> None:
        """Choose the action statistics by ``unnorm_key`` (required when there are several, as in OpenVLA-7B)."""
        try:
            stats = select_statistics(statistics, unnorm_key, where=f"the statistics of {self.folder}")
        except StatisticsError as e:
            msg = str(e)
            if unnorm_key is None and len(statistics) > 1:
                msg += " (e.g. openvla:SOURCE#unnorm_key=KEY)"
            raise OpenVLAError(msg) from None
        if stats.dim != self.action_dim:
            raise OpenVLAError(f"the {unnorm_key!r} action statistics have {stats.dim} dimensions, not {self.action_dim}")
        self.dataset_statistics = json.loads(json.dumps(statistics))
        self.unnorm_key = unnorm_key if unnorm_key is not None else next(iter(statistics))
        self.action_statistics = stats
        #: the action tokenizer (bins <-> actions); the text tokenizer is ``text_tokenizer``
        self.tokenizer = ActionTokenizer(stats, n_bins=self.n_bins)

    # --- lazy loading --------------------------------------------------------
    @property
    def loaded(self) -> bool:
        return self._model is not None

    def _torch_dtype(self) -> torch.dtype:
        if self.dtype_name:
            try:
                dt = getattr(torch, self.dtype_name)
            except AttributeError:
                dt = None
            if not isinstance(dt, torch.dtype):
                raise OpenVLAError(f"unknown dtype {self.dtype_name!r} (bfloat16, float16 or float32)")
            return dt
        return torch.bfloat16 if self._device.type == "cuda" else torch.float32

    def _load(self) -> None:
        import transformers
        from transformers import AutoConfig, AutoTokenizer

        from vla_forget.policies import openvla_tiny  # noqa: F401  (registers the tiny stand-in's classes)

        try:
            transformers.utils.logging.disable_progress_bar()
        except AttributeError:  # pragma: no cover
            pass
        major = _version_tuple(transformers.__version__)[0]
        kwargs: Dict[str, Any] = {"dtype" if major >= 5 else "torch_dtype": self._torch_dtype()}
        if major < 5:
            kwargs["low_cpu_mem_usage"] = True
        if self.attn_implementation:
            kwargs["attn_implementation"] = self.attn_implementation
        trust = self.remote_code and self.trust_remote_code
        try:
            config = AutoConfig.from_pretrained(self.folder, trust_remote_code=trust)
        except ValueError as e:
            raise OpenVLAError(f"{self.folder}: transformers {transformers.__version__} does not know this model "
                               f"(model_type {self.hf_config.get('model_type')!r}): {e}") from None
        auto = self._auto_class(transformers, config, trust)
        model = auto.from_pretrained(self.folder, trust_remote_code=trust, **kwargs)
        try:
            self._text_tokenizer = AutoTokenizer.from_pretrained(self.folder, trust_remote_code=trust)
        except Exception as e:
            raise OpenVLAError(f"{self.folder}: cannot load its tokenizer ({type(e).__name__}: {e})") from None
        if self.action_vocab_size is None:
            self.action_vocab_size = int(self._text_tokenizer.vocab_size)
        V = model.get_output_embeddings().weight.shape[0] if model.get_output_embeddings() is not None else None
        if V is not None and self.action_vocab_size > V:
            raise OpenVLAError(f"{self.folder}: action vocabulary {self.action_vocab_size} exceeds the LM head's {V} outputs")
        model.to(self._device)
        for p in model.parameters():
            p.requires_grad_(False)
        self._model = model
        if self.adapter_dir is not None:
            from peft import PeftModel

            self._model = PeftModel.from_pretrained(model, self.adapter_dir, is_trainable=True)
            self._model.to(self._device)
        self._model.train(self.training)

    @staticmethod
    def _auto_class(transformers, config, trust: bool):
        names = ("AutoModelForVision2Seq", "AutoModelForImageTextToText", "AutoModel")
        for name in names:
            auto = getattr(transformers, name, None)
            if auto is None:
                continue
            if trust and name in (getattr(config, "auto_map", None) or {}):
                return auto
            if not trust and type(config) in auto._model_mapping:
                return auto
        raise OpenVLAError(f"no transformers Auto class loads {type(config).__name__} (tried {', '.join(names)})")

    def _ensure(self):
        if self._model is None:
            self._load()
        return self._model

    def _core(self):
        """The underlying HF model (inside peft's wrapper, with LoRA layers injected when enabled)."""
        m = self._ensure()
        return m.get_base_model() if hasattr(m, "get_base_model") else m

    # --- nn.Module plumbing that must see the lazily loaded weights ------------
    def to(self, *args: Any, **kwargs: Any) -> "OpenVLAPolicy":
        device, dtype, _, _ = torch._C._nn._parse_to(*args, **kwargs)
        if device is not None:
            self._device = torch.device(device)
            if self._device.type == "cuda" and self._device.index is None:
                self._device = torch.device("cuda", torch.cuda.current_device())
        if dtype is not None:
            self.dtype_name = str(dtype).replace("torch.", "")
        if self._model is not None:
            self._model.to(device=self._device, dtype=dtype) if dtype is not None else self._model.to(self._device)
        return self

    def cuda(self, device: Any = None) -> "OpenVLAPolicy":
        return self.to("cuda" if device is None else device)

    def cpu(self) -> "OpenVLAPolicy":
        return self.to("cpu")

    @property
    def device(self) -> torch.device:
        return self._device

    def train(self, mode: bool = True) -> "OpenVLAPolicy":
        self.training = mode
        if self._model is not None:
            self._model.train(mode)
        return self

    def parameters(self, recurse: bool = True) -> Iterator[torch.nn.Parameter]:
        self._ensure()
        return super().parameters(recurse)

    def named_parameters(self, *args: Any, **kwargs: Any):
        self._ensure()
        return super().named_parameters(*args, **kwargs)

    def state_dict(self, *args: Any, **kwargs: Any):
        """With LoRA on: the adapter's tensors only, keyed ``lora.NAME`` (the frozen base is in its
        files; a 7 B state dict would be 15 GB per copy); else the whole module's state dict."""
        self._ensure()
        if self._lora_on:
            from peft import get_peft_model_state_dict

            return {LORA_STATE_PREFIX + k: v for k, v in get_peft_model_state_dict(self._model, save_embedding_layers=False).items()}
        return super().state_dict(*args, **kwargs)

    def load_state_dict(self, state_dict: Dict[str, Any], strict: bool = True, assign: bool = False):
        """Accepts :meth:`state_dict`'s output: adapter tensors (switching LoRA on) or a full state dict."""
        keys = list(state_dict)
        if not keys or not all(k.startswith(LORA_STATE_PREFIX) for k in keys):
            self._ensure()
            return super().load_state_dict(state_dict, strict=strict)
        from peft import set_peft_model_state_dict

        self.enable_lora()
        want = {k[len(LORA_STATE_PREFIX):]: v for k, v in state_dict.items()}
        from peft import get_peft_model_state_dict

        have = set(get_peft_model_state_dict(self._model, save_embedding_layers=False))
        missing, unexpected = sorted(have - set(want)), sorted(set(want) - have)
        if strict and (missing or unexpected):
            raise OpenVLAError(f"adapter state does not match this policy's LoRA layers: {len(missing)} missing "
                               f"({missing[:3]}), {len(unexpected)} unexpected ({unexpected[:3]})")
        set_peft_model_state_dict(self._model, want)
        return torch.nn.modules.module._IncompatibleKeys(missing, unexpected)

    @property
    def text_tokenizer(self):
        self._ensure()
        return self._text_tokenizer

    # --- LoRA -------------------------------------------------------------------
    def enable_lora(self, settings: Optional[LoRASettings] = None, *, rank: Optional[int] = None,
                    alpha: Optional[float] = None, dropout: Optional[float] = None) -> None:
        """Wrap the model with peft LoRA adapters (default: rank 32 on :func:`all_linear_targets`); idempotent.

        ``rank``/``alpha``/``dropout`` override the policy's settings (``vla-forget adapt --lora-rank``);
        asking for other settings once LoRA is on is an error."""
        want = copy.deepcopy(settings) if settings is not None else copy.deepcopy(self.lora)
        if rank is not None:
            want.rank = int(rank)
        if alpha is not None:
            want.alpha = float(alpha)
        if dropout is not None:
            want.dropout = float(dropout)
        if self._lora_on:
            if asdict(want) != asdict(self.lora):
                raise OpenVLAError(f"LoRA is already on with {asdict(self.lora)}; cannot switch to {asdict(want)}")
            self._ensure()
            return
        self.lora = want
        model = self._ensure()
        from peft import get_peft_model

        self._model = get_peft_model(model, self.lora.peft_config(model))
        self._model.to(self._device)
        self._model.train(self.training)
        self._lora_on = True

    @property
    def lora_enabled(self) -> bool:
        return self._lora_on

    def trainable_parameters(self) -> List[torch.nn.Parameter]:
        """The LoRA parameters (LoRA is switched on at the first call: adaptation trains adapters, not 7 B weights)."""
        self.enable_lora()
        return [p for p in self._model.parameters() if p.requires_grad]

    def num_parameters(self, trainable: bool = False) -> int:
        params = self.trainable_parameters() if trainable else list(self.parameters())
        return sum(p.numel() for p in params)

    # --- inputs -------------------------------------------------------------------
    def prompt_ids(self, instruction: str) -> List[int]:
        """Token ids of the prompt for one instruction: ``<s>`` ... ``Out:`` ``▁`` in OpenVLA's style, ``<s>``
        instruction ``▁`` in the bare style (``predict_action`` appends ``▁`` to either); cached."""
        ids = self._prompt_cache.get(instruction)
        if ids is None:
            tok = self.text_tokenizer
            text = (PROMPT.format(instruction=instruction.strip().lower()) if self.prompt_style == "openvla"
                    else PROMPTS[self.prompt_style].format(instruction=instruction))
            ids = list(tok(text).input_ids)
            space = tok.convert_tokens_to_ids(SPACE_PIECE)
            if space is not None and space != tok.unk_token_id and ids[-1] != space:
                ids.append(int(space))
            if len(self._prompt_cache) > 4096:
                self._prompt_cache.clear()
            self._prompt_cache[instruction] = ids
        return ids

    def pixel_values(self, obs: Observation) -> torch.Tensor:
        if obs.image is None:
            raise ValueError("OpenVLA needs camera images (Observation.image is None)")
        if len(obs.instruction) != obs.batch_size:
            raise ValueError(f"{len(obs.instruction)} instructions for a batch of {obs.batch_size}")
        dtype = self._core().get_input_embeddings().weight.dtype  # the base's dtype (LoRA weights may be float32)
        return self.image_processor(obs.image.to(self._device), dtype)

    def _token_ids(self, bins: torch.Tensor) -> torch.Tensor:
        """Bin indices -> vocabulary ids ``vocab_size - 1 - b``."""
        return self.action_vocab_size - 1 - bins

    def _action_slice(self, logits: torch.Tensor) -> torch.Tensor:
        """Vocabulary logits ``[..., V]`` -> bin logits ``[..., 256]`` (bin b = id vocab_size - 1 - b)."""
        V = self.action_vocab_size
        return logits[..., V - self.n_bins:V].flip(-1)

    def _use_fast_path(self) -> bool:
        if self.fast_path is not None:
            return self.fast_path
        core = self._core()
        return all(hasattr(core, a) for a in ("vision_backbone", "projector", "language_model"))

    def _embed(self, ids: torch.Tensor, pixel_values: torch.Tensor) -> Tuple[torch.Tensor, int]:
        """Prismatic's multimodal embedding: ``<s>``, projected patches, the rest of the ids."""
        core = self._core()
        emb = core.get_input_embeddings()(ids)
        patches = core.projector(core.vision_backbone(pixel_values))
        return torch.cat([emb[:, :1], patches.to(emb.dtype), emb[:, 1:]], dim=1), int(patches.shape[1])

    def _forward(self, ids: torch.Tensor, pixel_values: torch.Tensor, positions: torch.Tensor,
                 want_hidden: bool) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """Vocabulary logits ``[B, P, V]`` at text positions ``positions`` ``[B, P]`` (and hidden states there)."""
        B = ids.shape[0]
        rows = torch.arange(B, device=ids.device).unsqueeze(1)
        if self._use_fast_path():
            core = self._core()
            embeds, n_patches = self._embed(ids, pixel_values)
            hidden = core.language_model.get_decoder()(inputs_embeds=embeds, use_cache=False, return_dict=True).last_hidden_state
            h = hidden[rows, positions + n_patches]
            logits = core.language_model.get_output_embeddings()(h)
            return logits, (h if want_hidden else None)
        out = self._ensure()(input_ids=ids, pixel_values=pixel_values, output_hidden_states=want_hidden, return_dict=True)
        n_patches = out.logits.shape[1] - ids.shape[1]
        logits = out.logits[rows, positions + n_patches]
        h = out.hidden_states[-1][rows, positions + n_patches] if want_hidden else None
        return logits, h

    def _batch(self, obs: Observation, tokens: Optional[torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Right-padded ids ``[B, T]`` (prompt + ``tokens[:, :6]`` as vocabulary ids), pixel values and
        the text positions of the 7 predictions ``[B, 7]`` (only the last prompt position without tokens)."""
        prompts = [self.prompt_ids(s) for s in obs.instruction]
        lengths = torch.tensor([len(p) for p in prompts], device=self._device)
        A = self.action_dim
        extra = A - 1 if tokens is not None else 0
        T = int(lengths.max()) + extra
        pad = self.text_tokenizer.pad_token_id
        ids = torch.full((len(prompts), T), int(pad if pad is not None else 0), dtype=torch.long, device=self._device)
        for i, p in enumerate(prompts):
            ids[i, : len(p)] = torch.tensor(p, dtype=torch.long, device=self._device)
        if tokens is not None:
            cols = lengths.unsqueeze(1) + torch.arange(extra, device=self._device)
            ids.scatter_(1, cols, self._token_ids(tokens[:, :extra].to(self._device).long()))
            positions = lengths.unsqueeze(1) - 1 + torch.arange(A, device=self._device)
        else:
            positions = (lengths - 1).unsqueeze(1)
        return ids, self.pixel_values(obs), positions

    # --- the protocol ---------------------------------------------------------------
    def action_logits(self, obs: Observation, tokens: torch.Tensor) -> torch.Tensor:
        logits, _ = self.logits_and_features(obs, tokens, want_features=False)
        return logits

    def logits_and_features(self, obs: Observation, tokens: torch.Tensor,
                            want_features: bool = True) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """Teacher-forced bin logits ``[B, 7, 256]`` and ``features`` ``[B, F]`` from one forward pass."""
        if tokens.shape != (obs.batch_size, self.action_dim):
            raise ValueError(f"tokens must be [B, {self.action_dim}], got {tuple(tokens.shape)}")
        ids, pv, positions = self._batch(obs, tokens)
        logits, h = self._forward(ids, pv, positions, want_features)
        feats = h[:, 0].float() if h is not None else None
        return self._action_slice(logits), feats

    def features(self, obs: Observation) -> torch.Tensor:
        """Last hidden state at the last prompt position, ``[B, hidden_size]`` float32."""
        ids, pv, positions = self._batch(obs, None)
        _, h = self._forward(ids, pv, positions, True)
        return h[:, 0].float()

    @property
    def feature_dim(self) -> int:
        """The LM's hidden size: from ``text_config`` when it says, else from the shape of the token embedding in
        the weight files' headers (OpenVLA-7B's ``text_config`` is stored as a diff from Llama-2's defaults,
        without ``hidden_size``): no weights are loaded either way."""
        if not self.hidden_size:
            self.hidden_size = embedding_width(self.folder) or 0
        if self.hidden_size:
            return self.hidden_size
        core = self._core()
        return int(core.get_input_embeddings().weight.shape[1])

    def decode_actions(self, tokens: torch.Tensor) -> torch.Tensor:
        actions = self.tokenizer.decode(tokens.detach().cpu().numpy())
        return torch.as_tensor(actions, dtype=torch.float32, device=self._device)

    @torch.no_grad()
    def sample_tokens(
        self,
        obs: Observation,
        *,
        temperature: float = 1.0,
        greedy: bool = False,
        generator: Optional[torch.Generator] = None,
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """Autoregressive sampling with the key/value cache, one prefix pass per prompt length."""
        if not self._use_fast_path():
            return super().sample_tokens(obs, temperature=temperature, greedy=greedy, generator=generator)
        core = self._core()
        decoder = core.language_model.get_decoder()
        head = core.language_model.get_output_embeddings()
        embed = core.get_input_embeddings()
        B, A = obs.batch_size, self.action_dim
        cache_arg = _cache_argument(decoder)
        prompts = [self.prompt_ids(s) for s in obs.instruction]
        pv = self.pixel_values(obs)
        tokens = torch.zeros(B, A, dtype=torch.long, device=self._device)
        logits_out = torch.zeros(B, A, self.n_bins, dtype=torch.float32, device=self._device)
        groups: Dict[int, List[int]] = {}
        for i, p in enumerate(prompts):
            groups.setdefault(len(p), []).append(i)
        for length, rows in groups.items():
            idx = torch.tensor(rows, device=self._device)
            ids = torch.tensor([prompts[i] for i in rows], dtype=torch.long, device=self._device)
            embeds, _ = self._embed(ids, pv[idx])
            out = decoder(inputs_embeds=embeds, use_cache=True, return_dict=True)
            past, h = _cache_of(out), out.last_hidden_state[:, -1]
            for j in range(A):
                lg = self._action_slice(head(h)).float()
                logits_out[idx, j] = lg
                tok = pick_tokens(lg, temperature=temperature, greedy=greedy, generator=generator,
                                  ties_to_high_bins=True)
                tokens[idx, j] = tok
                if j + 1 < A:
                    e = embed(self._token_ids(tok)).unsqueeze(1)
                    out = decoder(inputs_embeds=e, use_cache=True, return_dict=True, **{cache_arg: past})
                    past, h = _cache_of(out), out.last_hidden_state[:, -1]
        return tokens, logits_out

    # --- checkpoints ----------------------------------------------------------------
    def _adapter_state(self) -> Optional[Dict[str, torch.Tensor]]:
        if self._model is not None and self._lora_on:
            from peft import get_peft_model_state_dict

            return get_peft_model_state_dict(self._model, save_embedding_layers=False)
        if self.adapter_dir is not None:
            from safetensors.torch import load_file

            return load_file(os.path.join(self.adapter_dir, "adapter_model.safetensors"))
        return None

    def checkpoint_hash(self) -> str:
        """sha256 (16 hex) of the base's weight files, the adapter's tensors, the statistics and the prompt."""
        if self._weights_digest is None:
            self._weights_digest = weights_digest(self.folder)
        h = hashlib.sha256()
        meta = {"policy_class": POLICY_CLASS, "base_weights": self._weights_digest, "unnorm_key": self.unnorm_key,
                "action_statistics": self.action_statistics.to_dict(), "prompt": PROMPTS[self.prompt_style]}
        h.update(json.dumps(meta, sort_keys=True).encode())
        state = self._adapter_state()
        if state:
            for name, t in sorted(state.items()):
                t = t.detach().to("cpu", torch.float32).contiguous()
                h.update(f"{name}:{tuple(t.shape)}".encode())
                h.update(t.reshape(-1).numpy().tobytes())
        return h.hexdigest()[:16]

    def save(self, path: str, merged: bool = False) -> None:
        """Save the policy into the folder ``path``.

        With LoRA on (and ``merged=False``): the adapter (peft's ``adapter_config.json`` and
        ``adapter_model.safetensors``), ``config.json`` naming the base checkpoint, its weights'
        sha256 and the ``unnorm_key``, and ``dataset_statistics.json``. Otherwise (or with
        ``merged=True``): a Hugging Face checkpoint with the adapter folded into the weights,
        the base's tokenizer, processor and code files, and ``dataset_statistics.json``;
        ``load_policy(path)`` reads either.
        """
        os.makedirs(path, exist_ok=True)
        if self._lora_on and not merged:
            model = self._ensure()
            model.save_pretrained(path, save_embedding_layers=False)  # LoRA on lm_head, not a copy of it
            base = self.source if not os.path.isdir(self.source) else os.path.abspath(self.folder)
            meta = {"policy_class": POLICY_CLASS, "format_version": ADAPTER_FORMAT_VERSION, "base": base,
                    "base_fingerprint": base_fingerprint(self.folder), "unnorm_key": self.unnorm_key,
                    "lora": asdict(self.lora), "prompt": PROMPTS[self.prompt_style], "prompt_style": self.prompt_style,
                    "note": "LoRA adapter of an OpenVLA-format checkpoint: load_policy(this folder) loads base + adapter"}
            with open(os.path.join(path, "config.json"), "w") as f:
                json.dump(meta, f, indent=2)
                f.write("\n")
        else:
            self._save_full(path)
        with open(os.path.join(path, STATS_FILENAME), "w") as f:
            json.dump(self.dataset_statistics, f, indent=2)
            f.write("\n")

    def _save_full(self, path: str) -> None:
        core = self._core()
        state = self._merged_state_dict() if self._lora_on else None
        if state is None:
            core.save_pretrained(path)
        else:
            core.save_pretrained(path, state_dict=state)
        weights = {"config.json", "model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                   "pytorch_model.bin.index.json", STATS_FILENAME}
        for name in os.listdir(self.folder):
            src = os.path.join(self.folder, name)
            if name in weights or name.startswith(("model-", "pytorch_model-", "adapter_")) or not os.path.isfile(src):
                continue
            if name.endswith((".json", ".py", ".model", ".txt", ".md")):
                dst = os.path.join(path, name)
                if not os.path.exists(dst):
                    shutil.copyfile(src, dst)

    def _merged_state_dict(self) -> Dict[str, torch.Tensor]:
        """The base's state dict with every LoRA delta added (the model itself is not modified)."""
        from peft.tuners.lora import LoraLayer

        core = self._core()
        adapter = getattr(self._model, "active_adapter", "default")
        if isinstance(adapter, (list, tuple)):
            adapter = adapter[0]
        deltas: Dict[str, torch.Tensor] = {}
        for name, module in core.named_modules():
            if isinstance(module, LoraLayer) and adapter in getattr(module, "lora_A", {}):
                deltas[f"{name}.weight"] = module.get_delta_weight(adapter)
        out: Dict[str, torch.Tensor] = {}
        for key, value in core.state_dict().items():
            if ".lora_" in key or "lora_embedding" in key:
                continue
            clean = key.replace(".base_layer.", ".")
            value = value.detach()
            if clean in deltas:
                value = (value.float() + deltas[clean].float()).to(value.dtype)
            out[clean] = value.clone()
        return out


def load(spec: str, **kwargs: Any) -> OpenVLAPolicy:
    """``load_policy``'s entry point for OpenVLA specs and folders."""
    return OpenVLAPolicy.from_spec(spec, **kwargs)


def describe_action_vocabulary(policy: OpenVLAPolicy) -> Dict[str, int]:
    """Where the action tokens sit (for docs and tests): first/last id and the vocabulary sizes."""
    policy._ensure()
    V = policy.action_vocab_size
    return {"action_vocab_size": V, "first_action_id": V - N_BINS, "last_action_id": V - 1,
            "lm_head_outputs": int(policy._core().get_output_embeddings().weight.shape[0]), "action_dim": ACTION_DIM}
