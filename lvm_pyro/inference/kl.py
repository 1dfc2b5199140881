"""KL divergence per latent coordinate: the one function behind free bits
(:class:`~lvm_pyro.inference.kl_weighting.FreeBits_ELBO`) and the KL-per-dimension
diagnostic (:func:`lvm_pyro.diagnostics.kl_per_dimension`).

For a latent site whose guide and prior factorise over the coordinates j of the event,
KL_j = KL(q(z_j | x) || p(z_j)) in closed form where torch registers it
(``torch.distributions.kl_divergence``, e.g. Normal-Normal, Bernoulli-Bernoulli), else the
Monte-Carlo estimate E_q[log q(z_j | x) - log p(z_j)] (Kingma et al. 2016, appendix C.8,
uses these per-dimension terms for free bits; Burda et al. 2015, section 5.2, read activity
off them).
"""

from __future__ import annotations

from typing import Optional

import pyro.distributions as dist
import torch
from torch.distributions import kl_divergence

__all__ = ["per_dimension_kl", "coordinate_distribution", "NonFactorizedLatentError"]


class NonFactorizedLatentError(ValueError):
    """A latent site's guide or prior does not factorise over the event's coordinates, so
    a KL per coordinate is not defined (a diagnostic reports it as not applicable)."""


def _strip_mask(fn):
    """(distribution without its ``.mask(...)`` wrappers, the combined mask or None)."""
    mask = None
    while isinstance(fn, dist.MaskedDistribution):
        m = fn._mask
        mask = m if mask is None else (torch.as_tensor(mask) & torch.as_tensor(m))
        fn = fn.base_dist
    return fn, mask


def _coordinates(fn, role: str, name: str, marginals: bool):
    """The element-wise (univariate) distribution of the event's coordinates."""
    base = fn
    while isinstance(base, torch.distributions.Independent):
        base = base.base_dist
    if marginals and isinstance(base, torch.distributions.MultivariateNormal):
        return dist.Normal(base.loc, base.variance.sqrt())
    if len(base.event_shape) != 0:
        hint = ("" if marginals else "; for a diagnostic the marginals of a MultivariateNormal "
                "can be used (marginals=True)")
        raise NonFactorizedLatentError(
            f"per-dimension KL needs a factorised latent site: the {role} distribution of site "
            f"'{name}' is {type(base).__name__} with event shape {tuple(base.event_shape)} "
            "(not univariate under .to_event). Use a diagonal distribution "
            f"(e.g. Normal(loc, scale).to_event(1)){hint}; with free bits, plain beta / KL "
            "warm-up works for any latent")
    return base


def coordinate_distribution(fn, name: str = "z", role: str = "guide") -> torch.distributions.Distribution:
    """The element-wise distribution of a latent's coordinates: ``fn`` with every
    ``Independent`` wrapper removed, a ``MultivariateNormal`` replaced by its Normal
    marginals. Batch shape batch_shape + event_shape of ``fn``.

    Raises:
        NonFactorizedLatentError: the event does not factorise into univariate coordinates.
    """
    return _coordinates(fn, role, name, True)


def per_dimension_kl(guide_fn, model_fn, value: Optional[torch.Tensor] = None, name: str = "z",
                     *, marginals: bool = False, num_samples: int = 256
                     ) -> tuple[torch.Tensor, bool]:
    """KL(q(z_j) || p(z_j)) for every coordinate j of a factorised latent site, nats.

    Args:
        guide_fn, model_fn: the site's distributions in guide and model, each univariate,
            possibly under ``.to_event(...)`` and ``.mask(...)`` (a coordinate masked in
            either has no KL, as in Pyro's KL of masked distributions) (with ``marginals=True`` a
            ``MultivariateNormal`` stands for its Normal marginals); batch shapes broadcast.
        value: a guide draw z (batch_shape + event_shape): the Monte-Carlo fallback is the
            one-sample estimate log q(z_j) - log p(z_j) at it (differentiable, for
            training objectives); ``None``: the average over ``num_samples`` fresh draws.
        name: site name for error messages.
        marginals: accept a ``MultivariateNormal`` through its marginals (their KLs do not
            sum to the joint KL, which is larger).
        num_samples: draws for the Monte-Carlo average when ``value`` is ``None`` (>= 1).

    Returns:
        ``(kl, analytic)``: ``kl`` of shape ``guide_fn.batch_shape + guide_fn.event_shape``
        (closed form when ``kl_divergence`` is registered for the pair of coordinate
        distributions, ``analytic=True``; else the Monte-Carlo estimate, ``analytic=False``).

    Raises:
        ValueError: a non-factorised distribution, or ``num_samples`` < 1.
    """
    if int(num_samples) != num_samples or num_samples < 1:
        raise ValueError(f"num_samples must be an integer >= 1, got {num_samples}")
    guide_fn, mask = _strip_mask(guide_fn)
    model_fn, model_mask = _strip_mask(model_fn)
    if model_mask is not None:  # as Pyro's KL of two masked distributions: both masks
        mask = model_mask if mask is None else torch.as_tensor(mask) & torch.as_tensor(model_mask)
    q = _coordinates(guide_fn, "guide", name, marginals)
    p = _coordinates(model_fn, "model", name, marginals)
    shape = guide_fn.batch_shape + guide_fn.event_shape
    try:
        kl, analytic = kl_divergence(q, p), True
    except NotImplementedError:
        analytic = False
        if value is not None:
            kl = q.log_prob(value) - p.log_prob(value)
        else:
            z = q.sample((int(num_samples),))
            kl = (q.log_prob(z) - p.log_prob(z)).mean(0)
    kl = torch.as_tensor(kl).expand(shape)
    if mask is not None:  # .mask(m) on the batch dims: masked coordinates have no KL
        m = torch.as_tensor(mask, device=kl.device)
        m = m.reshape(m.shape + (1,) * len(guide_fn.event_shape))
        kl = torch.where(m, kl, kl.new_zeros(()))
    return kl, analytic
