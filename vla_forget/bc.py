"""Behaviour cloning's data and loss (light at import: torch only inside the loss), shared by pretraining (:mod:`vla_forget.pretrain`) and SFT
(:mod:`vla_forget.adapt.sft`, ``iterative-sft``, ``rl-trace-sft``): the one step sampler (an episode split over
a weighted mixture, with an optional share of transport steps), image shifts, and the teacher-forced token loss.
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Sequence, Tuple

import numpy as np

__all__ = ["NoTransportSteps", "SplitSampler", "TRANSPORT_MIN_XY", "TRANSPORT_RULES", "TransportSampler", "gather",
           "make_sampler", "observation", "parse_data_spec", "shift_images", "split_episodes", "steps_of",
           "token_loss", "transport_steps"]


def parse_data_spec(spec: str) -> Tuple[str, float]:
    """``PATH[:WEIGHT]`` -> (path, weight)."""
    path, sep, w = spec.rpartition(":")
    if sep and path:
        try:
            return path, float(w)
        except ValueError:
            pass
    return spec, 1.0


# --------------------------------------------------------------------------
# data: an episode split over a mixture

class SplitSampler:
    """Samples training steps of a mixture, restricted to each dataset's training episodes.

    Picks a dataset by weight, then a step uniformly among its training steps, and
    tokenises every row with the mixture's pooled tokenizer (SFT: weights proportional to each dataset's
    steps, every episode a training episode: uniform over all steps).
    """

    def __init__(self, datasets: Sequence[Any], weights: Sequence[float], train_episodes: Optional[Sequence[np.ndarray]],
                 tokenizer: Any, rng: np.random.Generator):
        self.datasets = list(datasets)
        self.weights = np.asarray(weights, np.float64) / np.sum(weights)
        self.tokenizer = tokenizer
        """one tokenizer for every row, or one per dataset (a mixture with per-dataset statistics)"""
        self.rng = rng
        if train_episodes is None:  # every episode
            train_episodes = [np.arange(ds.num_episodes) for ds in self.datasets]
        self.steps = [steps_of(ds, eps) for ds, eps in zip(self.datasets, train_episodes)]

    def sample(self, batch_size: int, *, with_index: bool = False) -> Dict[str, Any]:
        """A batch of ``batch_size`` rows (numpy arrays, instructions, tokens); ``with_index`` adds each row's
        ``dataset``, ``episode`` and ``step``."""
        which = self.rng.choice(len(self.datasets), size=batch_size, p=self.weights)
        ep = np.zeros(batch_size, np.int64)
        st = np.zeros(batch_size, np.int64)
        for k in range(len(self.datasets)):
            rows = np.nonzero(which == k)[0]
            if len(rows):
                pick = self.rng.integers(0, len(self.steps[k][0]), size=len(rows))
                ep[rows], st[rows] = self.steps[k][0][pick], self.steps[k][1][pick]
        out = gather(self.datasets, which, ep, st, self.tokenizer)
        if with_index:
            out.update(dataset=which, episode=ep, step=st)
        return out


#: a transport step moves x or y by more than this (of the action range -1..1) with the gripper closed
TRANSPORT_MIN_XY = 0.3


def transport_steps(actions: np.ndarray) -> np.ndarray:
    """Indices of the steps that carry a held object sideways: gripper closed (< 0) and the x or y
    action beyond :data:`TRANSPORT_MIN_XY`. In pick-and-place these are the few steps per episode
    where only the instruction's destination says which way to go; the approach, the lift, the
    lowering and the release can be read off the image."""
    a = np.asarray(actions)
    return np.flatnonzero((a[:, 6] < 0) & (np.abs(a[:, :2]).max(axis=1) > TRANSPORT_MIN_XY))


class NoTransportSteps(ValueError):
    """The data has no transport step to draw from."""


#: how the transport share of a batch is drawn (:class:`TransportSampler`): ``conditional``, the batch's own
#: distribution restricted to the transport steps (what every new run does); ``dataset-weight``, a dataset by the
#: mixture's weights among those with transport steps, then one of its transport steps (pretraining runs from
#: before the rule was named drew so, and resume so)
TRANSPORT_RULES = ("conditional", "dataset-weight")


class TransportSampler:
    """Draws a share ``fraction`` of each batch from the transport steps (:func:`transport_steps`) of
    ``base``'s training episodes and the rest from ``base``; both read ``base.rng``, so a batch is a
    function of it.

    One meaning of oversampling for pretraining and SFT (``rule="conditional"``): a transport row is drawn as
    ``base`` draws a row, restricted to the transport steps: dataset *k* with probability proportional to
    ``w_k * T_k / N_k`` (its weight, transport steps and training steps), then a transport step of it uniformly.
    Where every transport step is equally likely (one dataset; SFT's uniform draw over all steps) that is one
    uniform draw over all the transport steps. ``rule="dataset-weight"``: a dataset by ``base``'s weights among
    those that have transport steps, then a transport step of it uniformly."""

    def __init__(self, base: SplitSampler, fraction: float, rule: str = "conditional"):
        if rule not in TRANSPORT_RULES:
            raise ValueError(f"transport rule {rule!r}: choose one of {', '.join(TRANSPORT_RULES)}")
        self.base, self.fraction, self.rule = base, float(fraction), rule
        which, ep, st = [], [], []
        for k, (ds, (train_ep, _)) in enumerate(zip(base.datasets, base.steps)):
            e, s = ds.locate(transport_steps(ds.all_actions()))
            keep = np.isin(e, train_ep)
            which.append(np.full(int(keep.sum()), k))
            ep.append(e[keep])
            st.append(s[keep])
        self.which, self.ep, self.st = (np.concatenate(x).astype(np.int64) for x in (which, ep, st))
        counts = np.bincount(self.which, minlength=len(base.datasets)).astype(np.int64)
        self._counts, self._start = counts, np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)  # grouped
        if not len(self.ep):
            raise NoTransportSteps(f"--transport-fraction {fraction}: the data has no transport steps (gripper closed "
                                   f"and an x or y action beyond {TRANSPORT_MIN_XY}); use --transport-fraction 0")
        if rule == "dataset-weight":
            w = np.where(counts > 0, base.weights, 0.0)
        else:
            n_train = np.array([max(1, len(s[0])) for s in base.steps], np.float64)
            w = base.weights * counts / n_train
        self._p = w / w.sum()
        per_step = self._p[counts > 0] / counts[counts > 0]
        self._uniform = rule == "conditional" and bool(np.allclose(per_step, per_step[0], rtol=1e-9, atol=0.0))

    @property
    def rng(self) -> np.random.Generator:
        return self.base.rng

    @rng.setter
    def rng(self, rng: np.random.Generator) -> None:
        self.base.rng = rng

    @property
    def counts(self) -> Tuple[int, ...]:
        """transport steps per dataset"""
        return tuple(int(n) for n in self._counts)

    def sample(self, batch_size: int) -> Dict[str, Any]:
        n = int(round(batch_size * self.fraction))
        if not n:  # a batch too small for the share: all uniform
            return self.base.sample(batch_size)
        if self._uniform:
            pick = self.base.rng.integers(0, len(self.ep), size=n)
        else:
            k = self.base.rng.choice(len(self._p), size=n, p=self._p)
            pick = self._start[k] + (self.base.rng.random(n) * self._counts[k]).astype(np.int64)
        rows = gather(self.base.datasets, self.which[pick], self.ep[pick], self.st[pick], self.base.tokenizer)
        if n == batch_size:
            return rows
        rest = self.base.sample(batch_size - n)
        return {k: (rows[k] + rest[k]) if isinstance(rows[k], list) else np.concatenate([rows[k], rest[k]]) for k in rest}


def make_sampler(datasets: Sequence[Any], weights: Sequence[float], train_episodes: Sequence[np.ndarray], tokenizer: Any,
                 rng: np.random.Generator, transport_fraction: float = 0.0, transport_rule: str = "conditional"):
    """The training sampler of pretraining and SFT: a :class:`SplitSampler`, wrapped in a :class:`TransportSampler`
    when ``transport_fraction`` > 0 (raises :class:`NoTransportSteps` when the data has no transport step)."""
    sampler = SplitSampler(datasets, weights, train_episodes, tokenizer, rng)
    if transport_fraction <= 0:
        return sampler
    return TransportSampler(sampler, transport_fraction, rule=transport_rule)


def steps_of(ds: Any, episodes: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """(episode, step) index arrays of every step of ``episodes``."""
    eps = np.asarray(episodes, np.int64)
    lengths = np.asarray(ds.lengths)[eps]
    return np.repeat(eps, lengths), np.concatenate([np.arange(n) for n in lengths]) if len(eps) else np.zeros(0, np.int64)


def gather(datasets: Sequence[Any], which: np.ndarray, ep: np.ndarray, st: np.ndarray, tokenizer: Any) -> Dict[str, Any]:
    """Numpy arrays of the given (dataset, episode, step) rows, tokenised with ``tokenizer`` (or, a list, with
    each row's dataset's)."""
    B = len(which)
    out: Dict[str, Any] = {"instruction": [""] * B}
    for k, ds in enumerate(datasets):
        rows = np.nonzero(which == k)[0]
        if not len(rows):
            continue
        g = ds.gather(ep[rows], st[rows])
        for key in ("image", "state", "action"):
            if key not in out:
                out[key] = np.empty((B,) + g[key].shape[1:], g[key].dtype)
            out[key][rows] = g[key]
        for j, r in enumerate(rows):
            out["instruction"][r] = g["instruction"][j]
    if isinstance(tokenizer, (list, tuple)):  # one per dataset
        out["tokens"] = np.empty(out["action"].shape, np.int64)
        for k, tok in enumerate(tokenizer):
            rows = np.nonzero(which == k)[0]
            if len(rows):
                out["tokens"][rows] = tok.encode(out["action"][rows])
    else:
        out["tokens"] = tokenizer.encode(out["action"]).astype(np.int64)
    return out


def split_episodes(n: int, fraction: float, rng: np.random.Generator) -> Tuple[np.ndarray, np.ndarray]:
    """(train, validation) episode indices: a seeded shuffle, ``fraction`` held out (one at least when n >= 2)."""
    perm = rng.permutation(n)
    n_val = int(round(fraction * n))
    if fraction > 0 and n >= 2:
        n_val = max(1, n_val)
    n_val = min(n_val, n - 1) if n >= 1 else 0
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


def shift_images(images: np.ndarray, pad: int, rng: np.random.Generator) -> np.ndarray:
    """Random shift by up to ``pad`` pixels per image (edge-replicated padding, crop back); front and
    wrist views side by side (``[B, H, 2H, 3]``) are shifted each on its own."""
    if pad <= 0:
        return images
    from vla_forget.policies.base import side_by_side

    B, H, W, _ = images.shape
    if side_by_side(images.shape):
        return np.concatenate([shift_images(images[:, :, :H], pad, rng), shift_images(images[:, :, H:], pad, rng)], axis=2)
    padded = np.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)), mode="edge")
    dx = rng.integers(0, 2 * pad + 1, size=B)
    dy = rng.integers(0, 2 * pad + 1, size=B)
    out = np.empty_like(images)
    for i in range(B):
        out[i] = padded[i, dy[i]:dy[i] + H, dx[i]:dx[i] + W]
    return out


def observation(batch: Dict[str, Any], device: str):
    """A numpy batch as a policy :class:`~vla_forget.policies.base.Observation` on ``device``."""
    import torch

    from vla_forget.policies.base import Observation

    return Observation(image=torch.from_numpy(batch["image"]).to(device), state=torch.from_numpy(batch["state"]).to(device),
                       instruction=list(batch["instruction"]))


def token_loss(model, batch: Dict[str, Any], device: str):
    """(mean cross-entropy over the 7 tokens, token accuracy [7]) of a batch, teacher-forced."""
    import torch
    import torch.nn.functional as F

    tokens = torch.from_numpy(batch["tokens"]).to(device)
    logits = model.action_logits(observation(batch, device), tokens).float()
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tokens.reshape(-1))
    acc = (logits.argmax(-1) == tokens).float().mean(0)
    return loss, acc
