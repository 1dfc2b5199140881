"""Simulation-based calibration of an amortised guide (Talts, Betancourt, Simpson, Vehtari
& Gelman 2018, "Validating Bayesian inference algorithms with simulation-based
calibration", algorithm 1).

For n = 1..N: draw z~_n ~ p(z) and x~_n ~ p(x | z~_n) from the model, then L draws
z_l ~ q(z | x~_n) from the guide, and the rank r_n = #{l : z_l < z~_n} in {0, ..., L}
(ties, as discrete latents have, broken uniformly at random)
per latent coordinate. If q(z | x) equals the posterior p(z | x), the ranks are uniform
on {0, ..., L} (Talts et al., theorem 1). A guide that is too narrow gives a U-shaped
histogram, one too wide a hump, a biased one a slope. Guide draws are independent, so no
thinning is needed (Talts et al. thin MCMC draws to remove autocorrelation).

Uniformity is tested per coordinate with a chi-square test on ``num_bins`` equal bins of
the ranks (L + 1 must be divisible by ``num_bins``), and across coordinates with a
Bonferroni correction (the smallest p-value times the number of coordinates, capped at 1).
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import numpy as np
import pyro
import pyro.poutine as poutine
import torch

from ..inference.program import trace_program
from ..sites import LATENT, OBS
from .importance import particles_by_datapoint

__all__ = ["SBCResult", "simulation_based_calibration", "rank_uniformity_pvalue"]


class SBCResult(NamedTuple):
    """Ranks and uniformity tests of simulation-based calibration.

    Attributes:
        ranks: (num_simulations, *event_shape) int64 ranks in {0, ..., num_draws}.
        num_draws: L guide draws per simulation.
        num_bins: bins of the chi-square test.
        counts: (num_bins, *event_shape) rank histogram.
        pvalues: (*event_shape,) chi-square p-values per coordinate.
        pvalue: Bonferroni-combined p-value (min p x number of coordinates, <= 1).
    """

    ranks: torch.Tensor
    num_draws: int
    num_bins: int
    counts: torch.Tensor
    pvalues: torch.Tensor
    pvalue: float


def rank_uniformity_pvalue(ranks: torch.Tensor, num_draws: int, num_bins: int = 10
                           ) -> tuple[torch.Tensor, torch.Tensor]:
    """Chi-square test that ranks in {0, ..., L} are uniform, per column.

    Args:
        ranks: (N, ...) integer ranks.
        num_draws: L; (L + 1) must be a multiple of ``num_bins``.
        num_bins: equal-width bins (each holds (L + 1) / num_bins rank values).

    Returns:
        ``(counts, pvalues)``: counts (num_bins, ...) and p-values (...), float64.

    Raises:
        ValueError: (L + 1) not divisible by ``num_bins``, or fewer than 2 bins.
    """
    from scipy.stats import chisquare

    if num_bins < 2 or (num_draws + 1) % num_bins:
        raise ValueError(f"num_draws + 1 = {num_draws + 1} must be a multiple of num_bins="
                         f"{num_bins} (>= 2); e.g. num_draws=99 with 10 bins")
    width = (num_draws + 1) // num_bins
    r = ranks.reshape(ranks.shape[0], -1).long()
    bins = torch.div(r, width, rounding_mode="floor")  # (N, C)
    counts = torch.stack([(bins == b).sum(0) for b in range(num_bins)])  # (num_bins, C)
    p = chisquare(counts.double().numpy(), axis=0).pvalue
    return (counts.reshape(num_bins, *ranks.shape[1:]),
            torch.as_tensor(np.asarray(p), dtype=torch.float64).reshape(ranks.shape[1:]))


@torch.no_grad()
def simulation_based_calibration(model: Callable, guide: Callable, x_template: torch.Tensor, *,
                                 num_draws: int = 99, num_bins: int = 10, latent: str = LATENT,
                                 max_plate_nesting: int = 1) -> SBCResult:
    """Simulation-based calibration of ``guide`` against ``model`` (Talts et al. 2018).

    The model is run *unconditioned* (``poutine.uncondition``) on ``x_template``, so it
    draws z~ from its prior and x~ from p(x | z~), one per row; the template fixes only the
    batch size and shapes (and passes the model's input checks). The guide then draws
    ``num_draws`` latents per simulated x~ (vectorised).

    Args:
        model, guide: Pyro programs following :mod:`lvm_pyro.sites`.
        x_template: (num_simulations, ...) any observations of the right shape.
        num_draws: L guide draws per simulation (99: ranks in 0..99, 10 bins of 10).
        num_bins: chi-square bins; (L + 1) % num_bins == 0.
        latent: latent site.

    Returns:
        :class:`SBCResult`.

    Raises:
        ValueError: bad ``num_draws`` / ``num_bins``, or no site ``latent`` / ``"x"``.
    """
    if num_draws < 1:
        raise ValueError(f"num_draws must be >= 1, got {num_draws}")
    if num_bins < 2 or (num_draws + 1) % num_bins:
        raise ValueError(f"num_draws + 1 = {num_draws + 1} must be a multiple of num_bins="
                         f"{num_bins} (>= 2); e.g. num_draws=99 with 10 bins")
    trace = trace_program(poutine.uncondition(model), x_template, keywords_of=model)
    for name in (latent, OBS):
        if name not in trace.nodes:
            raise ValueError(f"the model has no sample site {name!r}")
    z_true = trace.nodes[latent]["value"]  # (N, *event)
    x_sim = trace.nodes[OBS]["value"].to(x_template.dtype)  # (N, ...)
    with poutine.block(), pyro.plate("_sbc_draws", num_draws, dim=-(max_plate_nesting + 1)):
        gt = trace_program(guide, x_sim, block=False)
    site = gt.nodes[latent]
    z = particles_by_datapoint(site["value"], site["fn"].event_dim, num_draws, x_sim.shape[0],
                               max_plate_nesting, latent)  # (L, N, *event)
    # ties (discrete latents) are broken uniformly at random, so that ranks stay uniform
    # under a calibrated guide: r = #{z_l < z~} + U{0, ..., #{z_l == z~}}
    less = (z < z_true.unsqueeze(0)).sum(0)  # (N, *event)
    ties = (z == z_true.unsqueeze(0)).sum(0)
    u = torch.rand(ties.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    ranks = less + torch.floor(u * (ties + 1).double()).long()
    counts, pvalues = rank_uniformity_pvalue(ranks, num_draws, num_bins)
    pvalue = float(min(1.0, float(pvalues.min()) * pvalues.numel()))
    return SBCResult(ranks, num_draws, num_bins, counts, pvalues, pvalue)
