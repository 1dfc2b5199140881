"""Observation likelihoods p(x | z) for image data, built from decoder outputs.

A likelihood turns decoder output ``params`` of shape (..., P, *event_shape) into a
Pyro distribution whose event is the whole image (``.to_event(len(event_shape))``), and
checks that data lie in its support before any log-density is computed.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import pyro.distributions as dist

__all__ = ["Likelihood", "BernoulliLikelihood", "GaussianLikelihood", "make_likelihood",
           "LIKELIHOODS"]


class Likelihood:
    """Base class. Subclasses set ``num_params`` (P) and ``discrete`` and implement
    :meth:`dist` and :meth:`check_support`."""

    num_params: int = 1
    discrete: bool = True
    name: str = "likelihood"

    def dist(self, params: torch.Tensor, event_ndim: int) -> dist.TorchDistribution:
        raise NotImplementedError

    def check_support(self, x: torch.Tensor, site: str = "x") -> None:
        raise NotImplementedError

    def mean(self, params: torch.Tensor, event_ndim: int) -> torch.Tensor:
        """Mean image E[x | z], shape (..., *event_shape); for pictures."""
        raise NotImplementedError

    def __call__(self, params: torch.Tensor, event_ndim: int) -> dist.TorchDistribution:
        return self.dist(params, event_ndim)


class BernoulliLikelihood(Likelihood):
    """Bernoulli pixels with logits: params (..., 1, *event_shape); x in {0, 1}.

    ``check_support`` raises ValueError naming the site when x has values other than 0
    and 1, and suggests binarising (``lvm_pyro.data.binarize``) or a Gaussian likelihood.
    """

    num_params = 1
    discrete = True
    name = "bernoulli"

    def dist(self, params, event_ndim):
        return dist.Bernoulli(logits=params[..., 0, *([slice(None)] * event_ndim)],
                              validate_args=False).to_event(event_ndim)

    def check_support(self, x, site="x"):
        if not torch.is_floating_point(x):
            x = x.float()
        bad = (x != 0) & (x != 1)
        if bool(bad.any()):
            v = x[bad].flatten()[0].item()
            raise ValueError(
                f"site '{site}': Bernoulli likelihood needs binary data in {{0, 1}}, found "
                f"value {v:g} ({int(bad.sum())} of {x.numel()} entries). Binarise the data "
                "(lvm_pyro.data.binarize / --binarization dynamic|static) or use "
                "--likelihood gaussian for real-valued data")

    def mean(self, params, event_ndim):
        return torch.sigmoid(params[..., 0, *([slice(None)] * event_ndim)])


class GaussianLikelihood(Likelihood):
    """Diagonal Gaussian pixels: params (..., 2, *event_shape) = (loc, raw scale),
    scale = softplus(raw) + min_scale. Real-valued x; a density, so for 8-bit data
    bits/dim must state the dequantisation offset D log 256 (x rescaled to [0, 1]).

    Args:
        min_scale: lower bound on the scale (avoids unbounded densities).
    """

    num_params = 2
    discrete = False
    name = "gaussian"

    def __init__(self, min_scale: float = 1e-3):
        if min_scale <= 0:
            raise ValueError(f"min_scale must be > 0, got {min_scale}")
        self.min_scale = min_scale

    def dist(self, params, event_ndim):
        loc = params[..., 0, *([slice(None)] * event_ndim)]
        scale = F.softplus(params[..., 1, *([slice(None)] * event_ndim)]) + self.min_scale
        return dist.Normal(loc, scale, validate_args=False).to_event(event_ndim)

    def check_support(self, x, site="x"):
        if not torch.is_floating_point(x):
            raise ValueError(f"site '{site}': Gaussian likelihood needs floating-point data, "
                             f"got {x.dtype}; convert with x.float()")
        if not bool(torch.isfinite(x).all()):
            raise ValueError(f"site '{site}': data contain NaN or infinite values")

    def mean(self, params, event_ndim):
        return params[..., 0, *([slice(None)] * event_ndim)]


LIKELIHOODS = {"bernoulli": BernoulliLikelihood, "gaussian": GaussianLikelihood}


def make_likelihood(name: str, **kwargs) -> Likelihood:
    """Likelihood by name: ``"bernoulli"`` or ``"gaussian"`` (more register here).

    Raises:
        ValueError: unknown name.
    """
    if name not in LIKELIHOODS:
        raise ValueError(f"unknown likelihood {name!r}; choose one of {sorted(LIKELIHOODS)}")
    return LIKELIHOODS[name](**kwargs)
