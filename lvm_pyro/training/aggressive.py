"""Aggressive inference-network training against a lagging encoder (He et al. 2019,
Algorithm 1): the state and the two stopping rules; :class:`lvm_pyro.training.Trainer`
runs the steps (``aggressive=AggressiveEncoder(...)``)."""

from __future__ import annotations

import math
from typing import Callable, Sequence

import torch

__all__ = ["AggressiveEncoder"]


class AggressiveEncoder:
    """Aggressive encoder training (He, Spokoyny, Neubig & Berg-Kirkpatrick 2019, "Lagging
    inference networks and posterior collapse", Algorithm 1).

    While the mode is on, each training step of the :class:`~lvm_pyro.training.Trainer`
    becomes

    1. encoder-only steps, each on a fresh random minibatch, until the objective stops
       improving: after every ``check_every`` inner steps the mean loss of those steps is
       compared with the mean of the previous ``check_every``; the loop ends when it did
       not decrease, or after ``max_inner_steps`` (the cap);
    2. one decoder-only step on the step's own minibatch.

    "Encoder" is every parameter of the guide module, "decoder" every other parameter;
    the other side's gradients are dropped before the optimiser step, so Adam leaves its
    parameters and moments untouched. After every epoch in the mode, I_q(x; z) is
    estimated on the held-out points (:func:`lvm_pyro.diagnostics.mutual_information`,
    the minibatch estimator of He et al., eq. 4); the mode ends for good at the first
    epoch whose estimate is below the previous epoch's (the paper's rule), and training
    continues as plain SVI.

    Inner steps advance the objective's own step counter (a KL schedule sees every
    optimiser step) and the Trainer's ``step``.

    Args:
        heldout: (M, ...) held-out observations, M >= 2, prepared like the evaluation data
            (e.g. the first test points, binarised once).
        max_inner_steps: cap on the encoder-only steps per training step (He et al.: 100).
        check_every: inner steps per comparison window (He et al.: 10).
        num_mi_samples: draws z ~ q(z | x_i) per held-out point for the MI estimate.
        latent: the guide's latent site.

    Raises:
        ValueError: fewer than 2 held-out points, ``max_inner_steps < 1``,
            ``check_every < 1`` or ``num_mi_samples < 1``.
    """

    def __init__(self, heldout: torch.Tensor, *, max_inner_steps: int = 100,
                 check_every: int = 10, num_mi_samples: int = 1, latent: str = "z"):
        if not isinstance(heldout, torch.Tensor) or heldout.dim() < 1 or heldout.shape[0] < 2:
            raise ValueError("heldout must be a tensor of at least 2 held-out observations "
                             "(M, ...) for the I_q(x; z) estimate")
        for name, v in (("max_inner_steps", max_inner_steps), ("check_every", check_every),
                        ("num_mi_samples", num_mi_samples)):
            if isinstance(v, bool) or int(v) != v or v < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {v!r}")
        self.heldout = heldout
        self.max_inner_steps, self.check_every = int(max_inner_steps), int(check_every)
        self.num_mi_samples, self.latent = int(num_mi_samples), latent
        self.active = True
        self.mi_history: list[float] = []
        self.inner_steps: list[int] = []  # encoder-only steps per training step, this epoch

    def __repr__(self) -> str:
        return (f"AggressiveEncoder(max_inner_steps={self.max_inner_steps}, "
                f"check_every={self.check_every}, active={self.active})")

    # -- rules ---------------------------------------------------------------------------
    def inner_converged(self, losses: Sequence[float]) -> bool:
        """Whether the encoder-only loop stops after the inner-step ``losses`` so far: at
        the cap, or at the end of a window of ``check_every`` steps whose mean loss is not
        below the previous window's."""
        n, c = len(losses), self.check_every
        if n >= self.max_inner_steps:
            return True
        if n < 2 * c or n % c:
            return False
        current = sum(losses[n - c:]) / c
        previous = sum(losses[n - 2 * c:n - c]) / c
        return not current < previous

    def end_epoch(self, guide: Callable) -> dict:
        """After an epoch: estimate I_q(x; z) on the held-out points (only while the mode
        is on) and leave the mode when it fell below the previous epoch's estimate.

        Returns:
            ``{"aggressive": bool (the mode during the epoch), "heldout_mi": float | None,
            "aggressive_inner_steps": mean encoder-only steps per step | None}``.
        """
        from ..diagnostics import mutual_information

        was = self.active
        out: dict = {"aggressive": was, "heldout_mi": None,
                     "aggressive_inner_steps": (sum(self.inner_steps) / len(self.inner_steps)
                                                if self.inner_steps else None)}
        self.inner_steps = []
        if not was:
            return out
        mi = mutual_information(guide, self.heldout, num_samples=self.num_mi_samples,
                                latent=self.latent).mi
        if self.mi_history and mi < self.mi_history[-1]:
            self.active = False  # I_q(x; z) stopped rising: plain training from now on
        self.mi_history.append(float(mi))
        out["heldout_mi"] = float(mi)
        return out

    # -- state ---------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """``{"active", "mi_history", "inner_steps"}`` (weights_only-safe)."""
        return {"active": bool(self.active), "mi_history": [float(v) for v in self.mi_history],
                "inner_steps": [int(v) for v in self.inner_steps]}

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict`.

        Raises:
            ValueError: a malformed state.
        """
        if not isinstance(state, dict) or "active" not in state:
            raise ValueError(f"not an AggressiveEncoder state: {state!r}")
        self.active = bool(state["active"])
        self.mi_history = [float(v) for v in state.get("mi_history", [])]
        if any(not math.isfinite(v) for v in self.mi_history):
            raise ValueError("saved heldout MI history holds non-finite values")
        self.inner_steps = [int(v) for v in state.get("inner_steps", [])]
