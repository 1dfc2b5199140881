"""The variational autoencoder's generative model (Kingma & Welling 2013)."""

from __future__ import annotations

from typing import Optional, Sequence

import pyro
import pyro.distributions as dist
import torch
from torch import nn

from ..sites import LATENT, OBS, data_plate
from ..checks import data_checks_enabled
from .likelihoods import Likelihood, ObservationChecks
from ..registration import CachedPyroModule

__all__ = ["VAEModel"]


class VAEModel(ObservationChecks, CachedPyroModule):
    """VAE generative model::

        z ~ N(0, I_{z_dim})                    site "z"
        x | z ~ p(x | decoder(z))              site "x" (the likelihood's distribution)

    both inside ``pyro.plate("data", num_data, subsample=idx)``.

    Args:
        decoder: torch module (..., z_dim) -> (..., P, *event_shape), P =
            ``likelihood.num_params`` (see :mod:`lvm_pyro.nn`).
        z_dim: latent size.
        event_shape: shape of one observation, e.g. (1, 28, 28).
        likelihood: a :class:`~lvm_pyro.models.likelihoods.Likelihood`.

    ``forward(x, *, num_data=None, idx=None)``: x (batch, *event_shape) float; raises
    ValueError when x is outside the likelihood's support or has the wrong shape (unless
    inside :func:`lvm_pyro.checks.skip_data_checks`, for data already passed through
    :meth:`check_data`).
    """

    def __init__(self, decoder: nn.Module, z_dim: int, event_shape: Sequence[int],
                 likelihood: Likelihood):
        super().__init__()
        if z_dim < 1:
            raise ValueError(f"z_dim must be >= 1, got {z_dim}")
        self.decoder = decoder
        self.z_dim = int(z_dim)
        self.event_shape = tuple(event_shape)
        self.likelihood = likelihood

    def forward(self, x: torch.Tensor, *, num_data: Optional[int] = None,
                idx: Optional[torch.Tensor] = None) -> None:
        if data_checks_enabled():
            self.check_data(x)
        zero = x.new_zeros(())
        with data_plate(x, num_data, idx):
            z = pyro.sample(LATENT, dist.Normal(zero, 1.0).expand([self.z_dim]).to_event(1))
            params = self.decoder(z)  # (..., batch, P, *event_shape)
            pyro.sample(OBS, self.likelihood(params, len(self.event_shape)), obs=x)

    @torch.no_grad()
    def sample(self, num_samples: int, mean: bool = True) -> torch.Tensor:
        """Draw images x ~ p(x) (or the decoder mean E[x | z] when ``mean``):
        (num_samples, *event_shape) float."""
        p = next(self.decoder.parameters())
        z = torch.randn(num_samples, self.z_dim, device=p.device, dtype=p.dtype)
        return self.decode(z, mean=mean)

    @torch.no_grad()
    def decode(self, z: torch.Tensor, mean: bool = True) -> torch.Tensor:
        """Decode latents z (..., z_dim) to images (..., *event_shape): the mean, or a
        draw from p(x | z)."""
        params = self.decoder(z)
        if mean:
            return self.likelihood.mean(params, len(self.event_shape))
        return self.likelihood(params, len(self.event_shape)).sample()
