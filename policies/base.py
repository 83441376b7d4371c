"""The policy protocol: batched, tensors in and tensors out.

Every policy that has an action *distribution* (the small VLA, OpenVLA-7B)
implements :class:`TokenPolicy`; scripted experts implement only ``act``.

The action is 7 tokens, one per dimension (dx, dy, dz, droll, dpitch, dyaw,
gripper), each a bin index in 0..255 (see :mod:`vla_forget.tokenizer`), emitted
autoregressively. The central method is :meth:`TokenPolicy.action_logits`:
teacher-forced logits ``[B, 7, 256]`` where row ``j`` is the distribution of
token ``j`` given the observation and tokens ``0..j-1`` of ``tokens`` — one
forward pass for all 7 steps. Sampling, PPO log-probabilities and the exact
chain-rule divergences are all built on it.

How OpenVLA-7B fits unchanged: its prompt ``In: What action should the robot
take to {instruction}?\\nOut:`` plus the 7 action-token ids
(``vocab_size - (b + 1)``) is one causal sequence; one forward pass gives the
logits at the 7 positions before each action token; slicing the last 256
vocabulary ids and reversing their order gives ``[B, 7, 256]`` over bin
indices. ``features`` is the last hidden state at the final prompt position.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

import torch

from vla_forget.errors import VlaForgetError

ACTION_DIM = 7
N_BINS = 256


@dataclass
class Observation:
    """A batch of observations.

    image: uint8 ``[B, H, W, 3]`` from the task's camera.
    state: float32 ``[B, S]`` proprioception (joint positions and velocities,
        end-effector pose; the task documents its layout).
    instruction: ``B`` natural-language instructions.
    privileged: simulator state for scripted experts only (tensors ``[B, ...]``);
        learned policies must not read it.
    """

    image: Optional[torch.Tensor]
    state: torch.Tensor
    instruction: List[str]
    privileged: Dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def batch_size(self) -> int:
        return int(self.state.shape[0])

    def to(self, device: torch.device | str) -> "Observation":
        return Observation(
            image=None if self.image is None else self.image.to(device),
            state=self.state.to(device),
            instruction=list(self.instruction),
            privileged={k: v.to(device) for k, v in self.privileged.items()},
        )

    def index(self, idx: Any) -> "Observation":
        """A sub-batch (``idx`` a slice, a list of ints or an index tensor)."""
        if isinstance(idx, slice):
            instr = self.instruction[idx]
        else:
            instr = [self.instruction[int(i)] for i in idx]
        return Observation(
            image=None if self.image is None else self.image[idx],
            state=self.state[idx],
            instruction=instr,
            privileged={k: v[idx] for k, v in self.privileged.items()},
        )


def side_by_side(shape: Any) -> bool:
    """Whether images of ``shape`` (``[..., H, W, 3]``) hold the front and wrist views side by side (``W == 2H``),
    as task envs give them with ``wrist_camera=True``."""
    return len(shape) >= 3 and int(shape[-2]) == 2 * int(shape[-3])


def views_for(policy: Any, obs: Observation) -> Observation:
    """``obs`` as ``policy`` reads it: a policy without a wrist camera given front and wrist views side by
    side (``[B, H, 2H, 3]``, e.g. states recorded from a two-camera base) gets the front half."""
    img = obs.image
    if img is None or getattr(policy, "wrist_camera", False) or img.ndim != 4 or not side_by_side(img.shape):
        return obs
    return Observation(image=img[:, :, : img.shape[1]], state=obs.state, instruction=list(obs.instruction),
                       privileged=dict(obs.privileged))


class PromptStyleError(VlaForgetError, ValueError):
    """A prompt style (``--prompt``) that the policy cannot take."""


class Policy:
    """Anything that acts: ``act`` maps an observation batch to ``[B, 7]`` continuous actions."""

    #: Whether this policy reads camera images (tasks skip rendering otherwise).
    needs_image: bool = True
    #: Whether it reads the wrist camera too (tasks then give the front and wrist views side by side).
    wrist_camera: bool = False
    #: Whether this policy reads ``Observation.privileged`` (scripted experts).
    needs_privileged: bool = False
    #: The square camera size (pixels) the policy was trained on, if it declares one: benches and adaptation
    #: render at it unless told otherwise (OpenVLA: its processor's input size; the small VLA: its config).
    input_image_size: Optional[int] = None
    #: The prompt styles the policy can take (``set_prompt_style``); empty: it reads the instruction as it is.
    prompt_styles: tuple = ()
    #: The prompt style in use (None for a policy without styles).
    prompt_style: Optional[str] = None

    def set_prompt_style(self, style: str) -> None:
        """Choose how the instruction becomes the prompt (``--prompt``); an error for a style the policy lacks."""
        if style not in self.prompt_styles:
            takes = (f"it takes {', '.join(self.prompt_styles)}" if self.prompt_styles
                     else "it reads the instruction as it is and takes no prompt style")
            raise PromptStyleError(f"{type(self).__name__} cannot take prompt style {style!r}: {takes}")
        self.prompt_style = style

    def reset(self, batch_size: int) -> None:
        """Called at the start of each batch of episodes (experts keep per-episode phase)."""

    def act(self, obs: Observation, *, greedy: bool = False, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        raise NotImplementedError

    def checkpoint_hash(self) -> str:
        """A content hash of the weights and config (recorded in results)."""
        return type(self).__name__


class TokenPolicy(Policy, torch.nn.Module):
    """A policy with a distribution over 7 action tokens of 256 bins each."""

    action_dim: int = ACTION_DIM
    n_bins: int = N_BINS
    #: greedy decoding breaks exact ties toward the highest bin (OpenVLA: its argmax runs over vocabulary ids,
    #: and bin b is id vocab_size - 1 - b, so the lowest tied id is the highest bin); else the lowest bin
    greedy_ties_to_high_bins: bool = False

    # --- the protocol ---------------------------------------------------
    def action_logits(self, obs: Observation, tokens: torch.Tensor) -> torch.Tensor:
        """Teacher-forced logits ``[B, 7, 256]``; row j conditions on ``tokens[:, :j]``."""
        raise NotImplementedError

    def features(self, obs: Observation) -> torch.Tensor:
        """Per-observation features ``[B, F]`` for a value head (PPO)."""
        raise NotImplementedError

    @property
    def feature_dim(self) -> int:
        raise NotImplementedError

    def decode_actions(self, tokens: torch.Tensor) -> torch.Tensor:
        """Bin indices ``[B, 7]`` -> continuous actions ``[B, 7]`` (float32, policy's device)."""
        raise NotImplementedError

    def save(self, path: str) -> None:
        raise NotImplementedError

    # --- built on the protocol -----------------------------------------
    @torch.no_grad()
    def sample_tokens(
        self,
        obs: Observation,
        *,
        temperature: float = 1.0,
        greedy: bool = False,
        generator: Optional[torch.Generator] = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Sample 7 tokens autoregressively; returns (tokens ``[B, 7]``, logits ``[B, 7, 256]``).

        The returned logits are exactly ``action_logits(obs, tokens)`` (each row
        was computed on the prefix that was then sampled), so sampling also
        yields the teacher-forced logits on the sample. Policies may override
        this with a faster cached loop; the default calls ``action_logits`` 7 times.
        """
        B = obs.batch_size
        device = obs.state.device
        tokens = torch.zeros(B, self.action_dim, dtype=torch.long, device=device)
        rows = []
        for j in range(self.action_dim):
            logits = self.action_logits(obs, tokens)[:, j]
            rows.append(logits)
            tokens[:, j] = pick_tokens(logits, temperature=temperature, greedy=greedy, generator=generator,
                                       ties_to_high_bins=self.greedy_ties_to_high_bins)
        return tokens, torch.stack(rows, dim=1)

    @torch.no_grad()
    def act(self, obs: Observation, *, greedy: bool = False, generator: Optional[torch.Generator] = None, temperature: float = 1.0) -> torch.Tensor:
        tokens, _ = self.sample_tokens(obs, temperature=temperature, greedy=greedy, generator=generator)
        return self.decode_actions(tokens)

    def log_prob(self, obs: Observation, tokens: torch.Tensor) -> torch.Tensor:
        """Joint log-probability ``[B]`` of the 7 tokens of each action (with gradients)."""
        logp = torch.log_softmax(self.action_logits(obs, tokens).float(), dim=-1)
        return logp.gather(-1, tokens.unsqueeze(-1)).squeeze(-1).sum(-1)


def pick_tokens(
    logits: torch.Tensor, *, temperature: float = 1.0, greedy: bool = False, generator: Optional[torch.Generator] = None,
    ties_to_high_bins: bool = False,
) -> torch.Tensor:
    """Greedy or temperature sampling from ``[B, K]`` logits; a greedy tie goes to the lowest index, or with
    ``ties_to_high_bins`` to the highest (exact ties are common in bfloat16)."""
    if greedy or temperature <= 0:
        if ties_to_high_bins:
            return logits.shape[-1] - 1 - logits.flip(-1).argmax(-1)
        return logits.argmax(-1)
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)
