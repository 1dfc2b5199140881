"""Seeded synthetic data sets with a known generating distribution.

:func:`three_clusters` is the 2-D data of the lecture's first example (section 2 of
``shared/docs/LECTURE.md``): three Gaussian clusters, to be fitted by a three-component
Gaussian mixture whose exact marginal likelihood sums the latent out.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

__all__ = ["MixtureData", "three_clusters", "THREE_CLUSTER_WEIGHTS", "THREE_CLUSTER_LOCS",
           "THREE_CLUSTER_COVARIANCES"]

#: true mixture weights of :func:`three_clusters`
THREE_CLUSTER_WEIGHTS = (0.2, 0.3, 0.5)
#: true component means (3, 2)
THREE_CLUSTER_LOCS = ((-3.0, 0.0), (3.0, 0.5), (0.0, 4.0))
#: true component covariances (3, 2, 2): a round, a tilted and a flat cluster
THREE_CLUSTER_COVARIANCES = (((0.6, 0.0), (0.0, 0.6)),
                             ((1.0, 0.6), (0.6, 0.8)),
                             ((1.5, -0.3), (-0.3, 0.4)))


class MixtureData(NamedTuple):
    """Draws from a known Gaussian mixture.

    Attributes:
        x: (num_data, 2) float32 observations.
        labels: (num_data,) int64 component of each point (the latent z).
        weights: (3,) float64 true mixture weights.
        locs: (3, 2) float64 true component means.
        covariances: (3, 2, 2) float64 true component covariances.
    """

    x: torch.Tensor
    labels: torch.Tensor
    weights: torch.Tensor
    locs: torch.Tensor
    covariances: torch.Tensor

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """Exact log density of the generating mixture: x (batch, 2) -> (batch,) float64,
        nats."""
        comps = torch.distributions.MultivariateNormal(self.locs, covariance_matrix=self.covariances)
        lp = comps.log_prob(x.double().unsqueeze(-2)) + self.weights.log()  # (batch, 3)
        return torch.logsumexp(lp, dim=-1)


def three_clusters(num_data: int = 600, seed: int = 0) -> MixtureData:
    """Sample ``num_data`` points from a fixed three-component 2-D Gaussian mixture.

    z ~ Categorical(0.2, 0.3, 0.5),  x | z ~ N(locs[z], covariances[z])
    (values in :data:`THREE_CLUSTER_WEIGHTS`, :data:`THREE_CLUSTER_LOCS`,
    :data:`THREE_CLUSTER_COVARIANCES`). The same ``(num_data, seed)`` gives the same data
    on every machine (a private ``torch.Generator``; the global RNG is untouched).

    Args:
        num_data: number of points N >= 1.
        seed: generator seed.

    Returns:
        :class:`MixtureData` with x (N, 2) float32.

    Raises:
        ValueError: ``num_data < 1``.
    """
    if num_data < 1:
        raise ValueError(f"num_data must be >= 1, got {num_data}")
    gen = torch.Generator().manual_seed(int(seed))
    weights = torch.tensor(THREE_CLUSTER_WEIGHTS, dtype=torch.float64)
    locs = torch.tensor(THREE_CLUSTER_LOCS, dtype=torch.float64)
    covs = torch.tensor(THREE_CLUSTER_COVARIANCES, dtype=torch.float64)
    labels = torch.multinomial(weights, num_data, replacement=True, generator=gen)  # (N,)
    chol = torch.linalg.cholesky(covs)  # (3, 2, 2)
    eps = torch.randn(num_data, 2, generator=gen, dtype=torch.float64)  # (N, 2)
    x = locs[labels] + (chol[labels] @ eps.unsqueeze(-1)).squeeze(-1)  # (N, 2)
    return MixtureData(x.float(), labels, weights, locs, covs)
