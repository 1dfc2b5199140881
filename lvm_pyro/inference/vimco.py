"""VIMCO: the multi-sample score-function estimator with leave-one-out baselines
(Mnih & Rezende 2016, "Variational inference for Monte Carlo objectives").

For each datapoint x_i and K particles z_k ~ q(. | x_i), with
log w_k = log p(x_i, z_k) - log q(z_k | x_i) read from the log-weight engine
(:func:`lvm_pyro.inference.log_weights`),

    L-hat = log (1/K) sum_j w_j                                  (the IWAE estimate)
    L_K   = E[L-hat]                                             (Burda et al. 2015, eq. 8)

and the gradient estimate (Mnih & Rezende 2016, eq. 5 with the baselines of eq. 10)

    grad L-hat ~= sum_k (L-hat - L-hat_{-k}) grad log q(z_k | x_i)    [score terms]
                 + sum_k w~_k grad log w_k                           [pathwise terms]

    L-hat_{-k} = log (1/K) ( sum_{j != k} w_j + w-hat_{-k} ),
    log w-hat_{-k} = (1 / (K - 1)) sum_{j != k} log w_j               (geometric mean)

with w~_k = w_k / sum_j w_j. The baseline L-hat_{-k} does not depend on z_k, so the
estimator is unbiased for grad L_K (the score term of particle k is multiplied by a
signal whose z_k-free part integrates to zero against grad log q(z_k)). For
reparameterisable guide sites the pathwise term already carries their gradient and no
score term is added (the IWAE estimator for them).

The value reported by :meth:`VIMCO.loss` is always the negative bound
-(N / B) sum_i L-hat(x_i), never the surrogate.
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple, Optional

import torch
from pyro.poutine.trace_struct import Trace

from .evaluation import logmeanexp
from .log_weights import site_log_prob_per_datapoint, weights_from_traces
from .particle_elbo import ParticleELBO, auxiliary_log_factor
from .program import warn_if_nan, weighted_sites

__all__ = ["VIMCO", "VIMCOForward", "leave_one_out_baselines", "vimco_surrogate"]


def leave_one_out_baselines(log_w: torch.Tensor) -> torch.Tensor:
    """VIMCO's per-particle baselines L-hat_{-k} (Mnih & Rezende 2016, eq. 10, the
    geometric-mean variant): the IWAE estimate with w_k replaced by the geometric mean
    of the other K - 1 weights.

    Args:
        log_w: (K, batch) log weights, K >= 2, any floating dtype.

    Returns:
        (K, batch) tensor, nats; entry k depends on every particle except k.

    Raises:
        ValueError: K < 2 or ``log_w`` not 2-D.
    """
    if log_w.dim() != 2:
        raise ValueError(f"log_w must be (K, batch), got shape {tuple(log_w.shape)}")
    K = log_w.shape[0]
    if K < 2:
        raise ValueError(f"leave-one-out baselines need K >= 2 particles, got {K}")
    loo_mean = (log_w.sum(0, keepdim=True) - log_w) / (K - 1)  # (K, batch): mean_{j != k} log w_j
    # (K, K, batch): row k is log_w with entry k replaced by loo_mean[k]
    eye = torch.eye(K, dtype=torch.bool, device=log_w.device).unsqueeze(-1)  # (K, K, 1)
    rows = torch.where(eye, loo_mean.unsqueeze(1), log_w.unsqueeze(0))
    return torch.logsumexp(rows, dim=1) - math.log(K)


def vimco_surrogate(log_w: torch.Tensor, log_q_score: Optional[torch.Tensor]) -> torch.Tensor:
    """Per-datapoint VIMCO surrogate whose gradient is the VIMCO estimate of grad L_K.

        surrogate_i = L-hat_i + sum_k stopgrad(L-hat_i - L-hat_{-k,i}) log q(z_k | x_i)

    Args:
        log_w: (K, batch) log weights, differentiable (pathwise terms), K >= 2.
        log_q_score: (K, batch) summed log q of the guide sites that are *not*
            reparameterisable (their score terms), or ``None`` when there are none.

    Returns:
        (batch,) tensor; its value is not the bound (use ``logmeanexp(log_w)`` for that).
    """
    bound = torch.logsumexp(log_w, dim=0) - math.log(log_w.shape[0])  # (batch,)
    if log_q_score is None:
        return bound
    signal = (bound.unsqueeze(0) - leave_one_out_baselines(log_w)).detach()  # (K, batch)
    return bound + (signal * log_q_score).sum(0)


class VIMCOForward(NamedTuple):
    """One vectorised pass of :class:`VIMCO` (from :meth:`VIMCO.forward`).

    Attributes:
        log_w: (K, batch) log weights, nats, unscaled, differentiable (pathwise route).
        log_q_score: (K, batch) summed log q of non-reparameterisable guide sites, or
            ``None``.
        auxiliary: scalar, the scaled auxiliary log factors averaged over particles.
        data_scale: N / batch of the data plate.
        model_trace, guide_trace: the traces.
    """

    log_w: torch.Tensor
    log_q_score: Optional[torch.Tensor]
    auxiliary: torch.Tensor
    data_scale: float
    model_trace: Trace
    guide_trace: Trace


class VIMCO(ParticleELBO):
    """VIMCO (Mnih & Rezende 2016) as a Pyro ``ELBO``: value = the K-sample IWAE bound,
    gradient = the leave-one-out score-function estimator (module docstring), unbiased
    for grad L_K. Made for discrete latents (e.g. :class:`~lvm_pyro.models.
    SigmoidBeliefNetModel`); reparameterisable guide sites get pathwise gradients.

    ``loss(model, guide, x, num_data=N, idx=idx)`` returns -(N / B) sum_i L-hat(x_i)
    (float, nats; minus the auxiliary factors, averaged over particles, if the programs
    have any). ``loss_and_grads`` back-propagates the surrogate into ``.grad`` and
    returns the loss; ``differentiable_loss`` returns a scalar whose value is the loss
    and whose gradient is the VIMCO estimate.

    Args:
        num_particles: K >= 2 (the baselines leave one particle out).
        max_plate_nesting: plate dims the programs use; found once when ``None``.
        vectorize_particles: ``False`` runs the K particles one at a time (for programs
            that do not broadcast over a leading particle dimension; slower).

    Raises:
        ValueError: at construction, K < 2; on a call, the engine's errors (a latent
            outside the ``"data"`` plate, a site scaled by ``poutine.scale`` such as a
            beta, a model latent the guide lacks).
    """

    def __init__(self, num_particles: int = 2, *, max_plate_nesting: Optional[int] = None,
                 vectorize_particles: bool = True):
        super().__init__(num_particles, max_plate_nesting=max_plate_nesting, min_particles=2,
                         why=" for its leave-one-out baselines",
                         vectorize_particles=vectorize_particles)

    def __repr__(self) -> str:
        return f"VIMCO(num_particles={self.num_particles})"

    def forward(self, model: Callable, guide: Callable, *args, **kwargs) -> VIMCOForward:
        """Guide and model over K particles (one vectorised pass, or K passes with
        ``vectorize_particles=False``): see :class:`VIMCOForward`. ``args[0]`` is x
        (batch, ...)."""
        x, num_data, idx, model, guide, nesting = self._prepare(model, guide, args, kwargs)
        batch = x.shape[0]
        parts = []
        for model_trace, guide_trace, K in self._passes(model, guide, x, num_data, idx, nesting):
            lw = weights_from_traces(model_trace, guide_trace, batch, K, nesting)
            log_q_score = None
            for _, site in weighted_sites(guide_trace):  # latents, guide factors
                if getattr(site["fn"], "has_rsample", False):
                    continue
                lq = site_log_prob_per_datapoint(site, K, batch, nesting)  # (K, batch)
                log_q_score = lq if log_q_score is None else log_q_score + lq
            aux = auxiliary_log_factor((model_trace, guide_trace), K, lw.log_w)
            parts.append(VIMCOForward(lw.log_w, log_q_score, aux, lw.data_scale,
                                      model_trace, guide_trace))
        first = parts[0]
        if len(parts) == 1:
            return first
        score = None if first.log_q_score is None else torch.cat([p.log_q_score for p in parts])
        return VIMCOForward(torch.cat([p.log_w for p in parts]), score,
                            sum(p.auxiliary for p in parts) / len(parts), first.data_scale,
                            first.model_trace, first.guide_trace)

    @staticmethod
    def bound(log_w: torch.Tensor) -> torch.Tensor:
        """log (1/K) sum_k w_k per datapoint: (K, batch) -> (batch,), nats."""
        return logmeanexp(log_w, dim=0)

    def _elbo(self, f: VIMCOForward) -> torch.Tensor:
        return f.data_scale * self.bound(f.log_w).sum() + f.auxiliary

    def _surrogate(self, f: VIMCOForward) -> torch.Tensor:
        return f.data_scale * vimco_surrogate(f.log_w, f.log_q_score).sum() + f.auxiliary

    @torch.no_grad()
    def loss(self, model: Callable, guide: Callable, *args, **kwargs) -> float:
        """-(N / B) sum_i L-hat(x_i), float, nats (no gradients)."""
        loss = -float(self._elbo(self.forward(model, guide, *args, **kwargs)))
        return warn_if_nan(loss, "VIMCO loss")

    def differentiable_loss(self, model: Callable, guide: Callable, *args, **kwargs) -> torch.Tensor:
        """Scalar tensor: value = :meth:`loss`, gradient = the VIMCO estimate of
        -grad (N / B) sum_i L_K(x_i)."""
        f = self.forward(model, guide, *args, **kwargs)
        surrogate = self._surrogate(f)
        return -self._elbo(f).detach() + (surrogate.detach() - surrogate)

    def loss_and_grads(self, model: Callable, guide: Callable, *args, **kwargs) -> float:
        """Accumulate the VIMCO gradient of the loss into ``.grad``; return the loss."""
        loss = self.differentiable_loss(model, guide, *args, **kwargs)
        if loss.requires_grad:
            loss.backward()
        return warn_if_nan(float(loss.detach()), "VIMCO loss")
