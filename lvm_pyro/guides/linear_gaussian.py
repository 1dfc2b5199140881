"""Exact posterior guide for :class:`lvm_pyro.models.LinearGaussianModel` (the oracle)."""

from __future__ import annotations

from typing import Optional

import pyro
import pyro.distributions as dist
import torch

from ..sites import LATENT, data_plate

__all__ = ["LinearGaussianPosteriorGuide"]


class LinearGaussianPosteriorGuide:
    """q(z | x) = p(z | x) of a linear-Gaussian model, optionally perturbed.

    With ``loc_shift = 0`` and ``scale_factor = 1`` the importance weights
    p(x, z) / q(z | x) equal p(x) exactly for every z (zero-variance estimates).

    Args:
        model: a :class:`~lvm_pyro.models.LinearGaussianModel`.
        loc_shift: added to the posterior mean (biases the guide).
        scale_factor: multiplies the posterior covariance's Cholesky factor.
    """

    def __init__(self, model, loc_shift: float = 0.0, scale_factor: float = 1.0):
        self.model = model
        self.loc_shift = float(loc_shift)
        self.scale_factor = float(scale_factor)

    def __call__(self, x: torch.Tensor, *, num_data: Optional[int] = None,
                 idx: Optional[torch.Tensor] = None) -> torch.Tensor:
        loc, cov = self.model.posterior(x)
        tril = torch.linalg.cholesky(cov) * self.scale_factor
        with data_plate(x, num_data, idx):
            return pyro.sample(LATENT, dist.MultivariateNormal(loc + self.loc_shift, scale_tril=tril))
