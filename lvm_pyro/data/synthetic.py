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


# -- binary images with a known distribution, for posterior-collapse experiments -------
import math as _math  # noqa: E402


class BinaryImageData(NamedTuple):
    """Seeded binary images with an exactly known distribution.

    Attributes:
        images: (num_data, 1, H, W) float32 in {0, 1}.
        labels: (num_data,) int64 global factor of each image (the template index), or
            None when there is none.
        log_px: (num_data,) float64 exact log p(x) of each image under the generator, nats.
        entropy: H(x) = -E log p(x) of the generator in nats per image (exact when known in
            closed form, else the mean of -log_px).
    """

    images: torch.Tensor
    labels: "torch.Tensor | None"
    log_px: torch.Tensor
    entropy: float


def _binary_entropy(p: float) -> float:
    return -(p * _math.log(p) + (1 - p) * _math.log(1 - p)) if 0 < p < 1 else 0.0


def _check_binary_args(num_data: int, height: int, width: int, flip: float) -> None:
    if num_data < 1 or height < 1 or width < 1:
        raise ValueError(f"num_data, height and width must be >= 1, got {num_data}, {height}, {width}")
    if not 0 < flip < 0.5:
        raise ValueError(f"flip must be in (0, 0.5), got {flip}")


def pixel_markov_chain(num_data: int = 1000, height: int = 8, width: int = 8, flip: float = 0.1,
                       seed: int = 0) -> BinaryImageData:
    """Binary images from a Markov chain over the pixels: every pixel copies its parent
    and is flipped with probability ``flip``, the parent being the left neighbour (the
    pixel above in column 0; a virtual 0 for the top-left pixel, so x_00 ~
    Bernoulli(flip)).

    Every conditional p(x_ij | x_<ij) depends on one neighbour that precedes it in raster
    order and lies within one row / column, so a PixelCNN decoder with any receptive field
    (one 3x3 layer suffices) represents the distribution exactly without a latent: the
    best ELBO of a PixelCNN-decoder VAE has KL(q(z|x) || p(z)) = 0 (posterior collapse by
    construction). H(x) = H W H_b(flip) nats, H_b the binary entropy.

    Args:
        num_data: number of images N >= 1.
        height, width: image size (>= 1).
        flip: flip probability in (0, 0.5).
        seed: seed of a private ``torch.Generator`` (the global RNG is untouched).

    Returns:
        :class:`BinaryImageData` (labels None).

    Raises:
        ValueError: arguments out of range.
    """
    _check_binary_args(num_data, height, width, flip)
    gen = torch.Generator().manual_seed(int(seed))
    flips = torch.rand(num_data, height, width, generator=gen) < flip  # (N, H, W)
    x = torch.zeros(num_data, height, width, dtype=torch.bool)
    for i in range(height):
        x[:, i, 0] = (x[:, i - 1, 0] if i > 0 else False) ^ flips[:, i, 0]
        for j in range(1, width):
            x[:, i, j] = x[:, i, j - 1] ^ flips[:, i, j]
    k = flips.flatten(1).sum(-1).double()  # (N,) number of flips
    log_px = k * _math.log(flip) + (height * width - k) * _math.log1p(-flip)
    entropy = height * width * _binary_entropy(flip)
    return BinaryImageData(x.float()[:, None], None, log_px, entropy)


def template_images(num_data: int = 1000, num_templates: int = 8, height: int = 8, width: int = 8,
                    flip: float = 0.1, seed: int = 0, kind: str = "gray") -> BinaryImageData:
    """Binary images made of one of ``num_templates`` templates (a global factor of entropy
    log T, 2.08 nats for T = 8) plus local noise: label t ~ Uniform{0, ..., T - 1}, then
    every pixel drawn independently given the template.

    * ``kind="gray"`` (default): template t is the constant gray image of level
      p_t = (t + 1/2) / T and the noise is its binarisation, x_ij ~ Bernoulli(p_t). The
      global factor is the same at every position, so a decoder conditioned on z through
      a position-independent map (van den Oord et al. 2016, Eq. 4) can use it; a decoder
      that sees only a small causal window cannot read it off its few neighbours (``flip``
      is unused).
    * ``kind="random"``: template t is a fixed random binary image (i.i.d. Bernoulli(1/2)
      pixels drawn once from ``seed``), each pixel flipped with probability ``flip``.
      Drawing it from z needs position-dependent conditioning (Eq. 5's spatial map).

    A decoder that sees only a small causal window cannot tell the template from its
    neighbourhood alone, so the global factor is cheaper to send through z (the VLAE
    argument, Chen et al. 2016).

    Returns:
        :class:`BinaryImageData` with labels (N,) and the exact log p(x) =
        logsumexp_t [log(1/T) + sum_ij log p(x_ij | template t)]; ``entropy`` is the mean
        of -log p(x) over the drawn images.

    Raises:
        ValueError: arguments out of range (``num_templates`` >= 1), an unknown ``kind``.
    """
    _check_binary_args(num_data, height, width, flip)
    if num_templates < 1:
        raise ValueError(f"num_templates must be >= 1, got {num_templates}")
    if kind not in ("gray", "random"):
        raise ValueError(f"kind must be 'gray' or 'random', got {kind!r}")
    gen = torch.Generator().manual_seed(int(seed))
    if kind == "gray":
        levels = (torch.arange(num_templates, dtype=torch.float64) + 0.5) / num_templates
        probs = levels[:, None, None].expand(num_templates, height, width)  # (T, H, W)
    else:
        templates = torch.rand(num_templates, height, width, generator=gen) < 0.5
        probs = torch.where(templates, 1 - flip, flip).double()  # (T, H, W)
    labels = torch.randint(0, num_templates, (num_data,), generator=gen)  # (N,)
    x = torch.rand(num_data, height, width, generator=gen, dtype=torch.float64) < probs[labels]
    xf = x.double()[:, None]  # (N, 1, H, W)
    log_lik = (xf * probs.log()[None] + (1 - xf) * torch.log1p(-probs)[None]).flatten(2).sum(-1)  # (N, T)
    log_px = torch.logsumexp(log_lik, -1) - _math.log(num_templates)
    return BinaryImageData(x.float()[:, None], labels, log_px, float(-log_px.mean()))


__all__ += ["BinaryImageData", "pixel_markov_chain", "template_images"]
