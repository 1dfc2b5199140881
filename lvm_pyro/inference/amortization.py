"""The amortisation gap (Cremer, Li & Duvenaud 2018, "Inference Suboptimality in
Variational Autoencoders", section 3).

For a fixed decoder p_theta and a guide family Q (diagonal Gaussians here),

    log p(x) - ELBO[q_phi(. | x)]
      = (log p(x) - ELBO[q*_x])          approximation gap: Q cannot hold p(z | x)
      + (ELBO[q*_x] - ELBO[q_phi(. | x)])  amortisation gap: the encoder's output is not
                                            the best member of Q for this x

where q*_x is the member of Q with the highest ELBO for x alone (found here by optimising
a per-datapoint guide such as :class:`lvm_pyro.guides.LocalNormalGuide` with the decoder
frozen), and log p(x) is estimated by the K-sample IWAE bound with q*_x as the proposal.
Nothing here imports :mod:`lvm_pyro.models` or :mod:`lvm_pyro.guides`: any model, any
amortised guide and any guide whose parameters are per-datapoint work.
"""

from __future__ import annotations

from typing import Callable, NamedTuple, Optional

import torch
from pyro.infer import Trace_ELBO

from .evaluation import elbo_per_datapoint, log_marginal_likelihood
from .log_weights import guess_max_plate_nesting
from .program import adapt_program, param_tensors, trace_program

__all__ = ["fit_local_guide", "AmortizationGap", "amortization_gap"]


def _guide_params(guide: Callable, x: torch.Tensor) -> list[torch.Tensor]:
    """The unconstrained parameters that ``guide`` reads (from one traced run)."""
    with torch.no_grad():
        tr = trace_program(guide, x)
    params = list(param_tensors(tr).values())
    if not params:
        raise ValueError("the local guide reads no parameters (pyro.param / PyroParam); "
                         "nothing to optimise")
    return params


def fit_local_guide(model: Callable, local_guide: Callable, x: torch.Tensor, *,
                    num_steps: int = 500, lr: float = 0.02, num_particles: int = 1,
                    final_lr_ratio: float = 0.1, max_plate_nesting: int = 1) -> list[float]:
    """Maximise the ELBO of ``local_guide`` on x with the model's parameters frozen.

    Every parameter the guide reads is optimised by Adam on the Trace_ELBO surrogate of the
    whole of x (one step = all datapoints, ``idx=None``); gradients are taken with
    ``torch.autograd.grad`` with respect to the guide's parameters only, so the model
    (decoder) is untouched. Per-datapoint parameters make the optimisation of each
    datapoint independent: this is non-amortised inference (lecture section 3).

    Args:
        model: Pyro program following :mod:`lvm_pyro.sites`.
        local_guide: a guide with per-datapoint parameters (e.g.
            :class:`lvm_pyro.guides.LocalNormalGuide`) for exactly the rows of x.
        x: (batch, ...) observations, in the order of the guide's rows.
        num_steps: optimisation steps (>= 0).
        lr: initial Adam learning rate (> 0).
        num_particles: samples per datapoint in each step's ELBO estimate (vectorised).
        final_lr_ratio: the learning rate decays geometrically to ``lr * final_lr_ratio``
            at the last step (in (0, 1]; 1 keeps it constant), which quiets Adam's noise
            around the optimum.
        max_plate_nesting: plates used by model and guide.

    Returns:
        the loss (negative ELBO, nats per datapoint) after each step.

    Raises:
        ValueError: bad arguments, or a guide without parameters.
    """
    if num_steps < 0:
        raise ValueError(f"num_steps must be >= 0, got {num_steps}")
    if lr <= 0:
        raise ValueError(f"lr must be > 0, got {lr}")
    if num_particles < 1:
        raise ValueError(f"num_particles must be >= 1, got {num_particles}")
    if not 0 < final_lr_ratio <= 1:
        raise ValueError(f"final_lr_ratio must be in (0, 1], got {final_lr_ratio}")
    params = _guide_params(local_guide, x)
    optim = torch.optim.Adam(params, lr=lr)
    gamma = final_lr_ratio ** (1.0 / max(1, num_steps - 1))
    sched = torch.optim.lr_scheduler.ExponentialLR(optim, gamma)
    elbo = Trace_ELBO(num_particles=num_particles, vectorize_particles=num_particles > 1,
                      max_plate_nesting=max_plate_nesting)
    model_fn, guide_fn = adapt_program(model), adapt_program(local_guide)

    losses = []
    for _ in range(num_steps):
        loss = elbo.differentiable_loss(model_fn, guide_fn, x) / x.shape[0]
        grads = torch.autograd.grad(loss, params)
        for p, g in zip(params, grads):
            p.grad = g
        optim.step()
        optim.zero_grad(set_to_none=True)
        sched.step()
        losses.append(float(loss.detach()))
    return losses


class AmortizationGap(NamedTuple):
    """Per-datapoint decomposition of the inference gap (Cremer et al. 2018, eq. 5-6), nats.

    Attributes:
        elbo_amortized: (batch,) ELBO with the amortised guide q_phi(z | x_i).
        elbo_local: (batch,) ELBO with the per-datapoint optimised guide q*_i.
        log_px: (batch,) IWAE estimate of log p(x_i) (K samples, q*_i as the proposal):
            the reference.
        losses: the local optimisation's loss per step (nats per datapoint).

    ``amortization_gap`` = elbo_local - elbo_amortized, ``approximation_gap`` =
    log_px - elbo_local, ``inference_gap`` = their sum = log_px - elbo_amortized.
    """

    elbo_amortized: torch.Tensor
    elbo_local: torch.Tensor
    log_px: torch.Tensor
    losses: list

    @property
    def amortization_gap(self) -> torch.Tensor:
        return self.elbo_local - self.elbo_amortized

    @property
    def approximation_gap(self) -> torch.Tensor:
        return self.log_px - self.elbo_local

    @property
    def inference_gap(self) -> torch.Tensor:
        return self.log_px - self.elbo_amortized


def amortization_gap(model: Callable, amortized_guide: Callable, local_guide: Callable,
                     x: torch.Tensor, *, num_steps: int = 500, lr: float = 0.02,
                     num_particles: int = 1, final_lr_ratio: float = 0.1,
                     num_samples: int = 100,
                     iwae_num_samples: int = 1000,
                     max_plate_nesting: Optional[int] = None) -> AmortizationGap:
    """Measure the amortisation and approximation gaps of a trained model on x.

    Steps: (1) ELBO of ``amortized_guide`` per datapoint; (2) :func:`fit_local_guide` on
    the same points, the model frozen; (3) its ELBO; (4) the IWAE bound with
    ``iwae_num_samples`` samples from the optimised local guide (Burda et al. 2015, eq. 8),
    as the estimate of log p(x).

    Args:
        model: trained Pyro model (its parameters are not changed).
        amortized_guide: the trained encoder guide.
        local_guide: a fresh per-datapoint guide for exactly the rows of x (a warm start
            from the encoder's output is allowed; then (2) can only raise its ELBO).
        x: (batch, ...) test points.
        num_steps, lr, num_particles, final_lr_ratio: of the local optimisation
            (:func:`fit_local_guide`).
        num_samples: samples per datapoint for each ELBO estimate.
        iwae_num_samples: K of the IWAE reference.

    Returns:
        :class:`AmortizationGap` (tensors of shape (batch,), nats).
    """
    if num_samples < 1 or iwae_num_samples < 1:
        raise ValueError(f"num_samples and iwae_num_samples must be >= 1, got "
                         f"{num_samples} and {iwae_num_samples}")
    if max_plate_nesting is None:
        max_plate_nesting = guess_max_plate_nesting(model, amortized_guide, x)
    elbo_amortized = elbo_per_datapoint(model, amortized_guide, x, num_samples,
                                        max_plate_nesting=max_plate_nesting)
    losses = fit_local_guide(model, local_guide, x, num_steps=num_steps, lr=lr,
                             num_particles=num_particles, final_lr_ratio=final_lr_ratio,
                             max_plate_nesting=max_plate_nesting)
    elbo_local = elbo_per_datapoint(model, local_guide, x, num_samples,
                                    max_plate_nesting=max_plate_nesting)
    log_px = log_marginal_likelihood(model, local_guide, x, iwae_num_samples,
                                     max_plate_nesting=max_plate_nesting)
    return AmortizationGap(elbo_amortized, elbo_local, log_px, losses)
