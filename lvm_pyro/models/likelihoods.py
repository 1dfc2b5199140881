"""Observation likelihoods p(x | z) for image data, built from decoder outputs.

A likelihood turns decoder output ``params`` of shape (..., P, *event_shape) into a
Pyro distribution whose event is the whole image (``.to_event(len(event_shape))``), and
checks that data lie in its support before any log-density is computed.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import pyro.distributions as dist

from ..checks import all_finite
from ..data.levels import off_grid

__all__ = ["Likelihood", "BernoulliLikelihood", "IndependentBernoulli", "GaussianLikelihood", "make_likelihood",
           "LIKELIHOODS", "check_observations"]


def check_observations(x: torch.Tensor, event_shape: tuple, likelihood: "Likelihood",
                       model: str) -> None:
    """The one check a model runs on its data: ``x`` of shape (batch, *event_shape) and
    inside ``likelihood``'s support.

    Raises:
        ValueError: another shape (the message names ``model`` and the expected shape), or
            values outside the support (:meth:`Likelihood.check_support`).
    """
    if tuple(x.shape[1:]) != tuple(event_shape):
        raise ValueError(f"{model} expects x of shape (batch, {tuple(event_shape)}), got "
                         f"{tuple(x.shape)}")
    likelihood.check_support(x, "x")


class ObservationChecks:
    """Mixin of the models whose data check is :func:`check_observations` on
    ``self.event_shape`` and ``self.likelihood``: ``check_data(x)`` runs it on a batch or a
    whole data set x (N, *event_shape) (the Trainer calls it once per epoch;
    ``forward`` calls it unless :func:`lvm_pyro.checks.skip_data_checks` is active).

    Raises (``check_data``):
        ValueError: x has the wrong shape or values outside the likelihood's support.
    """

    def check_data(self, x: torch.Tensor) -> None:
        """:func:`check_observations` of x, naming the model's class in the error."""
        check_observations(x, self.event_shape, self.likelihood, type(self).__name__)


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


class IndependentBernoulli(dist.Independent):
    """``Bernoulli(logits=...).to_event(n)`` whose ``log_prob`` sums the per-pixel binary
    cross-entropy over the event dims before negating it: the same numbers bit for bit
    (negation is exact), one full-size tensor operation (and its backward) fewer on the
    training path. Everything else (sampling, ``expand``, masks, ``mean``) is Pyro's
    ``Independent``.

    ``log_prob(value)``: value (..., *event_shape), broadcastable with the logits; returns
    (..., ) in nats. Raises ValueError for values outside {0, 1} only when argument
    validation is on (as ``torch.distributions.Bernoulli`` does)."""

    def log_prob(self, value):
        if self._validate_args:
            self._validate_sample(value)
        logits, value = torch.broadcast_tensors(self.base_dist.logits, value)
        nll = F.binary_cross_entropy_with_logits(logits, value, reduction="none")
        n = self.reinterpreted_batch_ndims
        return -(nll.sum(tuple(range(-n, 0))) if n else nll)


class BernoulliLikelihood(Likelihood):
    """Bernoulli pixels with logits: params (..., 1, *event_shape); x in {0, 1}.

    ``check_support`` raises ValueError naming the site when x has values other than 0
    and 1, and suggests binarising (``lvm_pyro.data.binarize``) or a Gaussian likelihood.
    """

    num_params = 1
    discrete = True
    name = "bernoulli"

    def dist(self, params, event_ndim):
        # squeeze, not select: a view whose backward allocates nothing
        base = dist.Bernoulli(logits=params.squeeze(-event_ndim - 1), validate_args=False)
        return IndependentBernoulli(base, event_ndim, validate_args=False) if event_ndim else base

    def check_support(self, x, site="x"):
        if not torch.is_floating_point(x):
            x = x.float()
        # one product pass: x (1 - x) is 0 exactly for x in {0, 1}, and nonzero (or NaN)
        # for any other value, NaN and +-inf included (no underflow: |x (1 - x)| >= min(|x|,
        # |1 - x|) / 2 for x near 0 or 1); the message's details only when it fails
        if not bool((x * (1 - x)).any()):
            return
        bad = (x != 0) & (x != 1)
        if bool(bad.any()):
            v = x[bad].flatten()[0].item()
            raise ValueError(
                f"site '{site}': Bernoulli likelihood needs binary data in {{0, 1}}, found "
                f"value {v:.9g} ({int(bad.sum())} of {x.numel()} entries). Binarise the data "
                "(lvm_pyro.data.binarize; CLI --binarization dynamic|static, Trainer "
                "binarization=...) or use a likelihood for real-valued data (CLI "
                "--likelihood gaussian --binarization dequantize)")

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
        # unbind, not two selects: one backward buffer instead of two zero-filled ones
        loc, raw = params.unbind(-event_ndim - 1)
        scale = F.softplus(raw) + self.min_scale
        return dist.Normal(loc, scale, validate_args=False).to_event(event_ndim)

    def check_support(self, x, site="x"):
        if not torch.is_floating_point(x):
            raise ValueError(f"site '{site}': Gaussian likelihood needs floating-point data, "
                             f"got {x.dtype}; convert with x.float()")
        if not all_finite(x):
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


# -- discretised logistic (mixture) for 8-bit pixels -----------------------------------
from torch.distributions import constraints as _constraints  # noqa: E402


class DiscretizedLogisticMixture(dist.TorchDistribution):
    """Per-pixel discretised logistic mixture over the ``num_levels`` grid values
    {0, 1/(L-1), ..., 1} (Salimans et al. 2017, PixelCNN++, eq. 2; with L = 256 these are
    8-bit intensities / 255)::

        P(x) = sum_m pi_m [sigma((x + h - mu_m) / s_m) - sigma((x - h - mu_m) / s_m)],
        h = 1 / (2 (L - 1)),

    with the bottom level taking sigma((h - mu)/s) (all mass below) and the top level
    1 - sigma((1 - h - mu)/s) (all mass above), so the L probabilities sum to one. A
    proper probability mass function: -log P is a code length and bits/dim need no
    dequantisation offset.

    The interior difference is computed stably as
    log sigma(b) + log sigma(-a) + log(1 - exp(a - b)), a < b the standardised bin edges.

    Args:
        logits: (*batch, M) mixture logits (M = 1 for a single logistic).
        loc: (*batch, M) means mu, in the [0, 1] data units.
        log_scale: (*batch, M) log s (clamp it before, e.g. at -7).
        num_levels: L >= 2.
    """

    arg_constraints = {"logits": _constraints.real, "loc": _constraints.real,
                       "log_scale": _constraints.real}
    support = _constraints.unit_interval
    has_rsample = False

    def __init__(self, logits: torch.Tensor, loc: torch.Tensor, log_scale: torch.Tensor,
                 num_levels: int = 256, validate_args=None):
        if num_levels < 2:
            raise ValueError(f"num_levels must be >= 2, got {num_levels}")
        logits, loc, log_scale = torch.broadcast_tensors(logits, loc, log_scale)
        self.logits, self.loc, self.log_scale = logits, loc, log_scale
        self.num_levels = int(num_levels)
        super().__init__(loc.shape[:-1], torch.Size(), validate_args=validate_args)

    def expand(self, batch_shape, _instance=None):
        batch_shape = torch.Size(batch_shape)
        shape = batch_shape + self.loc.shape[-1:]
        return DiscretizedLogisticMixture(self.logits.expand(shape), self.loc.expand(shape),
                                          self.log_scale.expand(shape), self.num_levels,
                                          validate_args=False)

    def _component_log_probs(self, value: torch.Tensor) -> torch.Tensor:
        top = self.num_levels - 1
        half = 0.5 / top
        level = torch.round(value * top)  # (*batch) integer-valued float
        x = (level / top).unsqueeze(-1)  # (*batch, 1) snapped to the grid
        inv_s = torch.exp(-self.log_scale)
        a = (x - half - self.loc) * inv_s  # lower bin edge, standardised
        b = (x + half - self.loc) * inv_s  # upper bin edge
        interior = F.logsigmoid(b) + F.logsigmoid(-a) + torch.log(-torch.expm1(-2 * half * inv_s))
        lev = level.unsqueeze(-1)
        out = torch.where(lev <= 0, F.logsigmoid(b), interior)
        return torch.where(lev >= top, F.logsigmoid(-a), out)  # (*batch, M)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        """log P(value) in nats; value (*batch) on the grid k / (L - 1)."""
        comp = self._component_log_probs(value)
        return torch.logsumexp(torch.log_softmax(self.logits, -1) + comp, dim=-1)

    def _cdf_at_edges(self) -> torch.Tensor:
        top = self.num_levels - 1
        edges = (torch.arange(1, self.num_levels, device=self.loc.device,
                              dtype=self.loc.dtype) - 0.5) / top  # (L-1,) upper edges
        w = torch.softmax(self.logits, -1).unsqueeze(-2)  # (*batch, 1, M)
        z = (edges.unsqueeze(-1) - self.loc.unsqueeze(-2)) * torch.exp(-self.log_scale).unsqueeze(-2)
        return (w * torch.sigmoid(z)).sum(-1)  # (*batch, L-1): P(X < level j)

    @property
    def mean(self) -> torch.Tensor:
        """E[X] = (1 / (L-1)) sum_{j>=1} P(X >= level j), exact over the L levels."""
        return (1.0 - self._cdf_at_edges()).sum(-1) / (self.num_levels - 1)

    @property
    def variance(self) -> torch.Tensor:
        top = self.num_levels - 1
        cdf = self._cdf_at_edges()  # (*batch, L-1)
        probs = torch.diff(cdf, dim=-1, prepend=torch.zeros_like(cdf[..., :1]),
                           append=torch.ones_like(cdf[..., :1]))  # (*batch, L)
        levels = torch.arange(self.num_levels, device=cdf.device, dtype=cdf.dtype) / top
        m = (probs * levels).sum(-1)
        return (probs * levels ** 2).sum(-1) - m ** 2

    def sample(self, sample_shape=torch.Size()) -> torch.Tensor:
        """Grid values: a component, a logistic draw, rounded to the nearest level."""
        shape = self._extended_shape(sample_shape)
        with torch.no_grad():
            comp = torch.distributions.Categorical(logits=self.logits).sample(sample_shape)
            loc = torch.gather(self.loc.expand(*shape, -1), -1, comp.unsqueeze(-1)).squeeze(-1)
            ls = torch.gather(self.log_scale.expand(*shape, -1), -1, comp.unsqueeze(-1)).squeeze(-1)
            u = torch.rand(shape, dtype=loc.dtype, device=loc.device).clamp(1e-6, 1 - 1e-6)
            y = loc + torch.exp(ls) * (torch.log(u) - torch.log1p(-u))
            top = self.num_levels - 1
            return torch.clamp(torch.round(y * top), 0, top) / top


class DiscretizedLogisticLikelihood(Likelihood):
    """Discretised logistic (mixture) pixels for L-level data (PixelCNN++; 8-bit images
    with the default L = 256), a discrete likelihood: bits/dim need no offset.

    params (..., P, *event_shape) with P = 2 for one logistic (loc, raw log-scale) or
    P = 3M for M components (M logits, M locs, M raw log-scales); log-scale =
    max(raw, ``min_log_scale``). x: float in [0, 1] on the grid k / (L - 1) (e.g.
    ``ImageDataset.images`` of 8-bit data, i.e. the raw integers / 255, binarization
    "none"). Colour channels are modelled independently (no PixelCNN++ channel coupling).

    Args:
        num_mixtures: M >= 1.
        num_levels: L >= 2 (256 for 8 bits).
        min_log_scale: floor on log s in the [0, 1] data units (default -8: the bin
            half-width is then 5.8 scales, P(x) <= 0.994; PixelCNN++'s -7 on [-1, 1]
            data is -7.7 here).

    Raises:
        ValueError: bad arguments; ``check_support`` names the site and the fix when x is
            not float, outside [0, 1] or off the grid.
    """

    discrete = True
    name = "discretized_logistic"

    def __init__(self, num_mixtures: int = 1, num_levels: int = 256, min_log_scale: float = -8.0):
        if num_mixtures < 1:
            raise ValueError(f"num_mixtures must be >= 1, got {num_mixtures}")
        if num_levels < 2:
            raise ValueError(f"num_levels must be >= 2, got {num_levels}")
        self.num_mixtures, self.num_levels = int(num_mixtures), int(num_levels)
        self.min_log_scale = float(min_log_scale)
        self.num_params = 2 if self.num_mixtures == 1 else 3 * self.num_mixtures

    def _split(self, params: torch.Tensor, event_ndim: int):
        p = params.movedim(-(event_ndim + 1), -1)  # (..., *event_shape, P)
        if p.shape[-1] != self.num_params:
            raise ValueError(f"discretized_logistic with {self.num_mixtures} component(s) needs "
                             f"{self.num_params} parameters per pixel, got {p.shape[-1]}")
        if self.num_mixtures == 1:
            loc, raw = p[..., 0:1], p[..., 1:2]
            logits = torch.zeros_like(loc)
        else:
            m = self.num_mixtures
            logits, loc, raw = p[..., :m], p[..., m:2 * m], p[..., 2 * m:]
        return logits, loc, torch.clamp(raw, min=self.min_log_scale)

    def dist(self, params, event_ndim):
        logits, loc, log_scale = self._split(params, event_ndim)
        return DiscretizedLogisticMixture(logits, loc, log_scale, self.num_levels,
                                          validate_args=False).to_event(event_ndim)

    def check_support(self, x, site="x"):
        if not torch.is_floating_point(x):
            raise ValueError(
                f"site '{site}': discretized_logistic needs float intensities on the grid "
                f"k / {self.num_levels - 1} in [0, 1], got {x.dtype}; pass integers / "
                f"{self.num_levels - 1} (e.g. ImageDataset.images with --binarization none)")
        top = self.num_levels - 1
        bad = off_grid(x, self.num_levels) | (x < 0) | (x > 1)
        if bool(bad.any()):
            v = x[bad].flatten()[0].item()
            raise ValueError(
                f"site '{site}': discretized_logistic needs values on the grid k / {top} in "
                f"[0, 1] ({self.num_levels} levels), found {v:g} ({int(bad.sum())} of "
                f"{x.numel()} entries). Use --binarization none on 8-bit data (not binarised "
                "or dequantised values), or set num_levels to the data's levels")

    def mean(self, params, event_ndim):
        logits, loc, log_scale = self._split(params, event_ndim)
        return DiscretizedLogisticMixture(logits, loc, log_scale, self.num_levels,
                                          validate_args=False).mean


LIKELIHOODS["discretized_logistic"] = DiscretizedLogisticLikelihood
__all__ += ["DiscretizedLogisticLikelihood", "DiscretizedLogisticMixture"]


# -- full-covariance Gaussian for vector data -----------------------------------------
class FullCovarianceGaussianLikelihood(Likelihood):
    """Gaussian vectors with a full covariance from its Cholesky factor:
    x | z ~ N(loc, L L^T), for vector data of event shape (D,). params (..., 1 + D, D):
    row 0 is ``loc``; rows 1..D hold L, whose strictly lower triangle is taken as it is
    and whose diagonal is softplus(raw) + ``min_scale`` (positive, so L L^T is positive
    definite). With the diagonal Gaussian, an MLP decoder can only express correlation
    through z; this decoder expresses it in p(x | z) too.

    Args:
        dim: D, the size of one observation.
        min_scale: lower bound on L's diagonal, > 0.

    Raises:
        ValueError: ``dim < 1`` or ``min_scale <= 0``; on use, data that are not
            floating point or not finite, or an event shape other than (D,).
    """

    discrete = False
    name = "gaussian_full"

    def __init__(self, dim: int = 2, min_scale: float = 1e-3):
        if int(dim) != dim or dim < 1:
            raise ValueError(f"dim must be an integer >= 1, got {dim}")
        if not min_scale > 0:
            raise ValueError(f"min_scale must be > 0, got {min_scale}")
        self.dim, self.min_scale = int(dim), float(min_scale)
        self.num_params = 1 + self.dim

    def scale_tril(self, params: torch.Tensor) -> torch.Tensor:
        """L (..., D, D) from params (..., 1 + D, D)."""
        raw = params[..., 1:, :]  # (..., D, D)
        diag = F.softplus(torch.diagonal(raw, dim1=-2, dim2=-1)) + self.min_scale
        return torch.tril(raw, diagonal=-1) + torch.diag_embed(diag)

    def dist(self, params, event_ndim):
        if event_ndim != 1 or params.shape[-2:] != (self.num_params, self.dim):
            raise ValueError(f"gaussian_full needs vector data of event shape ({self.dim},) "
                             f"and params (..., {self.num_params}, {self.dim}); got "
                             f"{event_ndim} event dims, params {tuple(params.shape)}")
        return dist.MultivariateNormal(params[..., 0, :], scale_tril=self.scale_tril(params),
                                       validate_args=False)

    def check_support(self, x, site="x"):
        if not torch.is_floating_point(x):
            raise ValueError(f"site '{site}': Gaussian likelihood needs floating-point data, "
                             f"got {x.dtype}; convert with x.float()")
        if x.dim() != 2 or x.shape[-1] != self.dim:
            raise ValueError(f"site '{site}': gaussian_full needs vector data (batch, "
                             f"{self.dim}), got {tuple(x.shape)}")
        if not all_finite(x):
            raise ValueError(f"site '{site}': data contain NaN or infinite values")

    def mean(self, params, event_ndim):
        return params[..., 0, :]


LIKELIHOODS["gaussian_full"] = FullCovarianceGaussianLikelihood
__all__ += ["FullCovarianceGaussianLikelihood"]
