"""Importance sampling of log p(x) with a chosen proposal, and its effective sample size.

Lecture section 3: for z_k ~ q(. | x) i.i.d.,

    p(x) = E_q[ p(x, z) / q(z | x) ]   so   log p(x) ~= log (1/K) sum_k w_k,
    w_k = p(x, z_k) / q(z_k | x).

The average of the weights is unbiased for p(x); its log is biased low (Jensen) and is the
K-sample IWAE bound (Burda et al. 2015, eq. 8). How good the proposal q is shows in the
importance-sampling effective sample size of the normalised weights
w~_k = w_k / sum_j w_j (Kong 1992; Owen 2013, "Monte Carlo theory, methods and examples",
eq. 9.13)::

    ESS = 1 / sum_k w~_k^2 = (sum_k w_k)^2 / sum_k w_k^2,   1 <= ESS <= K,

K when all weights are equal (q = p(z | x)), 1 when one weight dominates. (This is not
the autocorrelation ESS of MCMC.) Any program following :mod:`lvm_pyro.sites` can be the
proposal: an amortised guide, the exact posterior where known, or the helpers here:
:func:`prior_proposal` (z from the model's own prior) and :func:`fixed_normal_proposal`
(one Gaussian for every x). Everything reads from :func:`lvm_pyro.inference.log_weights`.
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple, Optional

import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import torch

from ..sites import LATENT, data_plate
from .program import adapt_program
from .evaluation import iter_log_weights

__all__ = ["effective_sample_size", "ImportanceEstimate", "importance_estimate",
           "RepeatedEstimates", "repeated_importance_estimates", "prior_proposal",
           "fixed_normal_proposal"]


def effective_sample_size(log_w: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """Importance-sampling ESS = 1 / sum_k w~_k^2 of the normalised weights along ``dim``.

    Computed from log weights as exp(2 logsumexp(log_w) - logsumexp(2 log_w)), stable for
    weights spanning hundreds of nats (Owen 2013, eq. 9.13).

    Args:
        log_w: log importance weights (any shape), nats; K = ``log_w.shape[dim]``.
        dim: the sample dimension.

    Returns:
        ESS with ``dim`` removed, in [1, K] (NaN where every weight is 0, i.e. all -inf).
    """
    return torch.exp(2 * torch.logsumexp(log_w, dim=dim) - torch.logsumexp(2 * log_w, dim=dim))


class ImportanceEstimate(NamedTuple):
    """Result of :func:`importance_estimate`.

    Attributes:
        log_px: (batch,) log (1/K) sum_k w_k, nats: the estimate of log p(x_i).
        ess: (batch,) importance-sampling ESS of the K weights, in [1, K].
        num_samples: K.
        log_w: (K, batch) the log weights when ``keep_log_w`` was set, else ``None``.
    """

    log_px: torch.Tensor
    ess: torch.Tensor
    num_samples: int
    log_w: Optional[torch.Tensor]

    @property
    def ess_fraction(self) -> torch.Tensor:
        """(batch,) ESS / K in [1/K, 1]: near 1 for a proposal close to p(z | x), near 1/K
        when one sample carries all the weight (the estimate is then unreliable)."""
        return self.ess / self.num_samples


@torch.no_grad()
def importance_estimate(model: Callable, proposal: Callable, x: torch.Tensor,
                        num_samples: int = 1000, *, chunk_size: Optional[int] = None,
                        num_data: Optional[int] = None, idx: Optional[torch.Tensor] = None,
                        max_plate_nesting: Optional[int] = None,
                        keep_log_w: bool = False) -> ImportanceEstimate:
    """Estimate log p(x_i) by importance sampling with ``proposal``, with its ESS.

    log p(x_i) ~= log (1/K) sum_k p(x_i, z_k) / q(z_k | x_i),  z_k ~ q(. | x_i)
    (lecture section 3; Burda et al. 2015, eq. 8). The weights come from
    :func:`lvm_pyro.inference.log_weights` with the proposal as the guide; the particles
    are drawn in chunks and combined with running logsumexps of log w and 2 log w, so the
    memory is O(chunk x batch) and neither result depends on the chunking beyond rounding.

    Args:
        model: Pyro program following :mod:`lvm_pyro.sites`.
        proposal: a guide with the model's latent site names: e.g. an amortised guide,
            an exact posterior, :func:`prior_proposal` or :func:`fixed_normal_proposal`.
        x: (batch, ...) observations.
        num_samples: K >= 1 samples per datapoint.
        chunk_size: particles per vectorised pass (default: as many as keep particles x
            data elements under
            :func:`lvm_pyro.inference.evaluation.default_element_budget`).
        num_data, idx: passed to the programs (the data plate); unscaled log weights are
            used either way.
        keep_log_w: also return the (K, batch) log weights (memory O(K x batch)).

    Returns:
        :class:`ImportanceEstimate`; ``log_px`` in nats in x's floating dtype.

    Raises:
        ValueError: ``num_samples < 1`` or any error of
            :func:`lvm_pyro.inference.log_weights` (e.g. an enumerated site).
    """
    lse = lse2 = None
    kept = []
    for out in iter_log_weights(model, proposal, x, num_samples, chunk_size=chunk_size,
                                num_data=num_data, idx=idx, max_plate_nesting=max_plate_nesting):
        lw = out.log_w  # (k, batch)
        a, b = torch.logsumexp(lw, dim=0), torch.logsumexp(2 * lw, dim=0)
        lse = a if lse is None else torch.logaddexp(lse, a)
        lse2 = b if lse2 is None else torch.logaddexp(lse2, b)
        if keep_log_w:
            kept.append(lw)
        del out, lw  # the chunk's traces: freed before the next chunk runs
    log_px = lse - math.log(num_samples)
    ess = torch.exp(2 * lse - lse2)
    return ImportanceEstimate(log_px, ess, int(num_samples),
                              torch.cat(kept, dim=0) if keep_log_w else None)


class RepeatedEstimates(NamedTuple):
    """Result of :func:`repeated_importance_estimates`.

    Attributes:
        log_px: (num_repeats, batch) independent estimates of log p(x_i), nats.
        ess: (num_repeats, batch) their importance-sampling ESS.
        num_samples: K per estimate.
    """

    log_px: torch.Tensor
    ess: torch.Tensor
    num_samples: int

    @property
    def mean(self) -> torch.Tensor:
        """(batch,) mean estimate over repeats, nats."""
        return self.log_px.mean(0)

    @property
    def std(self) -> torch.Tensor:
        """(batch,) spread (sample standard deviation) of the estimate over repeats, nats;
        NaN for a single repeat."""
        if self.log_px.shape[0] < 2:
            return torch.full_like(self.log_px[0], float("nan"))
        return self.log_px.std(0, unbiased=True)


@torch.no_grad()
def repeated_importance_estimates(model: Callable, proposal: Callable, x: torch.Tensor,
                                  num_samples: int = 1000, num_repeats: int = 10,
                                  **kwargs) -> RepeatedEstimates:
    """Run :func:`importance_estimate` ``num_repeats`` times with fresh samples, to see the
    estimator's spread: a good proposal gives repeats that agree (zero spread for the exact
    posterior); a poor one gives scattered estimates, mostly far below log p(x).

    Args:
        num_repeats: R >= 1. Other arguments as for :func:`importance_estimate`.

    Returns:
        :class:`RepeatedEstimates` with (R, batch) tensors.

    Raises:
        ValueError: ``num_repeats < 1`` or as :func:`importance_estimate`.
    """
    if num_repeats < 1:
        raise ValueError(f"num_repeats must be >= 1, got {num_repeats}")
    kwargs.pop("keep_log_w", None)
    runs = [importance_estimate(model, proposal, x, num_samples, **kwargs)
            for _ in range(num_repeats)]
    return RepeatedEstimates(torch.stack([r.log_px for r in runs]),
                             torch.stack([r.ess for r in runs]), int(num_samples))


def _is_observation(msg: dict) -> bool:
    return msg["type"] == "sample" and bool(msg.get("is_observed", False))


def prior_proposal(model: Callable) -> Callable:
    """The model's own prior as proposal: q(z | x) = p(z).

    Returns a guide that runs ``model`` with its observed sites (and auxiliary factors)
    hidden, so its trace holds the latents drawn from the prior under the model's site
    names. Then w_k = p(x | z_k): the naive estimator of lecture section 3, which fails
    when z has many values or dimensions (almost no z_k explains x; ESS near 1).

    Args:
        model: Pyro program following :mod:`lvm_pyro.sites`, with no enumerated sites.

    Returns:
        ``proposal(x, *, num_data=None, idx=None)``.
    """
    hidden = poutine.block(adapt_program(model), hide_fn=_is_observation)

    def proposal(x: torch.Tensor, *, num_data: Optional[int] = None,
                 idx: Optional[torch.Tensor] = None):
        return hidden(x, num_data, idx)

    proposal.__name__ = "prior_proposal"
    return proposal


def fixed_normal_proposal(loc: float | torch.Tensor, scale: float | torch.Tensor,
                          z_dim: Optional[int] = None, site: str = LATENT) -> Callable:
    """One diagonal Gaussian for every datapoint: q(z | x) = N(z; loc, diag(scale^2)).

    Args:
        loc, scale: (z_dim,) tensors or scalars (scale > 0), broadcast together.
        z_dim: the latent size; needed when both are scalars.
        site: the latent site's name (default ``"z"``).

    Returns:
        ``proposal(x, *, num_data=None, idx=None)`` that samples ``site`` inside the
        ``"data"`` plate, with event shape (z_dim,), in x's dtype.

    Raises:
        ValueError: non-positive scale, or no way to tell z_dim.
    """
    loc = torch.as_tensor(loc, dtype=torch.float64)
    scale = torch.as_tensor(scale, dtype=torch.float64)
    if not bool((scale > 0).all()):
        raise ValueError("scale must be > 0")
    shape = torch.broadcast_shapes(loc.shape, scale.shape)
    if len(shape) > 1:
        raise ValueError(f"loc and scale must be scalars or (z_dim,) vectors, got {tuple(shape)}")
    if z_dim is None:
        if not shape:
            raise ValueError("loc and scale are scalars: pass z_dim")
        z_dim = shape[0]
    loc, scale = loc.expand(z_dim).clone(), scale.expand(z_dim).clone()

    def proposal(x: torch.Tensor, *, num_data: Optional[int] = None,
                 idx: Optional[torch.Tensor] = None):
        dtype = x.dtype if torch.is_floating_point(x) else torch.get_default_dtype()
        q = dist.Normal(loc.to(x.device, dtype), scale.to(x.device, dtype)).to_event(1)
        with data_plate(x, num_data, idx):
            return pyro.sample(site, q)

    proposal.__name__ = "fixed_normal_proposal"
    return proposal
