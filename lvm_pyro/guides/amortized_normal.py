"""Amortised diagonal-Gaussian guide q(z | x) (Kingma & Welling 2013, section 2.4)."""

from __future__ import annotations

from typing import Optional

import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from torch import nn

from ..checks import all_finite, data_checks_enabled
from ..sites import LATENT, data_plate
from ..memo import memoized
from ..registration import CachedPyroModule

__all__ = ["AmortizedNormalGuide"]


class AmortizedNormalGuide(CachedPyroModule):
    """Amortised guide::

        loc, raw = encoder(x)                  encoder: (..., *event_shape) -> (..., 2, z_dim)
        z ~ N(loc, softplus(raw) + min_scale)  site "z", inside the "data" plate

    Args:
        encoder: torch module producing (..., 2, z_dim) from x (see :mod:`lvm_pyro.nn`).
        z_dim: latent size.
        min_scale: floor on the posterior scale.

    ``forward(x, *, num_data=None, idx=None)`` samples ``"z"`` (reparameterised).
    """

    def __init__(self, encoder: nn.Module, z_dim: int, min_scale: float = 1e-4):
        super().__init__()
        if z_dim < 1:
            raise ValueError(f"z_dim must be >= 1, got {z_dim}")
        self.encoder = encoder
        self.z_dim = int(z_dim)
        self.min_scale = float(min_scale)

    def check_data(self, x: torch.Tensor) -> None:
        """The check ``forward`` runs on its input, on a whole data set x (N,
        *event_shape) (see :mod:`lvm_pyro.checks`).

        Raises:
            ValueError: x contains NaN or infinite values.
        """
        if not all_finite(x):
            raise ValueError("site 'x': the guide's input contains NaN or infinite values; "
                             "clean or impute the data before training")

    def loc_scale(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(loc, scale) of q(z | x), each (batch, z_dim), for x (batch, *event_shape).

        Raises:
            ValueError: x contains NaN or infinite values (not checked inside
                :func:`lvm_pyro.checks.skip_data_checks`, for data already passed through
                :meth:`check_data`).

        Inside an evaluation's particle chunks (:func:`lvm_pyro.memo.reuse_within`, no
        gradients) the encoder's output for the same x is computed once.
        """
        if data_checks_enabled():
            self.check_data(x)
        h = memoized(self.encoder, x)  # (batch, 2, z_dim)
        if h.shape[-2:] != (2, self.z_dim):
            raise ValueError(f"encoder must output (..., 2, {self.z_dim}), got {tuple(h.shape)}")
        loc, raw = h.unbind(-2)  # one view backward, not two zero-filled selects
        return loc, F.softplus(raw) + self.min_scale

    def forward(self, x: torch.Tensor, *, num_data: Optional[int] = None,
                idx: Optional[torch.Tensor] = None) -> torch.Tensor:
        loc, scale = self.loc_scale(x)
        with data_plate(x, num_data, idx):
            return pyro.sample(LATENT, dist.Normal(loc, scale).to_event(1))
