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

import pyro
import pyro.poutine as poutine
import torch
from pyro.distributions.util import scale_and_mask
from pyro.poutine.trace_struct import Trace
from pyro.poutine.util import site_is_subsample

from ..sites import AUXILIARY, DATA_PLATE, PARTICLE_PLATE, program_kwargs

__all__ = ["LogWeights", "log_weights", "guess_max_plate_nesting", "run_vectorized",
           "site_log_prob_per_datapoint", "is_auxiliary_site", "plate_scale"]


class LogWeights(NamedTuple):
    """Output of :func:`log_weights`.

    Attributes:
        log_w: (num_particles, batch) log p(x_i, z_k) - log q(z_k | x_i) in nats,
            unscaled (no N/B factor).
        data_scale: N / batch of the ``"data"`` plate (1.0 when not subsampled); callers
            multiply sums over datapoints by it, outside any log-mean-exp.
        model_trace: the replayed model trace (vectorised over particles).
        guide_trace: the guide trace (vectorised over particles).
    """

    log_w: torch.Tensor
    data_scale: float
    model_trace: Trace
    guide_trace: Trace


def is_auxiliary_site(site: dict) -> bool:
    """True for auxiliary loss factors (see :func:`lvm_pyro.sites.auxiliary_factor`)."""
    return bool(site["infer"].get(AUXILIARY, False))


def _sample_sites(trace: Trace):
    for name, site in trace.nodes.items():
        if site["type"] == "sample" and not is_auxiliary_site(site) and not site_is_subsample(site):
            yield name, site


def guess_max_plate_nesting(model: Callable, guide: Callable, x: torch.Tensor,
                            num_data: Optional[int] = None,
                            idx: Optional[torch.Tensor] = None) -> int:
    """Deepest plate nesting (number of batch dims) in model and guide, found by one
    unvectorised run of both (no gradients). Returns an int >= 1."""
    with torch.no_grad(), poutine.block():
        guide_trace = poutine.trace(guide).get_trace(x, **program_kwargs(guide, num_data, idx))
        model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(
            x, **program_kwargs(model, num_data, idx))
    nesting = 1
    for trace in (guide_trace, model_trace):
        for site in trace.nodes.values():
            if site["type"] == "sample":
                for frame in site["cond_indep_stack"]:
                    if frame.vectorized:
                        nesting = max(nesting, -frame.dim)
    return nesting


def run_vectorized(model: Callable, guide: Callable, x: torch.Tensor, num_particles: int,
                   max_plate_nesting: int, num_data: Optional[int] = None,
                   idx: Optional[torch.Tensor] = None) -> tuple[Trace, Trace]:
    """Run ``guide`` under a particle plate at ``dim=-(max_plate_nesting + 1)`` and
    replay ``model`` on it. Returns ``(model_trace, guide_trace)``."""
    with pyro.plate(PARTICLE_PLATE, num_particles, dim=-(max_plate_nesting + 1)):
        guide_trace = poutine.trace(guide).get_trace(x, **program_kwargs(guide, num_data, idx))
        model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(
            x, **program_kwargs(model, num_data, idx))
    return model_trace, guide_trace


def plate_scale(site: dict) -> float:
    """The subsampling factor prod(full_size / size) of a site's plates (N / B for the
    data plate); any scale beyond it comes from ``poutine.scale``."""
    scale = 1.0
    for frame in site["cond_indep_stack"]:
        if frame.full_size is not None and frame.size:
            scale *= frame.full_size / frame.size
    return scale


def site_log_prob_per_datapoint(site: dict, num_particles: int, batch: int,
                                max_plate_nesting: int, *, strict_scale: bool = True,
                                log_prob: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Unscaled log density of one site, summed to shape (num_particles, batch).

    Args:
        site: a sample site of a trace run by :func:`run_vectorized`.
        log_prob: optionally a precomputed ``fn.log_prob(value)`` (e.g. re-scored with
            detached parameters, as DReG needs); by default it is computed here.
        strict_scale: raise if the site carries a scale other than its plates'
            subsampling factor (``poutine.scale``, e.g. a beta).

    Raises:
        ValueError: for a site outside the ``"data"`` plate (a global latent), an
            enumerated site, or (with ``strict_scale``) an extra scale.
    """
    name = site["name"]
    frames = {f.name: f for f in site["cond_indep_stack"]}
    if DATA_PLATE not in frames:
        raise ValueError(
            f"sample site '{name}' is outside the '{DATA_PLATE}' plate: per-datapoint "
            "log weights need every site inside pyro.plate('data', ...) (global latents "
            "are not supported by the importance-weighted estimators); wrap it with "
            "lvm_pyro.sites.data_plate(x, num_data, idx)")
    if site["infer"].get("enumerate"):
        raise ValueError(f"site '{name}' is marked for enumeration; importance weights need "
                         "sampled sites (use TraceEnum_ELBO for exact marginalisation)")
    if strict_scale:
        extra = torch.as_tensor(site["scale"] / plate_scale(site), dtype=torch.float64)
        if not bool(((extra - 1.0).abs() <= 1e-6).all()):
            raise ValueError(
                f"site '{name}' carries a scale of {float(extra.mean()):.4g} "
                "beyond the data plate's N/B (poutine.scale, e.g. a beta or KL warm-up): "
                "importance-weighted bounds are defined only for the unscaled p(x, z); "
                "remove the scale or use a (non-IW) ELBO with KL weighting")
    if log_prob is None:
        log_prob = site["fn"].log_prob(site["value"], *site["args"], **site["kwargs"])
    log_prob = scale_and_mask(log_prob, 1.0, site["mask"])
    ndim = max_plate_nesting + 1
    log_prob = torch.as_tensor(log_prob)
    if log_prob.dim() > ndim:
        raise ValueError(f"site '{name}': log_prob has {log_prob.dim()} batch dims, more than "
                         f"the {ndim} plates allow; declare event dims with .to_event(...)")
    log_prob = log_prob.reshape((1,) * (ndim - log_prob.dim()) + log_prob.shape)
    data_dim = ndim + frames[DATA_PLATE].dim  # positive index of the data plate
    other = [d for d in range(1, ndim) if d != data_dim]
    if other:
        log_prob = log_prob.sum(dim=other, keepdim=True)
    log_prob = log_prob.reshape(log_prob.shape[0], log_prob.shape[data_dim])
    return log_prob.expand(num_particles, batch)


def log_weights(model: Callable, guide: Callable, x: torch.Tensor, num_particles: int = 1,
                *, num_data: Optional[int] = None, idx: Optional[torch.Tensor] = None,
                max_plate_nesting: Optional[int] = None, strict_scale: bool = True
                ) -> LogWeights:
    """Per-datapoint importance log weights ``log p(x_i, z_k) - log q(z_k | x_i)``.

    Args:
        model, guide: Pyro programs following :mod:`lvm_pyro.sites` (called as
            ``model(x, num_data=..., idx=...)`` when they accept those keywords).
        x: (batch, ...) observations, any dtype the model accepts.
        num_particles: K >= 1 samples z_k ~ q(. | x_i) per datapoint (vectorised).
        num_data, idx: data-set size and minibatch indices for the ``"data"`` plate.
        max_plate_nesting: batch dims used by the programs; guessed by one extra run
            when ``None``.
        strict_scale: raise when a site carries a scale other than N/B.

    Returns:
        :class:`LogWeights` with ``log_w`` of shape (num_particles, batch), nats.

    Raises:
        ValueError: ``num_particles < 1``; a model latent with no guide site; a site
            outside the data plate; an extra scale (``strict_scale``).

    Auxiliary factors (VQ codebook / commitment) are left out. Guide sites' log q uses the
    guide's distribution at the sampled value (a Delta contributes 0).
    """
    if num_particles < 1:
        raise ValueError(f"num_particles must be >= 1, got {num_particles}")
    if max_plate_nesting is None:
        max_plate_nesting = guess_max_plate_nesting(model, guide, x, num_data, idx)
    model_trace, guide_trace = run_vectorized(model, guide, x, num_particles,
                                              max_plate_nesting, num_data, idx)
    return weights_from_traces(model_trace, guide_trace, x.shape[0], num_particles,
                               max_plate_nesting, strict_scale=strict_scale)


def weights_from_traces(model_trace: Trace, guide_trace: Trace, batch: int,
                        num_particles: int, max_plate_nesting: int, *,
                        strict_scale: bool = True,
                        guide_log_probs: Optional[dict] = None) -> LogWeights:
    """Sum the per-datapoint log weights of traces made by :func:`run_vectorized`.

    ``guide_log_probs`` optionally maps guide site names to precomputed log q tensors
    (DReG re-scores z under detached guide parameters). See :func:`log_weights`."""
    log_w = None
    data_scale = None
    for name, site in _sample_sites(model_trace):
        if not site["is_observed"] and name not in guide_trace.nodes:
            raise ValueError(f"model latent site '{name}' has no site of the same name in the "
                             "guide; importance weights need q for every latent")
        lp = site_log_prob_per_datapoint(site, num_particles, batch, max_plate_nesting,
                                         strict_scale=strict_scale)
        log_w = lp if log_w is None else log_w + lp
        if data_scale is None:
            frame = next(f for f in site["cond_indep_stack"] if f.name == DATA_PLATE)
            data_scale = (frame.full_size or frame.size) / frame.size
    if log_w is None:
        raise ValueError("the model has no sample sites; nothing to weight")
    for name, site in _sample_sites(guide_trace):
        if site["is_observed"]:
            continue
        pre = None if guide_log_probs is None else guide_log_probs.get(name)
        log_w = log_w - site_log_prob_per_datapoint(site, num_particles, batch,
                                                    max_plate_nesting,
                                                    strict_scale=strict_scale, log_prob=pre)
    return LogWeights(log_w, float(data_scale), model_trace, guide_trace)
