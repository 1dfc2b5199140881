"""The discretised likelihood of a pixel-factorised continuous density: each pixel's
density integrated over its intensity bin, and the importance-sampled bound on the
discrete log P(k) it gives.

A latent variable density over y in R^D (y = intensities / L) with a decoder that
factorises over pixels given z, p(y | z) = prod_d p_d(y_d | z), defines the discrete
model of L-level data k obtained by integrating it over each bin (Theis et al. 2016,
sec. 3.1; the discretisation of Salimans et al. 2017, eq. 2, without its open end bins)::

    P(k | z) = int_[0,1)^D p_v(k + u | z) du = prod_d [F_d((k_d + 1) / L | z) - F_d(k_d / L | z)],

F_d the CDF of pixel d: exact per pixel given z, no dequantisation noise. Importance
sampling over z with the guide gives (Burda et al. 2015, eq. 8)::

    log P(k) >= E log (1/K) sum_i P(k | z_i) p(z_i) / q(z_i | k).

This is the same P(k) that a dequantised model of the density (site ``"u"``, scored at
k + u with the L^-D change of variables) bounds through q(u | k); integrating u out
exactly makes this bound the tightest of the three at equal K (a conditional Jensen
step): discretised >= variational dequantisation >= uniform dequantisation (the last
two in expectation, for one trained density).
"""

from __future__ import annotations

from typing import Callable, Optional

import pyro.distributions as dist
import torch
from pyro.poutine.messenger import Messenger
from torch.distributions import constraints

from ..data.levels import to_levels
from ..sites import OBS
from .evaluation import log_marginal_likelihood
from .program import program_kwargs

__all__ = ["DiscretizedDensity", "discretized_log_likelihood", "discretize_observation"]


def _log_normal_bin(loc: torch.Tensor, scale: torch.Tensor, lo: torch.Tensor,
                    hi: torch.Tensor) -> torch.Tensor:
    """log (Phi((hi - loc) / scale) - Phi((lo - loc) / scale)), stable in both tails: bins
    above the mean are mirrored below it, and the difference is computed as
    log Phi(b) + log(1 - exp(log Phi(a) - log Phi(b)))."""
    a = (lo - loc) / scale
    b = (hi - loc) / scale
    upper = a > 0  # the bin lies above the mean: use 1 - Phi(t) = Phi(-t)
    a, b = torch.where(upper, -b, a), torch.where(upper, -a, b)
    la, lb = torch.special.log_ndtr(a), torch.special.log_ndtr(b)
    return lb + torch.log(-torch.expm1(la - lb))


class DiscretizedDensity(dist.TorchDistribution):
    """A pixel-factorised density over y in R^D made a distribution over the L bins
    [k / L, (k + 1) / L), k = 0..L-1, of each pixel::

        log P(k) = sum_d log [F_d((k_d + 1) / L) - F_d(k_d / L)]

    (the probability the density gives to the bins; the mass outside [0, 1) is given to
    no level, so the levels' probabilities sum to at most one, as the discrete model
    that dequantisation bounds).

    Args:
        density: ``Independent`` of a univariate distribution with a ``cdf`` (or a
            univariate one); a ``Normal`` uses the stable log-CDF difference, any other
            ``log(cdf(hi) - cdf(lo))`` clamped at the smallest positive float.
        num_levels: L >= 2.

    ``log_prob(k)``: k (..., *event_shape) integer-valued levels as floats; returns the
    log probability in nats, shape batch_shape. No sampling.

    Raises:
        ValueError: ``num_levels < 2``; a density whose base is not univariate or has no
            ``cdf``.
    """

    arg_constraints = {}
    support = constraints.real
    has_rsample = False

    def __init__(self, density: torch.distributions.Distribution, num_levels: int,
                 validate_args=None):
        if num_levels < 2:
            raise ValueError(f"num_levels must be >= 2, got {num_levels}")
        base, event_ndim = density, 0
        while isinstance(base, torch.distributions.Independent):
            event_ndim += base.reinterpreted_batch_ndims
            base = base.base_dist
        if tuple(base.event_shape) != ():
            raise ValueError(
                f"DiscretizedDensity needs a density that factorises over pixels (a "
                f"univariate distribution made an image with .to_event), got "
                f"{type(base).__name__} with event shape {tuple(base.event_shape)}")
        if not isinstance(base, torch.distributions.Normal):
            try:
                base.cdf(base.mean.detach())
            except NotImplementedError:
                raise ValueError(f"DiscretizedDensity needs each pixel's CDF; "
                                 f"{type(base).__name__} has no cdf") from None
        self.base, self.num_levels, self.event_ndim = base, int(num_levels), event_ndim
        shape = density.batch_shape + density.event_shape
        super().__init__(shape[:len(shape) - event_ndim], shape[len(shape) - event_ndim:],
                         validate_args=False)

    def expand(self, batch_shape, _instance=None):
        shape = torch.Size(batch_shape) + self.event_shape
        base = self.base.expand(shape)
        return DiscretizedDensity(base.to_event(self.event_ndim) if self.event_ndim else base,
                                  self.num_levels)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        lo = value / self.num_levels  # (..., *event) lower bin edges in y units
        hi = (value + 1) / self.num_levels
        if isinstance(self.base, torch.distributions.Normal):
            lp = _log_normal_bin(self.base.loc, self.base.scale, lo, hi)
        else:
            diff = self.base.cdf(hi) - self.base.cdf(lo)
            lp = torch.log(diff.clamp_min(torch.finfo(diff.dtype).tiny))
        return lp.sum(tuple(range(-self.event_ndim, 0))) if self.event_ndim else lp


class _ScoreDiscretized(Messenger):
    """Rescores the observed site ``"x"`` by :class:`DiscretizedDensity` at the levels k."""

    def __init__(self, levels: torch.Tensor, num_levels: int):
        super().__init__()
        self.levels, self.num_levels, self.seen = levels, num_levels, False

    def _pyro_sample(self, msg):
        if msg["name"] != OBS or not msg["is_observed"]:
            return
        fn = msg["fn"]
        event = tuple(self.levels.shape[1:])
        if tuple(fn.event_shape) != event:
            raise ValueError(f"the density model's site '{OBS}' has event shape "
                             f"{tuple(fn.event_shape)}, but the data have {event}; declare "
                             f"the image dims with .to_event({len(event)})")
        msg["fn"] = DiscretizedDensity(fn, self.num_levels)
        msg["value"] = self.levels
        self.seen = True


def discretize_observation(density_model: Callable, num_levels: int) -> Callable:
    """The discrete model P(k, z) = P(k | z) p(z) of a density model, as a Pyro program.

    Args:
        density_model: a Pyro program following :mod:`lvm_pyro.sites` whose observed site
            ``"x"`` is a pixel-factorised density over y = (k + u) / L (e.g. a VAE with a
            Gaussian decoder, the ``density_model`` of a ``DequantizedModel``). It is
            called with the bin centres (k + 1/2) / L as its ``x`` (for its shape and
            support checks), and its ``"x"`` site is rescored by
            :class:`DiscretizedDensity` at the levels k; so it must use ``x`` only as that
            observation.
        num_levels: L >= 2.

    Returns:
        ``program(x, *, num_data=None, idx=None)``, x (batch, *event) quantised data
        (integer levels, or floats on the grid k / (L - 1); :func:`lvm_pyro.data.to_levels`).

    Raises:
        ValueError (when the program runs): x off the grid; no observed site ``"x"``; an
        ``"x"`` that does not factorise over pixels or whose event shape differs from x's.
    """
    if num_levels < 2:
        raise ValueError(f"num_levels must be >= 2, got {num_levels}")

    def program(x: torch.Tensor, *, num_data: Optional[int] = None,
                idx: Optional[torch.Tensor] = None) -> None:
        k = to_levels(x, num_levels, OBS)  # (batch, *event)
        handler = _ScoreDiscretized(k, num_levels)
        with handler:
            density_model((k + 0.5) / num_levels, **program_kwargs(density_model, num_data, idx))
        if not handler.seen:
            raise ValueError(f"the density model has no observed site '{OBS}'; observe the "
                             f"data with pyro.sample('{OBS}', density, obs=x)")

    return program


@torch.no_grad()
def discretized_log_likelihood(density_model: Callable, guide: Callable, x: torch.Tensor,
                               num_levels: int, num_samples: int = 1000,
                               **kwargs) -> torch.Tensor:
    """Importance-sampled bound on the discrete log P(k) of a pixel-factorised density,
    each pixel integrated over its bin (CDF differences: exact per pixel given z)::

        log P(k) >= E log (1/K) sum_i P(k | z_i) p(z_i) / q(z_i | k),
        P(k | z) = prod_d [F_d((k_d + 1) / L | z) - F_d(k_d / L | z)]

    (Burda et al. 2015, eq. 8, on the model of :func:`discretize_observation`; the
    integral over u that dequantisation bounds, Theis et al. 2016, sec. 3.1 and Ho et
    al. 2019, eq. 12, done exactly). It is the discretised likelihood of the *same*
    density a ``DequantizedModel`` dequantises, so at equal K it is >= that model's
    importance-weighted bound with any q(u | k).

    Args:
        density_model: the density program (for a dequantised VAE: its
            ``density_model``, not the ``DequantizedModel``), see
            :func:`discretize_observation`.
        guide: q(z | k) with the density's latent sites only (for a dequantised VAE the
            encoder part of its ``CompositeGuide``, not q(u | k)); called with x as given.
        x: (batch, *event) quantised data: integer levels 0..L-1 or floats on the grid
            k / (L - 1).
        num_levels: L >= 2 (256 for 8-bit data).
        num_samples: K >= 1 importance samples of z per datapoint.
        **kwargs: to :func:`lvm_pyro.inference.log_marginal_likelihood` (``chunk_size``,
            ``num_data``, ``idx``, ``max_plate_nesting``, ``vectorize_particles``).

    Returns:
        (batch,) tensor, nats: a bound on log P(k) of the discrete data (bits/dim =
        -value / (D ln 2), no offset).

    Raises:
        ValueError: ``num_levels < 2``, ``num_samples < 1``, x off the grid, a density
        that does not factorise over pixels, or any error of
        :func:`lvm_pyro.inference.log_marginal_likelihood`.
    """
    return log_marginal_likelihood(discretize_observation(density_model, num_levels), guide,
                                   x, num_samples, **kwargs)

