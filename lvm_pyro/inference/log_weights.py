"""The engine: per-datapoint importance log weights of any model / guide pair.

Every estimator in :mod:`lvm_pyro.inference` (ELBO per datapoint, IWAE bound, log p(x)
estimates, VIMCO baselines, PSIS / ESS diagnostics) reads from the one tensor computed
here (``shared/docs/DESIGN.md``)::

    log w[k, i] = log p(x_i, z_k) - log q(z_k | x_i),   z_k ~ q(. | x_i)   (IWAE eq. 8)

The guide runs under a vectorised particle plate (outside the data plate), the model is
replayed on the guide's trace, and each site's *unscaled* ``log_prob`` is summed per
datapoint, keeping the ``"data"`` plate's dimension.
"""

from __future__ import annotations

from typing import Callable, NamedTuple, Optional

import torch
from pyro.distributions.util import scale_and_mask
from pyro.poutine.trace_struct import Trace

from .program import (ProgramContractError, check_shapes, data_plate_frame, discover,
                      is_auxiliary_site, outside_data_plate, plate_scale,
                      trace_guide_then_model, weighted_sites)

__all__ = ["LogWeights", "log_weights", "guess_max_plate_nesting", "run_vectorized",
           "site_log_prob_per_datapoint", "is_auxiliary_site", "plate_scale",
           "weights_from_traces"]


class LogWeights(NamedTuple):
    """Output of :func:`log_weights`.

    Attributes:
        log_w: (num_particles, batch) log p(x_i, z_k) - log q(z_k | x_i) in nats,
            unscaled by the data plate (no N/B factor).
        data_scale: N / batch of the ``"data"`` plate (1.0 when not subsampled); callers
            multiply sums over datapoints by it, outside any log-mean-exp.
        model_trace: the replayed model trace (vectorised over particles; with
            ``vectorize_particles=False`` the last particle's).
        guide_trace: the guide trace (likewise).
    """

    log_w: torch.Tensor
    data_scale: float
    model_trace: Trace
    guide_trace: Trace


def guess_max_plate_nesting(model: Callable, guide: Callable, x: torch.Tensor,
                            num_data: Optional[int] = None,
                            idx: Optional[torch.Tensor] = None) -> int:
    """Deepest plate nesting (number of batch dims) in model and guide, found by one
    checked, unvectorised run of both (no gradients, RNG states restored; see
    :func:`lvm_pyro.inference.program.discover`, whose contract errors it raises).
    Returns an int >= 1."""
    return discover(model, guide, x, num_data=num_data, idx=idx).max_plate_nesting


def run_vectorized(model: Callable, guide: Callable, x: torch.Tensor, num_particles: int,
                   max_plate_nesting: int, num_data: Optional[int] = None,
                   idx: Optional[torch.Tensor] = None) -> tuple[Trace, Trace]:
    """Run ``guide`` under a particle plate at ``dim=-(max_plate_nesting + 1)`` and
    replay ``model`` on it. Returns ``(model_trace, guide_trace)``."""
    return trace_guide_then_model(model, guide, x, num_data=num_data, idx=idx,
                                  num_particles=num_particles,
                                  max_plate_nesting=max_plate_nesting)


def site_log_prob_per_datapoint(site: dict, num_particles: int, batch: int,
                                max_plate_nesting: int, *, strict_scale: bool = True,
                                log_prob: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Log density of one site, summed to shape (num_particles, batch), with every plate's
    subsampling factor applied except the data plate's N / B.

    A subsampled plate nested in the data plate (``pyro.plate("inner", 12,
    subsample_size=6)``) contributes full_size / size times its subsample's sum, as in
    Pyro's ELBOs; that factor is the same for every particle.

    Args:
        site: a sample site of a trace run by :func:`run_vectorized` (or unvectorised,
            with ``num_particles=1``).
        log_prob: optionally a precomputed ``fn.log_prob(value)`` (e.g. re-scored with
            detached parameters, as DReG needs); by default it is computed here.
        strict_scale: raise if the site carries a scale other than its plates'
            subsampling factor (``poutine.scale``, e.g. a beta).

    Raises:
        ValueError: for a site outside the ``"data"`` plate (a global latent), an
            enumerated site, or (with ``strict_scale``) an extra scale.
    """
    name = site["name"]
    data_frame = data_plate_frame(site)
    if data_frame is None:
        raise outside_data_plate(name)
    if site["infer"].get("enumerate"):
        raise ValueError(f"site '{name}' is marked for enumeration; importance weights need "
                         "sampled sites (use TraceEnum_ELBO for exact marginalisation)")
    scale = plate_scale(site)
    if strict_scale:
        extra = site["scale"] / scale
        if isinstance(extra, torch.Tensor):  # a tensor scale: one host sync to check it
            ok = bool(((extra.to(torch.float64) - 1.0).abs() <= 1e-6).all())
        else:  # a number: no tensor, no sync
            ok = abs(extra - 1.0) <= 1e-6
        if not ok:
            extra = torch.as_tensor(extra, dtype=torch.float64)
            raise ValueError(
                f"site '{name}' carries a scale of {float(extra.mean()):.4g} "
                "beyond the data plate's N/B (poutine.scale, e.g. a beta or KL warm-up): "
                "importance-weighted bounds are defined only for the unscaled p(x, z); "
                "remove the scale or use a (non-IW) ELBO with KL weighting")
    if log_prob is None:
        log_prob = site["fn"].log_prob(site["value"], *site["args"], **site["kwargs"])
    inner = scale * data_frame.size / (data_frame.full_size or data_frame.size)
    log_prob = scale_and_mask(log_prob, 1.0 if inner == 1.0 else inner, site["mask"])
    ndim = max_plate_nesting + 1
    log_prob = torch.as_tensor(log_prob)
    if log_prob.dim() > ndim:
        raise ValueError(f"site '{name}': log_prob has {log_prob.dim()} batch dims, more than "
                         f"the {ndim} plates allow; declare event dims with .to_event(...)")
    log_prob = log_prob.reshape((1,) * (ndim - log_prob.dim()) + log_prob.shape)
    data_dim = ndim + data_frame.dim  # positive index of the data plate
    other = [d for d in range(1, ndim) if d != data_dim]
    if other:
        log_prob = log_prob.sum(dim=other, keepdim=True)
    log_prob = log_prob.reshape(log_prob.shape[0], log_prob.shape[data_dim])
    return log_prob.expand(num_particles, batch)


def log_weights(model: Callable, guide: Callable, x: torch.Tensor, num_particles: int = 1,
                *, num_data: Optional[int] = None, idx: Optional[torch.Tensor] = None,
                max_plate_nesting: Optional[int] = None, strict_scale: bool = True,
                vectorize_particles: bool = True) -> LogWeights:
    """Per-datapoint importance log weights ``log p(x_i, z_k) - log q(z_k | x_i)``.

    Args:
        model, guide: Pyro programs following :mod:`lvm_pyro.sites` (called as
            ``model(x, num_data=..., idx=...)`` when they accept those keywords).
        x: (batch, ...) observations, any dtype the model accepts.
        num_particles: K >= 1 samples z_k ~ q(. | x_i) per datapoint.
        num_data, idx: data-set size and minibatch indices for the ``"data"`` plate.
        max_plate_nesting: batch dims used by the programs; found by one checked run
            (:func:`lvm_pyro.inference.program.discover`) when ``None``.
        strict_scale: raise when a site carries a scale other than its plates'.
        vectorize_particles: ``True``: one run with the K particles in a plate outside
            every other plate (the programs must broadcast over a leading dim);
            ``False``: K unvectorised runs (slower; for programs that do not broadcast).

    Returns:
        :class:`LogWeights` with ``log_w`` of shape (num_particles, batch), nats.

    Raises:
        ValueError: ``num_particles < 1``; a contract violation
            (:class:`~lvm_pyro.inference.program.ProgramContractError`: a model latent
            with no guide site or another shape there, a data plate whose subsample is
            not ``len(x)``, a program that does not broadcast over the particle dim); a
            site outside the data plate; an extra scale (``strict_scale``).

    Auxiliary factors (VQ codebook / commitment) are left out. Guide sites' log q uses the
    guide's distribution at the sampled value (a Delta contributes 0); the guide's
    observed and ``pyro.factor`` sites count in log q, as in Pyro's ELBOs.
    """
    if isinstance(num_particles, bool) or int(num_particles) != num_particles or num_particles < 1:
        raise ValueError(f"num_particles must be an integer >= 1, got {num_particles!r}")
    if max_plate_nesting is None:
        max_plate_nesting = guess_max_plate_nesting(model, guide, x, num_data, idx)
    batch = x.shape[0]
    if not vectorize_particles:
        parts, out = [], None
        for _ in range(int(num_particles)):
            mt, gt = trace_guide_then_model(model, guide, x, num_data=num_data, idx=idx)
            check_shapes(mt, gt, max_plate_nesting)
            out = weights_from_traces(mt, gt, batch, 1, max_plate_nesting,
                                      strict_scale=strict_scale)
            parts.append(out.log_w)
        return LogWeights(torch.cat(parts, 0), out.data_scale, out.model_trace, out.guide_trace)
    model_trace, guide_trace = run_vectorized(model, guide, x, int(num_particles),
                                              max_plate_nesting, num_data, idx)
    check_shapes(model_trace, guide_trace, max_plate_nesting)
    return weights_from_traces(model_trace, guide_trace, batch, int(num_particles),
                               max_plate_nesting, strict_scale=strict_scale)


def weights_from_traces(model_trace: Trace, guide_trace: Trace, batch: int,
                        num_particles: int, max_plate_nesting: int, *,
                        strict_scale: bool = True,
                        guide_log_probs: Optional[dict] = None) -> LogWeights:
    """Sum the per-datapoint log weights of traces made by :func:`run_vectorized`
    (or of one unvectorised run, with ``num_particles=1``).

    log w = sum over the model's latent and observed sites of log p - sum over the
    guide's latent, observed and factor sites of log q (auxiliary factors left out).
    ``guide_log_probs`` optionally maps guide site names to precomputed log q tensors
    (DReG re-scores z under detached guide parameters). See :func:`log_weights`."""
    log_w = None
    data_scale = None
    for name, site in weighted_sites(model_trace):
        if not site["is_observed"] and name not in guide_trace.nodes:
            raise ProgramContractError(
                f"model latent site '{name}' has no site of the same name in the "
                "guide; importance weights need q for every latent (sample it in the "
                "guide, under the same name)")
        lp = site_log_prob_per_datapoint(site, num_particles, batch, max_plate_nesting,
                                         strict_scale=strict_scale)
        log_w = lp if log_w is None else log_w + lp
        if data_scale is None:
            frame = data_plate_frame(site)
            data_scale = (frame.full_size or frame.size) / frame.size
    if log_w is None:
        raise ValueError("the model has no sample sites; nothing to weight")
    for name, site in weighted_sites(guide_trace):
        pre = None if guide_log_probs is None else guide_log_probs.get(name)
        log_w = log_w - site_log_prob_per_datapoint(site, num_particles, batch,
                                                    max_plate_nesting,
                                                    strict_scale=strict_scale, log_prob=pre)
    return LogWeights(log_w, float(data_scale), model_trace, guide_trace)
