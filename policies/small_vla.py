"""The small VLA: a < 10 M parameter vision-language-action policy in pure PyTorch.

It speaks OpenVLA's action format (7 tokens of 256 bins, BOUNDS_Q99
statistics chosen by ``unnorm_key``) and the :class:`TokenPolicy` protocol, so
that every adaptation method and divergence runs on it unchanged, on any CPU.

Architecture (defaults in :class:`SmallVLAConfig`)::

    instruction bytes --byte embedding, strided conv, transformer layers-->
        byte tokens --attention pooling by learned queries--> text tokens [T, d]
                                                       mean --> text vector [d]
    image uint8 [H, W, 3] --resize, normalise--> strided convs, each
        GroupNorm -> FiLM(text vector) -> ReLU, residual blocks at low
        resolution --adaptive pool--> image tokens [G*G, d]
        the 16 x 16 map --spatial softmax--> K keypoints (x, y) --MLP--> keypoint token [1, d]
    proprio state --standardise, MLP--> state token [1, d]

    memory = [image tokens; text tokens; state token]         (the prefix)
    context_layers: 7 per-dimension queries (position embeddings) attend to the
        memory and to each other -> a context c_j per action dimension; they
        never see the tokens, so they run once per observation
    decoder input j = c_j + (start token if j = 0 else embedding of bin tokens[j-1])
    n_layers causal decoder layers: one attention whose keys are the memory and
        the action positions <= j, then an MLP; logits = Linear(d, 256)

The memory never attends to the actions, so sampling encodes the observation
(memory and contexts) once and runs only the n_layers causal layers one
position at a time with a key/value cache: on one CPU thread the 7 x n_layers
sequential layer steps, not the FLOPs, set the latency.
Instructions are encoded once per *distinct* string in a batch (a batch of
envs running one task shares one encoding) — exact, and differentiable.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import os
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from vla_forget.policies.base import ACTION_DIM, N_BINS, Observation, TokenPolicy, side_by_side
from vla_forget.tokenizer import (
    STATS_FILENAME,
    ActionStatistics,
    ActionTokenizer,
    StatisticsError,
    load_dataset_statistics,
    select_statistics,
)

FORMAT_VERSION = 1
WEIGHTS_FILENAME = "model.safetensors"
CONFIG_FILENAME = "config.json"
POLICY_CLASS = "SmallVLA"
DEFAULT_UNNORM_KEY = "identity"


@dataclass
class SmallVLAConfig:
    """Hyper-parameters of :class:`SmallVLA` (pure data; saved in ``config.json``)."""

    image_size: int = 128
    """images of any size are resized to this square size before the conv net"""
    conv_channels: Tuple[int, ...] = (24, 48, 96)
    """channels of the conv stages: a stride-4 patch conv, then stride-2 convs"""
    residual_stages: int = 1
    """the last this-many conv stages get an extra residual 3x3 conv block"""
    image_grid: int = 4
    """image tokens per side: the last feature map is pooled to 2 * image_grid and 2x2 blocks are stacked into channels"""
    keypoints: int = 32
    """spatial-softmax keypoints (one more image token holding their expected x, y); 0 = none.
    Checkpoints whose config predates this field have none."""
    keypoint_stage: int = -2
    """conv stage whose feature map the keypoints read (index into conv_channels; -2: 16 x 16 at 128 px)"""
    wrist_camera: bool = False
    """read a wrist camera too: images are the front and wrist views side by side ([H, 2H, 3],
    as tasks give them with ``wrist_camera=True``); the wrist half has its own conv net"""
    wrist_image_size: int = 64
    """the wrist view is resized to this square size"""
    wrist_image_grid: int = 2
    """wrist image tokens per side (plus its keypoint token when there are keypoints)"""
    state_dim: int = 16
    """proprio state size; shorter states are zero-padded, longer ones are an error"""
    d_model: int = 128
    """width of every token (image, text, state, action)"""
    n_layers: int = 1
    """causal (autoregressive) decoder layers: run 7 times per sample"""
    context_layers: int = 3
    """decoder layers before the causal ones whose 7 queries read the observation but not the tokens (run once)"""
    heads: int = 2
    """attention heads (d_model must divide by it)"""
    ff_mult: int = 4
    """MLP hidden width = ff_mult * d_model"""
    dropout: float = 0.1
    """dropout on embeddings and residual branches (active only in train mode)"""
    max_instruction_bytes: int = 64
    """UTF-8 bytes kept per instruction (a start byte included; longer ones are truncated)"""
    text_layers: int = 2
    """transformer encoder layers over the byte tokens"""
    text_tokens: int = 8
    """learned queries that pool the instruction into this many memory tokens"""
    action_dim: int = ACTION_DIM
    """tokens per action (OpenVLA: 7)"""
    n_bins: int = N_BINS
    """bins per action dimension (OpenVLA: 256)"""

    def __post_init__(self) -> None:
        self.conv_channels = tuple(int(c) for c in self.conv_channels)
        if self.d_model % self.heads:
            raise ValueError(f"d_model={self.d_model} is not divisible by heads={self.heads}")
        if self.max_instruction_bytes < 4 or self.max_instruction_bytes % 2:
            raise ValueError(f"max_instruction_bytes must be an even number >= 4, got {self.max_instruction_bytes}")
        if not 0 <= self.residual_stages <= len(self.conv_channels):
            raise ValueError(f"residual_stages={self.residual_stages} must be in 0..{len(self.conv_channels)}")
        if self.keypoints < 0:
            raise ValueError(f"keypoints must be >= 0, got {self.keypoints}")
        if not -len(self.conv_channels) <= self.keypoint_stage < len(self.conv_channels):
            raise ValueError(f"keypoint_stage={self.keypoint_stage} is not a conv stage (there are {len(self.conv_channels)})")

    @property
    def image_tokens(self) -> int:
        """image tokens in the memory: the pooled grid, plus the keypoint token when there are keypoints"""
        front = self.image_grid**2 + (1 if self.keypoints else 0)
        wrist = self.wrist_image_grid**2 + (1 if self.keypoints else 0) if self.wrist_camera else 0
        return front + wrist

    def to_dict(self) -> Dict[str, Any]:
        d = dataclasses.asdict(self)
        d["conv_channels"] = list(self.conv_channels)
        return d

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "SmallVLAConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown SmallVLA config fields: {', '.join(unknown)} (known: {', '.join(sorted(known))})")
        d = dict(d)
        d.setdefault("keypoints", 0)  # configs written before keypoints existed had none
        return cls(**d)


def default_statistics() -> ActionStatistics:
    """Identity statistics: q01 = -1, q99 = 1 on the motion dims, gripper passed through."""
    return ActionStatistics(q01=-np.ones(ACTION_DIM), q99=np.ones(ACTION_DIM), mask=np.array([True] * 6 + [False]))


# --------------------------------------------------------------------------
# building blocks
# --------------------------------------------------------------------------
def _split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    B, T, D = x.shape
    return x.view(B, T, heads, D // heads).transpose(1, 2)


def _merge_heads(x: torch.Tensor) -> torch.Tensor:
    B, H, T, Dh = x.shape
    return x.transpose(1, 2).reshape(B, T, H * Dh)


class Dense(nn.Module):
    """``x @ weight + bias`` with ``weight`` stored ``[in, out]``, so that the cached decoding
    step multiplies by a contiguous matrix with ``addmm`` and no per-call transposes."""

    def __init__(self, d_in: int, d_out: int, bias: bool = True):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(d_in, d_out))
        self.bias = nn.Parameter(torch.zeros(d_out)) if bias else None
        nn.init.normal_(self.weight, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.matmul(x, self.weight)
        return y if self.bias is None else y + self.bias


class MLP(nn.Sequential):
    def __init__(self, d: int, mult: int, dropout: float):
        super().__init__(nn.Linear(d, mult * d), nn.GELU(), nn.Linear(mult * d, d), nn.Dropout(dropout))


class EncoderLayer(nn.Module):
    """Pre-norm self-attention layer with a key-padding mask (the text encoder)."""

    def __init__(self, d: int, heads: int, ff_mult: int, dropout: float):
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d)
        self.out = nn.Linear(d, d)
        self.drop = nn.Dropout(dropout)
        self.mlp = MLP(d, ff_mult, dropout)

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor) -> torch.Tensor:
        q, k, v = (_split_heads(t, self.heads) for t in self.qkv(self.ln1(x)).chunk(3, dim=-1))
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask[:, None, None, :])
        x = x + self.drop(self.out(_merge_heads(a)))
        return x + self.mlp(self.ln2(x))


class AttentionPool(nn.Module):
    """Learned queries cross-attend to a padded sequence: a fixed number of tokens out."""

    def __init__(self, n_queries: int, d: int, heads: int, ff_mult: int, dropout: float):
        super().__init__()
        self.heads = heads
        self.queries = nn.Parameter(torch.randn(n_queries, d) * 0.02)
        self.ln_kv, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.q = nn.Linear(d, d)
        self.kv = nn.Linear(d, 2 * d)
        self.out = nn.Linear(d, d)
        self.mlp = MLP(d, ff_mult, dropout)

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor) -> torch.Tensor:
        B = x.shape[0]
        queries = self.queries.unsqueeze(0).expand(B, -1, -1)
        q = _split_heads(self.q(queries), self.heads)
        k, v = (_split_heads(t, self.heads) for t in self.kv(self.ln_kv(x)).chunk(2, dim=-1))
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask[:, None, None, :])
        h = queries + self.out(_merge_heads(a))
        return h + self.mlp(self.ln2(h))


class TextEncoder(nn.Module):
    """UTF-8 bytes -> ``text_tokens`` memory tokens and a pooled vector (no external tokenizer)."""

    PAD, BOS = 0, 257  # byte b is id b + 1

    def __init__(self, cfg: SmallVLAConfig):
        super().__init__()
        d = cfg.d_model
        self.max_len = cfg.max_instruction_bytes
        self.byte_emb = nn.Embedding(258, d, padding_idx=self.PAD)
        self.pos = nn.Parameter(torch.randn(self.max_len, d) * 0.02)
        # kernel 4, stride 2: each token sees a 4-byte window, half as many tokens
        self.down = nn.Conv1d(d, d, kernel_size=4, stride=2, padding=1)
        self.layers = nn.ModuleList(EncoderLayer(d, cfg.heads, cfg.ff_mult, cfg.dropout) for _ in range(cfg.text_layers))
        self.pool = AttentionPool(cfg.text_tokens, d, cfg.heads, cfg.ff_mult, cfg.dropout)
        self.ln_out = nn.LayerNorm(d)

    def byte_ids(self, instructions: Sequence[str], device: torch.device) -> Tuple[torch.Tensor, torch.Tensor]:
        ids = np.zeros((len(instructions), self.max_len), dtype=np.int64)
        lengths = np.zeros(len(instructions), dtype=np.int64)
        for i, text in enumerate(instructions):
            raw = text.strip().lower().encode("utf-8")[: self.max_len - 1]
            ids[i, 0] = self.BOS
            ids[i, 1 : 1 + len(raw)] = np.frombuffer(raw, dtype=np.uint8).astype(np.int64) + 1
            lengths[i] = 1 + len(raw)
        return torch.from_numpy(ids).to(device), torch.from_numpy(lengths).to(device)

    def forward(self, instructions: Sequence[str], device: torch.device) -> Tuple[torch.Tensor, torch.Tensor]:
        """Returns text tokens ``[U, T, d]`` and the pooled text vector ``[U, d]``."""
        ids, lengths = self.byte_ids(instructions, device)
        valid = ids != self.PAD
        x = (self.byte_emb(ids) + self.pos) * valid.unsqueeze(-1)
        x = F.gelu(self.down(x.transpose(1, 2))).transpose(1, 2)  # [U, L/2, d]
        # down-sampled token i covers bytes 2i-1 .. 2i+2: valid while it starts inside the text
        key_mask = 2 * torch.arange(x.shape[1], device=device).unsqueeze(0) < lengths.unsqueeze(1)
        for layer in self.layers:
            x = layer(x, key_mask)
        tokens = self.ln_out(self.pool(x, key_mask))
        return tokens, tokens.mean(dim=1)


class ConvBlock(nn.Module):
    """Conv -> GroupNorm (no affine) -> FiLM -> ReLU; FiLM's bias is the block's per-channel affine."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, padding: int):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride, padding=padding, bias=False)
        self.groups = max(1, min(8, cout // 8))

    def forward(self, x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
        h = F.group_norm(self.conv(x), self.groups)
        return torch.addcmul(shift[:, :, None, None], h, scale[:, :, None, None]).relu_()


@functools.lru_cache(maxsize=8)
def _pixel_centres(H: int, W: int, device: torch.device) -> torch.Tensor:
    """(x, y) of each pixel centre of an ``H x W`` map in [-1, 1], row-major ``[H*W, 2]`` (built once per size)."""
    ys = torch.linspace(-1.0 + 1.0 / H, 1.0 - 1.0 / H, H, device=device)
    xs = torch.linspace(-1.0 + 1.0 / W, 1.0 - 1.0 / W, W, device=device)
    return torch.stack(torch.meshgrid(xs, ys, indexing="xy"), dim=-1).reshape(H * W, 2)


class SpatialSoftmax(nn.Module):
    """Keypoints from a feature map, as in visuomotor policy learning (Levine et al. 2016) and
    robomimic's image encoders: a 1x1 conv makes K heat maps, a softmax over each map's pixels
    gives a distribution whose expected (x, y) in [-1, 1] is keypoint k. Sub-cell precise,
    so a cube a few pixels wide is located to well under a feature cell. An MLP turns the
    2K coordinates into one memory token."""

    def __init__(self, cin: int, keypoints: int, d: int):
        super().__init__()
        self.conv = nn.Conv2d(cin, keypoints, 1)
        self.log_temperature = nn.Parameter(torch.zeros(()))
        self.proj = nn.Sequential(nn.Linear(2 * keypoints, d), nn.GELU(), nn.Linear(d, d))
        self.ln = nn.LayerNorm(d)

    def coordinates(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, C, H, W]`` -> expected keypoint positions ``[B, K, 2]`` (x, y in [-1, 1], pixel centres)."""
        B, C, H, W = x.shape
        # the 1x1 conv as one matmul over the channels-last pixels (conv2d's 1x1 CPU path is slow)
        pixels = x.permute(0, 2, 3, 1).reshape(B, H * W, C)
        weight = self.conv.weight.view(-1, C)
        logits = torch.addmm(self.conv.bias, pixels.reshape(-1, C), weight.t()).view(B, H * W, -1).transpose(1, 2)
        attn = torch.softmax(logits / self.log_temperature.exp(), dim=-1)  # [B, K, H*W]
        return attn @ _pixel_centres(H, W, x.device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ln(self.proj(self.coordinates(x).flatten(1)))


class ImageEncoder(nn.Module):
    """uint8 images -> ``image_grid ** 2`` tokens (plus a keypoint token), every conv block FiLM-conditioned on the instruction.

    A 4x4 stride-4 patch conv, then 3x3 stride-2 convs (128 px: 32 -> 16 -> 8), residual
    3x3 blocks on the last ``residual_stages`` stages; each 2x2 block of the final 8x8 map
    becomes one token (space-to-depth), so 16 tokens keep the 8x8 map's spatial detail.
    """

    def __init__(self, cfg: SmallVLAConfig, size: Optional[int] = None, grid: Optional[int] = None):
        super().__init__()
        self.size = int(size or cfg.image_size)
        self.grid = int(grid or cfg.image_grid)
        chans = cfg.conv_channels
        self.blocks = nn.ModuleList()
        self.residual = nn.ModuleDict()
        cin = 3
        for i, c in enumerate(chans):
            self.blocks.append(ConvBlock(cin, c, 4, 4, 0) if i == 0 else ConvBlock(cin, c, 3, 2, 1))
            if i >= len(chans) - cfg.residual_stages:
                self.residual[str(i)] = ConvBlock(c, c, 3, 1, 1)
            cin = c
        self.film_sizes = [c for i, c in enumerate(chans) for _ in range(1 + (str(i) in self.residual))]
        # FiLM: (scale, shift) per channel of every block from the text vector; at init the
        # weight is zero and the bias gives scale 1, shift 0 (plain GroupNorm + ReLU)
        self.film = nn.Linear(cfg.d_model, 2 * sum(self.film_sizes))
        self.proj = nn.Linear(4 * chans[-1], cfg.d_model)
        self.pos = nn.Parameter(torch.randn(self.grid**2, cfg.d_model) * 0.02)
        self.ln_out = nn.LayerNorm(cfg.d_model)
        self.keypoint_stage = cfg.keypoint_stage % len(chans)
        self.keypoints = SpatialSoftmax(chans[self.keypoint_stage], cfg.keypoints, cfg.d_model) if cfg.keypoints else None
        self.reset_film()

    def reset_film(self) -> None:
        nn.init.zeros_(self.film.weight)
        with torch.no_grad():
            self.film.bias.zero_()
            k = 0
            for c in self.film_sizes:
                self.film.bias[k : k + c] = 1.0
                k += 2 * c

    def preprocess(self, image: torch.Tensor) -> torch.Tensor:
        """uint8 ``[B, H, W, 3]`` -> float ``[B, 3, S, S]`` (channels-last memory), about zero mean, unit scale."""
        if image.ndim != 4 or image.shape[-1] != 3:
            raise ValueError(f"SmallVLA expects images as uint8 [B, H, W, 3], got shape {tuple(image.shape)}")
        if image.dtype != torch.uint8:
            raise ValueError(f"SmallVLA expects uint8 images (0..255), got {image.dtype}")
        x = image.float().mul_(4.0 / 255.0).sub_(2.0).permute(0, 3, 1, 2)  # (x / 255 - 0.5) / 0.25
        if x.shape[-2:] != (self.size, self.size):
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", antialias=True, align_corners=False)
        return x.contiguous(memory_format=torch.channels_last)

    def forward(self, image: torch.Tensor, text_vec: torch.Tensor) -> torch.Tensor:
        x = self.preprocess(image)
        film = self.film(text_vec).split([2 * c for c in self.film_sizes], dim=-1)
        k = 0
        keypoint_token = None
        for i, block in enumerate(self.blocks):
            x = block(x, *film[k].chunk(2, dim=-1))
            k += 1
            if str(i) in self.residual:
                x = x + self.residual[str(i)](x, *film[k].chunk(2, dim=-1))
                k += 1
            if self.keypoints is not None and i == self.keypoint_stage:
                keypoint_token = self.keypoints(x).unsqueeze(1)
        if x.shape[-1] != 2 * self.grid:
            x = F.adaptive_avg_pool2d(x, 2 * self.grid)
        x = F.pixel_unshuffle(x, 2).flatten(2).transpose(1, 2)  # [B, G*G, 4 C]: no detail averaged away
        tokens = self.ln_out(self.proj(x) + self.pos)
        return tokens if keypoint_token is None else torch.cat([tokens, keypoint_token], dim=1)


class DecoderLayer(nn.Module):
    """Pre-norm layer: one attention over [memory; causal action positions], then an MLP.

    Bias-free projections (except the MLP's first), so that the cached single-position
    step is a handful of ``mm``/``addmm`` calls.
    """

    def __init__(self, d: int, heads: int, ff_mult: int, dropout: float):
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv = Dense(d, 3 * d, bias=False)
        self.mem_kv = Dense(d, 2 * d, bias=False)
        self.out = Dense(d, d, bias=False)
        self.fc1 = Dense(d, ff_mult * d)
        self.fc2 = Dense(ff_mult * d, d, bias=False)
        self.drop = nn.Dropout(dropout)

    def memory_kv(self, memory: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        k, v = self.mem_kv(memory).chunk(2, dim=-1)
        return _split_heads(k, self.heads), _split_heads(v, self.heads)

    def forward(self, x: torch.Tensor, mem_k: torch.Tensor, mem_v: torch.Tensor, mask: Optional[torch.Tensor]) -> torch.Tensor:
        """All 7 positions ``x`` ``[B, 7, d]``; ``mask`` ``[7, P + 7]`` (causal on the actions) or None (full)."""
        q, k, v = (_split_heads(t, self.heads) for t in self.qkv(self.ln1(x)).chunk(3, dim=-1))
        a = F.scaled_dot_product_attention(q, torch.cat([mem_k, k], 2), torch.cat([mem_v, v], 2), attn_mask=mask)
        x = x + self.drop(self.out(_merge_heads(a)))
        h = F.gelu(self.fc1(self.ln2(x)), approximate="tanh")
        return x + self.drop(self.fc2(h))

    def step(self, x: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, pos: int, mask: torch.Tensor) -> torch.Tensor:
        """One position ``x`` ``[B, d]`` (eval only); the caches ``[B, h, P + 7, dh]`` hold the
        memory and earlier positions, and get this position's key and value at ``pos``; ``mask``
        (additive, ``-inf`` after ``pos``) hides the later slots (faster than slicing the caches)."""
        B, d = x.shape
        qkv = torch.mm(F.layer_norm(x, (d,), self.ln1.weight, self.ln1.bias), self.qkv.weight).view(B, 3, self.heads, d // self.heads)
        k_cache[:, :, pos] = qkv[:, 1]
        v_cache[:, :, pos] = qkv[:, 2]
        a = F.scaled_dot_product_attention(qkv[:, 0].unsqueeze(2), k_cache, v_cache, attn_mask=mask)
        x = torch.addmm(x, a.reshape(B, d), self.out.weight)
        h = F.gelu(torch.addmm(self.fc1.bias, F.layer_norm(x, (d,), self.ln2.weight, self.ln2.bias), self.fc1.weight), approximate="tanh")
        return torch.addmm(x, h, self.fc2.weight)


# --------------------------------------------------------------------------
# the policy
# --------------------------------------------------------------------------
class SmallVLA(TokenPolicy):
    """A small FiLM-conv + byte-transformer + autoregressive-decoder VLA (see the module docstring)."""

    def __init__(
        self,
        config: Optional[SmallVLAConfig] = None,
        statistics: Optional[Dict[str, Dict[str, Any]]] = None,
        unnorm_key: Optional[str] = None,
    ):
        super().__init__()
        cfg = config or SmallVLAConfig()
        self.config = cfg
        self.action_dim = cfg.action_dim
        self.n_bins = cfg.n_bins
        d = cfg.d_model

        self.text = TextEncoder(cfg)
        self.image = ImageEncoder(cfg)
        #: the wrist view's own conv net (None without a wrist camera)
        self.wrist = ImageEncoder(cfg, cfg.wrist_image_size, cfg.wrist_image_grid) if cfg.wrist_camera else None
        self.register_buffer("state_mean", torch.zeros(cfg.state_dim))
        self.register_buffer("state_std", torch.ones(cfg.state_dim))
        self.state_mlp = nn.Sequential(nn.Linear(cfg.state_dim, d), nn.GELU(), nn.Linear(d, d), nn.LayerNorm(d))
        self.memory_type = nn.Parameter(torch.randn(3, d) * 0.02)  # image / text / state

        self.start = nn.Parameter(torch.randn(d) * 0.02)
        self.bin_emb = nn.Embedding(cfg.n_bins, d)
        self.bin_value = nn.Linear(1, d)  # neighbouring bins start close: a feature of the bin's value
        self.dim_pos = nn.Parameter(torch.randn(cfg.action_dim, d) * 0.02)
        self.emb_drop = nn.Dropout(cfg.dropout)
        self.context = nn.ModuleList(DecoderLayer(d, cfg.heads, cfg.ff_mult, cfg.dropout) for _ in range(cfg.context_layers))
        self.layers = nn.ModuleList(DecoderLayer(d, cfg.heads, cfg.ff_mult, cfg.dropout) for _ in range(cfg.n_layers))
        self.ln_f = nn.LayerNorm(d)
        self.head = Dense(d, cfg.n_bins)
        self.register_buffer("bin_values", torch.linspace(-1.0, 1.0, cfg.n_bins).unsqueeze(-1), persistent=False)
        self.n_memory = cfg.image_tokens + cfg.text_tokens + 1
        #: cache instruction encodings in eval mode without gradients (see :meth:`clear_caches`)
        self.cache_instructions = True
        self.clear_caches()

        # conv weights in the memory layout of the channels-last activations (no per-call reorder)
        self.image.to(memory_format=torch.channels_last)
        if self.wrist is not None:
            self.wrist.to(memory_format=torch.channels_last)
        self.set_statistics(statistics or {DEFAULT_UNNORM_KEY: {"action": default_statistics().to_dict()}}, unnorm_key)

    @property
    def wrist_camera(self) -> bool:  # type: ignore[override]
        return bool(self.config.wrist_camera)

    @property
    def input_image_size(self) -> int:  # type: ignore[override]
        """The front camera size it was trained on (its config's ``image_size``)."""
        return int(self.config.image_size)

    # --- construction -----------------------------------------------------
    def _init_weights(self, generator: torch.Generator) -> None:
        """GPT-style init from ``generator``: normal(0.02) linears and embeddings, zero biases,
        residual output projections scaled by 1/sqrt(2 * decoder depth), FiLM at the identity."""
        resid_std = 0.02 / math.sqrt(2 * (self.config.n_layers + self.config.context_layers))
        for name, module in self.named_modules():
            if isinstance(module, (nn.Linear, nn.Embedding, Dense)):
                std = resid_std if name.endswith(("out", "fc2", "mlp.2")) else 0.02
                with torch.no_grad():
                    module.weight.normal_(0.0, std, generator=generator)
                if isinstance(module, (nn.Linear, Dense)) and module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, (nn.Conv1d, nn.Conv2d)):
                fan_in = module.weight[0].numel()
                with torch.no_grad():
                    module.weight.normal_(0.0, math.sqrt(2.0 / fan_in), generator=generator)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        for p_name, p in self.named_parameters():
            if p_name in ("start", "dim_pos", "memory_type", "text.pos", "text.pool.queries", "image.pos", "wrist.pos"):
                with torch.no_grad():
                    p.normal_(0.0, 0.02, generator=generator)
        self.image.reset_film()
        if self.wrist is not None:
            self.wrist.reset_film()
        with torch.no_grad():
            self.text.byte_emb.weight[TextEncoder.PAD].zero_()

    @classmethod
    def random_init(cls, seed: int = 0, **config_overrides: Any) -> "SmallVLA":
        """A deterministic random initialisation (same seed, same weights on every machine), in eval mode."""
        model = cls(SmallVLAConfig(**config_overrides))
        model._init_weights(torch.Generator().manual_seed(int(seed)))
        return model.eval()

    def set_statistics(self, statistics: Dict[str, Dict[str, Any]], unnorm_key: Optional[str] = None) -> None:
        """Set the action statistics (OpenVLA's ``{unnorm_key: {"action": {...}}}``) and pick one by ``unnorm_key``."""
        stats = select_statistics(statistics, unnorm_key, where="SmallVLA statistics")
        if stats.dim != self.action_dim:
            raise StatisticsError(f"action statistics have {stats.dim} dimensions, the policy has {self.action_dim}")
        self.dataset_statistics = json.loads(json.dumps(statistics))
        self.unnorm_key = unnorm_key if unnorm_key is not None else next(iter(statistics))
        self.action_statistics = stats
        self.tokenizer = ActionTokenizer(stats, n_bins=self.n_bins)

    def set_state_statistics(self, mean: Any, std: Any) -> None:
        """Standardise proprio states with these (e.g. the demonstrations' mean and std); saved with the weights."""
        mean = torch.as_tensor(np.asarray(mean, dtype=np.float32)).flatten()
        std = torch.as_tensor(np.asarray(std, dtype=np.float32)).flatten().clamp_min(1e-6)
        n = min(len(mean), self.config.state_dim)
        self.state_mean.zero_()
        self.state_std.fill_(1.0)
        self.state_mean[:n] = mean[:n].to(self.state_mean.device)
        self.state_std[:n] = std[:n].to(self.state_std.device)

    # --- encoding ---------------------------------------------------------
    def _state(self, state: torch.Tensor) -> torch.Tensor:
        S = self.config.state_dim
        state = state.to(device=self.state_mean.device, dtype=torch.float32)
        if state.ndim != 2:
            raise ValueError(f"SmallVLA expects states [B, S], got shape {tuple(state.shape)}")
        if state.shape[1] > S:
            raise ValueError(f"state has {state.shape[1]} dimensions but the policy's state_dim is {S}; make it with state_dim={state.shape[1]}")
        if state.shape[1] < S:
            state = F.pad(state, (0, S - state.shape[1]))
        return (state - self.state_mean) / self.state_std

    def train(self, mode: bool = True) -> "SmallVLA":
        self.clear_caches()
        return super().train(mode)

    def clear_caches(self) -> None:
        """Forget cached instruction encodings. Needed only after editing weights in place through
        ``.data`` in eval mode (autograd's version counters do not see that); optimiser steps,
        ``load_state_dict``, ``train()``/``eval()`` and ``.to()`` invalidate the cache by themselves."""
        self._text_cache: Dict[str, Tuple[torch.Tensor, torch.Tensor]] = {}
        self._text_cache_key: Optional[tuple] = None

    def _encode_text(self, names: List[str]) -> Tuple[torch.Tensor, torch.Tensor]:
        """The text encoder on distinct strings; in eval mode without gradients, results are
        cached per string while the text encoder's weights stay unchanged."""
        device = self.start.device
        if self.training or torch.is_grad_enabled() or not self.cache_instructions:
            return self.text(names, device)
        key = tuple((p.data_ptr(), p._version) for p in self.text.parameters())
        if key != self._text_cache_key or len(self._text_cache) > 256:
            self._text_cache, self._text_cache_key = {}, key
        todo = [n for n in names if n not in self._text_cache]
        if todo:
            tokens, vec = self.text(todo, device)
            for i, n in enumerate(todo):
                self._text_cache[n] = (tokens[i], vec[i])
        if len(names) == 1:
            tokens, vec = self._text_cache[names[0]]
            return tokens.unsqueeze(0), vec.unsqueeze(0)
        return (torch.stack([self._text_cache[n][0] for n in names]), torch.stack([self._text_cache[n][1] for n in names]))

    def _text(self, instructions: Sequence[str]) -> Tuple[torch.Tensor, torch.Tensor]:
        """Text tokens ``[B, T, d]`` and vectors ``[B, d]``, encoding each distinct instruction once."""
        unique: Dict[str, int] = {}
        index = [unique.setdefault(s, len(unique)) for s in instructions]
        tokens, vec = self._encode_text(list(unique))
        if len(unique) == len(instructions) and index == list(range(len(index))):
            return tokens, vec
        idx = torch.tensor(index, device=tokens.device)
        return tokens[idx], vec[idx]

    def encode(self, obs: Observation) -> torch.Tensor:
        """The prefix memory ``[B, P, d]``: image tokens, text tokens, the state token."""
        if obs.image is None:
            raise ValueError("SmallVLA needs camera images (Observation.image is None)")
        if len(obs.instruction) != obs.batch_size:
            raise ValueError(f"{len(obs.instruction)} instructions for a batch of {obs.batch_size}")
        text_tokens, text_vec = self._text(obs.instruction)
        image = obs.image.to(self.start.device)
        if self.wrist is not None:
            if image.ndim != 4 or not side_by_side(image.shape):
                raise ValueError(
                    f"this SmallVLA reads the front and wrist cameras side by side (images [B, H, 2H, 3]), got shape "
                    f"{tuple(image.shape)}: make the task env with wrist_camera=True (demos: --wrist-camera)")
            H = image.shape[1]
            img = torch.cat([self.image(image[:, :, :H], text_vec), self.wrist(image[:, :, H:], text_vec)], dim=1)
        else:
            img = self.image(image, text_vec)
        state = self.state_mlp(self._state(obs.state)).unsqueeze(1)
        t = self.memory_type
        return torch.cat([img + t[0], text_tokens + t[1], state + t[2]], dim=1)

    def _bin_table(self) -> torch.Tensor:
        """Embeddings of the 256 bins ``[256, d]``: a free vector plus a linear function of the bin's value."""
        return self.bin_emb.weight + self.bin_value(self.bin_values)

    def _contexts(self, memory: torch.Tensor) -> torch.Tensor:
        """Per-dimension contexts ``[B, 7, d]`` from the memory alone (no tokens)."""
        x = self.dim_pos.expand(memory.shape[0], -1, -1)
        for layer in self.context:
            x = layer(x, *layer.memory_kv(memory), None)
        return x

    def _action_inputs(self, tokens: torch.Tensor, contexts: torch.Tensor) -> torch.Tensor:
        """Causal-decoder inputs ``[B, 7, d]``: contexts plus start, then the embeddings of tokens[:, :6]."""
        B = tokens.shape[0]
        emb = F.embedding(tokens[:, : self.action_dim - 1], self._bin_table())
        x = torch.cat([self.start.expand(B, 1, -1), emb], dim=1)
        return self.emb_drop(x + contexts)

    def _attn_mask(self, device: torch.device) -> torch.Tensor:
        A, P = self.action_dim, self.n_memory
        causal = torch.ones(A, A, dtype=torch.bool, device=device).tril()
        return torch.cat([torch.ones(A, P, dtype=torch.bool, device=device), causal], dim=1)

    # --- the protocol -----------------------------------------------------
    def action_logits(self, obs: Observation, tokens: torch.Tensor) -> torch.Tensor:
        memory = self.encode(obs)
        tokens = tokens.to(memory.device).long()
        if tokens.shape != (memory.shape[0], self.action_dim):
            raise ValueError(f"tokens must be [B, {self.action_dim}], got {tuple(tokens.shape)}")
        x = self._action_inputs(tokens, self._contexts(memory))
        mask = self._attn_mask(x.device)
        for layer in self.layers:
            mem_k, mem_v = layer.memory_kv(memory)
            x = layer(x, mem_k, mem_v, mask)
        return self.head(self.ln_f(x))

    @torch.no_grad()
    def sample_tokens(
        self,
        obs: Observation,
        *,
        temperature: float = 1.0,
        greedy: bool = False,
        generator: Optional[torch.Generator] = None,
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """Encode once, then decode the 7 tokens with a key/value cache (logits == ``action_logits`` on the sample).

        Greedy: the argmax chain. Otherwise token j is the inverse CDF of softmax(logits / temperature)
        at a uniform from ``generator`` (all 7 x B uniforms drawn first): the same distribution as
        :func:`~vla_forget.policies.base.pick_tokens`, a different random stream.
        """
        memory = self.encode(obs)
        B, P, _ = memory.shape
        caches = []
        table = self._bin_table()
        masks = torch.full((self.action_dim, P + self.action_dim), float("-inf"), device=memory.device).triu_(P + 1)
        masks = masks.view(self.action_dim, 1, 1, 1, P + self.action_dim)
        d = self.config.d_model
        for layer in self.layers:
            mem_k, mem_v = layer.memory_kv(memory)
            shape = (B, mem_k.shape[1], P + self.action_dim, mem_k.shape[3])
            k_cache, v_cache = mem_k.new_zeros(shape), mem_v.new_zeros(shape)  # zeros: finite under the mask
            k_cache[:, :, :P] = mem_k
            v_cache[:, :, :P] = mem_v
            caches.append((k_cache, v_cache))
        tokens = torch.zeros(B, self.action_dim, dtype=torch.long, device=memory.device)
        rows = []
        sample = not (greedy or temperature <= 0)
        if sample:  # one uniform per token, drawn up front: inverse-CDF sampling (cheaper than multinomial)
            uniforms = torch.rand(B, self.action_dim, generator=generator, device=generator.device if generator else None)
            uniforms = uniforms.to(memory.device)
        contexts = self._contexts(memory)
        x = self.start + contexts[:, 0]
        for j in range(self.action_dim):
            for layer, (k_cache, v_cache) in zip(self.layers, caches):
                x = layer.step(x, k_cache, v_cache, P + j, masks[j])
            logits = torch.addmm(self.head.bias, F.layer_norm(x, (d,), self.ln_f.weight, self.ln_f.bias), self.head.weight)
            rows.append(logits)
            if sample:
                cdf = torch.softmax(logits / temperature, dim=-1).cumsum_(-1)
                tok = torch.searchsorted(cdf, uniforms[:, j : j + 1] * cdf[:, -1:], right=True).clamp_(max=self.n_bins - 1)[:, 0]
            else:
                tok = logits.argmax(-1)
            tokens[:, j] = tok
            if j + 1 < self.action_dim:
                x = table[tok] + contexts[:, j + 1]
        return tokens, torch.stack(rows, dim=1)

    def features(self, obs: Observation) -> torch.Tensor:
        """``[B, 3 d]``: mean image token, mean text token, state token (for a value head)."""
        memory = self.encode(obs)
        G = self.config.image_tokens
        T = self.config.text_tokens
        return torch.cat([memory[:, :G].mean(1), memory[:, G : G + T].mean(1), memory[:, -1]], dim=-1)

    @property
    def feature_dim(self) -> int:
        return 3 * self.config.d_model

    def decode_actions(self, tokens: torch.Tensor) -> torch.Tensor:
        actions = self.tokenizer.decode(tokens.detach().cpu().numpy())
        return torch.as_tensor(actions, dtype=torch.float32, device=self.start.device)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    # --- checkpoints --------------------------------------------------------
    def _config_json(self) -> Dict[str, Any]:
        return {
            "policy_class": POLICY_CLASS,
            "format_version": FORMAT_VERSION,
            "config": self.config.to_dict(),
            "unnorm_key": self.unnorm_key,
        }

    def checkpoint_hash(self) -> str:
        """sha256 (16 hex) of the weights' bytes, the config and the chosen action statistics."""
        h = hashlib.sha256()
        meta = {**self._config_json(), "action_statistics": self.action_statistics.to_dict()}
        h.update(json.dumps(meta, sort_keys=True).encode())
        for name, t in sorted(self.state_dict().items()):
            t = t.detach().cpu().contiguous()
            h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
        return h.hexdigest()[:16]

    def save(self, path: str) -> None:
        """Write ``model.safetensors``, ``config.json`` and ``dataset_statistics.json`` into the folder ``path``."""
        from safetensors.torch import save_file

        os.makedirs(path, exist_ok=True)
        tensors = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        save_file(tensors, os.path.join(path, WEIGHTS_FILENAME), metadata={"format": "pt", "policy_class": POLICY_CLASS})
        with open(os.path.join(path, CONFIG_FILENAME), "w") as f:
            json.dump(self._config_json(), f, indent=2)
            f.write("\n")
        with open(os.path.join(path, STATS_FILENAME), "w") as f:
            json.dump(self.dataset_statistics, f, indent=2)
            f.write("\n")

    @classmethod
    def load(cls, path: str, unnorm_key: Optional[str] = None, **overrides: Any) -> "SmallVLA":
        """Load a folder written by :meth:`save` (safetensors only); ``overrides`` replace config fields
        (e.g. ``dropout``); errors are :class:`~vla_forget.policies.CheckpointError` naming the file."""
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        from vla_forget.policies import CheckpointError

        if not os.path.isdir(path):
            raise CheckpointError(f"{path} is not a checkpoint folder (expected {CONFIG_FILENAME}, {WEIGHTS_FILENAME}, {STATS_FILENAME})")
        cfg_path = os.path.join(path, CONFIG_FILENAME)
        weights_path = os.path.join(path, WEIGHTS_FILENAME)
        for p in (cfg_path, weights_path):
            if not os.path.exists(p):
                raise CheckpointError(f"{p} is missing: a SmallVLA checkpoint folder holds {CONFIG_FILENAME}, {WEIGHTS_FILENAME} and {STATS_FILENAME}")
        try:
            with open(cfg_path) as f:
                meta = json.load(f)
        except json.JSONDecodeError as e:
            raise CheckpointError(f"{cfg_path} is not valid JSON: {e}") from None
        if not isinstance(meta, dict) or meta.get("policy_class") != POLICY_CLASS:
            got = meta.get("policy_class") if isinstance(meta, dict) else None
            raise CheckpointError(f"{cfg_path} is a checkpoint of policy_class={got!r}, not {POLICY_CLASS!r}")
        version = meta.get("format_version")
        if version != FORMAT_VERSION:
            raise CheckpointError(f"{cfg_path} has format_version={version!r}; this code reads version {FORMAT_VERSION}")
        try:
            cfg_dict = {**meta.get("config", {}), **overrides}
            config = SmallVLAConfig.from_dict(cfg_dict)
        except (TypeError, ValueError) as e:
            raise CheckpointError(f"{cfg_path}: bad config: {e}") from None

        try:
            all_stats = load_dataset_statistics(path)
        except StatisticsError as e:
            raise CheckpointError(str(e)) from None
        key = unnorm_key if unnorm_key is not None else meta.get("unnorm_key")
        try:
            model = cls(config, statistics=all_stats, unnorm_key=key)
        except StatisticsError as e:
            raise CheckpointError(f"{os.path.join(path, STATS_FILENAME)}: {e}") from None

        try:
            tensors = load_file(weights_path)
        except (SafetensorError, OSError, ValueError) as e:
            raise CheckpointError(f"{weights_path} is not a readable safetensors file: {e}") from None
        expected = model.state_dict()
        missing = [k for k in expected if k not in tensors]
        unexpected = [k for k in tensors if k not in expected]
        mismatched = [
            f"{k}: file {list(tensors[k].shape)} vs config {list(v.shape)}"
            for k, v in expected.items()
            if k in tensors and tensors[k].shape != v.shape
        ]
        problems = []
        if mismatched:
            problems.append(f"{len(mismatched)} tensors of the wrong shape ({'; '.join(mismatched[:5])})")
        if missing:
            problems.append(f"{len(missing)} tensors missing ({', '.join(missing[:5])})")
        if unexpected:
            problems.append(f"{len(unexpected)} unexpected tensors ({', '.join(unexpected[:5])})")
        if problems:
            raise CheckpointError(f"{weights_path} does not match the config in {cfg_path}: " + "; ".join(problems))
        model.load_state_dict(tensors)
        return model.eval()
