"""What every trainer shares (pretraining and each adaptation method): the NaN guard and the one optimiser step.

A non-finite loss or gradient norm stops training *before* the optimiser step, so the weights on disk and in
memory are those of the last good step; the trainer then raises :class:`Diverged` naming its newest good
checkpoint, which stays on disk.
"""

from __future__ import annotations

from typing import Optional

from vla_forget.errors import VlaForgetError


class Diverged(VlaForgetError, RuntimeError):
    """The loss or the gradient became NaN or infinite; ``last_checkpoint`` is the newest good checkpoint (or None).
    Raised by pretraining and by every adaptation method."""

    def __init__(self, message: str, last_checkpoint: Optional[str]):
        super().__init__(message)
        self.last_checkpoint = last_checkpoint


class NonFiniteError(ArithmeticError):
    """A NaN or infinite loss or gradient norm (raised before the optimiser step; trainers turn it into
    :class:`Diverged`)."""


def backward(loss, what: str = "loss") -> None:
    """``loss.backward()`` after checking that the loss is finite (NonFiniteError otherwise)."""
    import torch


    if not bool(torch.isfinite(loss.detach()).all()):
        raise NonFiniteError(f"the {what} is {loss.detach().float().item()}")
    loss.backward()


def optimizer_step(opt, loss=None, grad_clip: float = 1.0) -> float:
    """(zero_grad, backward when ``loss`` is given,) clip the global norm of the optimiser's parameters' gradients
    to ``grad_clip`` (0: no clipping), check it, step, zero_grad; returns the norm before clipping."""
    import torch


    params = [p for g in opt.param_groups for p in g["params"]]
    if loss is not None:
        opt.zero_grad(set_to_none=True)
        backward(loss)
    gnorm = torch.nn.utils.clip_grad_norm_(params, grad_clip if grad_clip > 0 else float("inf"))
    if not bool(torch.isfinite(gnorm)):
        opt.zero_grad(set_to_none=True)
        raise NonFiniteError(f"the gradient norm is {float(gnorm)}")
    opt.step()
    opt.zero_grad(set_to_none=True)
    return float(gnorm)
