"""Linear-Gaussian latent variable model: the closed-form oracle of the library.

    z ~ N(0, I_k),   x | z ~ N(W z + b, s^2 I_d)

so that  p(x) = N(x; b, W W^T + s^2 I)  and
p(z | x) = N(M^{-1} W^T (x - b) / s^2, M^{-1}),  M = I + W^T W / s^2
(Bishop, PRML section 12.2, probabilistic PCA).
"""

from __future__ import annotations

from typing import Optional

import pyro
import pyro.distributions as dist
import torch

from ..sites import LATENT, OBS, data_plate
from ..registration import CachedPyroModule

__all__ = ["LinearGaussianModel"]


class LinearGaussianModel(CachedPyroModule):
    """Linear-Gaussian model with exact :meth:`log_prob` and :meth:`posterior`.

    Args:
        W: (d, k) loading matrix; b: (d,) offset; noise_scale: s > 0.

    ``forward(x, *, num_data=None, idx=None)`` with x (batch, d) float.
    """

    def __init__(self, W: torch.Tensor, b: torch.Tensor, noise_scale: float):
        super().__init__()
        if W.dim() != 2 or b.shape != (W.shape[0],):
            raise ValueError(f"W must be (d, k) and b (d,), got {tuple(W.shape)} and {tuple(b.shape)}")
        if noise_scale <= 0:
            raise ValueError(f"noise_scale must be > 0, got {noise_scale}")
        self.register_buffer("W", W)
        self.register_buffer("b", b)
        self.noise_scale = float(noise_scale)

    @property
    def z_dim(self) -> int:
        return self.W.shape[1]

    def forward(self, x: torch.Tensor, *, num_data: Optional[int] = None,
                idx: Optional[torch.Tensor] = None) -> None:
        if x.dim() != 2 or x.shape[1] != self.W.shape[0]:
            raise ValueError(f"x must be (batch, {self.W.shape[0]}), got {tuple(x.shape)}")
        with data_plate(x, num_data, idx):
            z = pyro.sample(LATENT, dist.Normal(x.new_zeros(()), 1.0).expand([self.z_dim]).to_event(1))
            loc = z @ self.W.T + self.b  # (..., batch, d)
            pyro.sample(OBS, dist.Normal(loc, self.noise_scale).to_event(1), obs=x)

    def marginal(self) -> dist.MultivariateNormal:
        """Exact p(x) = N(b, W W^T + s^2 I)."""
        cov = self.W @ self.W.T + self.noise_scale ** 2 * torch.eye(self.W.shape[0], dtype=self.W.dtype)
        return dist.MultivariateNormal(self.b, covariance_matrix=cov)

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """Exact log p(x) per datapoint: x (batch, d) -> (batch,), nats."""
        return self.marginal().log_prob(x)

    def posterior(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Exact posterior p(z | x) = N(loc, cov): loc (batch, k), cov (k, k)."""
        s2 = self.noise_scale ** 2
        M = torch.eye(self.z_dim, dtype=self.W.dtype) + self.W.T @ self.W / s2
        cov = torch.linalg.inv(M)
        loc = (x - self.b) @ self.W @ cov.T / s2
        return loc, cov
