"""Dequantisation noise distributions q(u | x) on [0, 1)^D (site ``"u"``).

* :class:`UniformDequantizer`: q = U[0, 1)^D (uniform dequantisation; log q = 0).
* :class:`VariationalDequantizer`: a learned conditional flow (Flow++, Ho et al. 2019,
  sec. 3.1, eq. 12), built from Pyro's conditional transforms.

Both are guides for :class:`lvm_pyro.models.DequantizedModel` (and ``FlowModel``).
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import pyro
import pyro.distributions as dist
import pyro.distributions.transforms as T
import torch
from pyro.nn import ConditionalAutoRegressiveNN, DenseNN
from torch import nn

from ..data.levels import to_levels
from ..nn.context_cnn import ContextCNN
from ..nn.mlp import MLP
from ..sites import NOISE, data_plate
from ..registration import CachedPyroModule

__all__ = ["UniformDequantizer", "VariationalDequantizer"]


class _FiniteLogistic(dist.Logistic):
    """Pyro's ``Logistic`` whose draws are finite: its sampler inverts the CDF at
    u ~ U[0, 1), and u = 0 (probability 2^-24 per float32 draw, so about once per
    twenty million pixels) gives -inf, which the autoregressive layers turn into NaN for
    every later pixel. Here u is drawn in [tiny, 1 - eps) instead (the density is
    unchanged; the draws lost are an event of probability ~1e-7)."""

    def rsample(self, sample_shape=torch.Size()):
        shape = self._extended_shape(sample_shape)
        finfo = torch.finfo(self.loc.dtype)
        u = self.loc.new_empty(shape).uniform_(finfo.tiny, 1.0 - finfo.eps)
        return self.icdf(u)


class UniformDequantizer(CachedPyroModule):
    """Uniform dequantisation as a guide::

        u ~ U[0, 1)^D        site "u", inside the "data" plate (log q(u | x) = 0)

    The event shape is that of x: ``forward(x, *, num_data=None, idx=None)`` with x
    (batch, *event_shape). Paired with ``DequantizedModel`` the log weight is
    log p_y((k + u) / L) - D log L (Theis et al. 2016).
    """

    def forward(self, x: torch.Tensor, *, num_data: Optional[int] = None,
                idx: Optional[torch.Tensor] = None) -> torch.Tensor:
        if x.dim() < 2:
            raise ValueError(f"x must be (batch, *event_shape), got shape {tuple(x.shape)}")
        dtype = x.dtype if torch.is_floating_point(x) else torch.get_default_dtype()
        event_shape = x.shape[1:]
        zeros = torch.zeros(event_shape, dtype=dtype, device=x.device)
        with data_plate(x, num_data, idx):
            return pyro.sample(NOISE, dist.Uniform(zeros, zeros + 1).to_event(len(event_shape)))


class VariationalDequantizer(CachedPyroModule):
    """Learned dequantisation noise q(u | x) on [0, 1)^D as a conditional flow
    (Flow++, Ho et al. 2019, sec. 3.1)::

        h = context_net(k / (L - 1) - 1/2)                 (..., context_dim), MLP or CNN
        e ~ Logistic(0, 1)^D
        s = A_m(... A_1(S(e; h); h) ...; h)                 Pyro conditional transforms
        u = sigmoid(s), reshaped to event_shape             site "u", in the "data" plate

    S is an element-wise conditional rational-quadratic spline (``ConditionalSpline``,
    Durkan et al. 2019) whose bins depend on h; for D > 1 each A_j is an autoregressive
    conditional transform (``ConditionalSplineAutoregressive`` or
    ``ConditionalAffineAutoregressive``, conditioned on h and on the preceding
    coordinates, alternating orders), so q can couple the noise of different pixels.
    The logistic base makes a flow of identities exactly uniform (sigmoid of a standard
    logistic is U(0, 1)); the splines are identities outside [-bound, bound], where the
    base has 3.4e-4 of its mass beyond each end for bound = 8, so q keeps a uniform
    density near u = 0 and u = 1.
    Sampling is one network pass per transform; log q of a drawn sample reuses Pyro's
    transform caches (scoring an arbitrary u needs D passes per autoregressive layer).

    Args:
        event_shape: shape of one datapoint, e.g. (1, 28, 28); D = its product.
        num_levels: L >= 2 (256 for 8-bit data).
        context_dim: size of the context h.
        hidden_dims: hidden widths of the context MLP and of the spline's hypernetwork.
        num_autoregressive: number m of autoregressive layers (ignored when D = 1).
        autoregressive: ``"spline"`` (flexible; MADE with D * (4 count_bins - 1) outputs,
            for small D) or ``"affine"`` (2 D outputs: for images).
        autoregressive_hidden: MADE hidden width (>= D; default max(2 D, 32)).
        count_bins: spline bins.
        bound: spline box [-bound, bound] in logit space.
        context: ``"mlp"`` (any event shape) or ``"cnn"`` (:class:`~lvm_pyro.nn.ContextCNN`,
            event shape (C, H, W)) for the context network.
        context_net: optional torch module (..., *event_shape) -> (..., context_dim)
            replacing both.

    ``forward(x, *, num_data=None, idx=None)``: x (batch, *event_shape) quantised data
    (integer levels or the grid k / (L - 1), :func:`lvm_pyro.data.to_levels`); returns u
    (batch, *event_shape) in [0, 1) (float; the sigmoid is clipped at 1 - eps).

    Raises:
        ValueError: bad arguments; x off the grid or of the wrong shape.
    """

    def __init__(self, event_shape: Sequence[int], num_levels: int = 256, *,
                 context_dim: int = 16, hidden_dims: Sequence[int] = (64,),
                 num_autoregressive: int = 1, autoregressive: str = "spline",
                 autoregressive_hidden: Optional[int] = None, count_bins: int = 8,
                 bound: float = 8.0, context: str = "mlp",
                 context_net: Optional[nn.Module] = None):
        super().__init__()
        self.event_shape = tuple(int(s) for s in event_shape)
        if not self.event_shape or min(self.event_shape) < 1:
            raise ValueError(f"event_shape must be non-empty and positive, got {event_shape}")
        if num_levels < 2:
            raise ValueError(f"num_levels must be >= 2, got {num_levels}")
        if context_dim < 1 or count_bins < 2 or bound <= 0 or num_autoregressive < 0:
            raise ValueError("need context_dim >= 1, count_bins >= 2, bound > 0, "
                             f"num_autoregressive >= 0; got {context_dim}, {count_bins}, "
                             f"{bound}, {num_autoregressive}")
        if autoregressive not in ("spline", "affine"):
            raise ValueError(f"autoregressive must be 'spline' or 'affine', got {autoregressive!r}")
        if context not in ("mlp", "cnn") or (context == "cnn" and len(self.event_shape) != 3):
            raise ValueError(f"context must be 'mlp' or 'cnn' (the latter for (C, H, W) events), "
                             f"got {context!r} for event_shape {self.event_shape}")
        self.num_levels = int(num_levels)
        self.dim = D = math.prod(self.event_shape)
        if context_net is None:
            context_net = (ContextCNN(self.event_shape, context_dim) if context == "cnn" else
                           MLP(self.event_shape, hidden_dims, (context_dim,), activation="relu"))
        self.context_net = context_net
        cb = int(count_bins)
        self.marginal = T.ConditionalSpline(
            DenseNN(context_dim, list(hidden_dims), param_dims=[D * cb, D * cb, D * (cb - 1), D * cb]),
            D, cb, bound=bound)
        layers = []
        if D > 1:
            width = autoregressive_hidden or max(2 * D, 32)
            if width < D:
                raise ValueError(f"autoregressive_hidden must be >= D = {D}, got {width}")
            for j in range(num_autoregressive):
                order = torch.arange(D) if j % 2 else torch.arange(D - 1, -1, -1)
                if autoregressive == "spline":
                    arn = ConditionalAutoRegressiveNN(D, context_dim, [width], permutation=order,
                                                      param_dims=[cb, cb, cb - 1, cb])
                    layers.append(T.ConditionalSplineAutoregressive(D, arn, count_bins=cb, bound=bound))
                else:
                    arn = ConditionalAutoRegressiveNN(D, context_dim, [width], permutation=order)
                    layers.append(T.ConditionalAffineAutoregressive(arn))
        self.autoregressive = nn.ModuleList(layers)

    def context(self, x: torch.Tensor) -> torch.Tensor:
        """h = context_net(k / (L - 1) - 1/2): (batch, context_dim) for x (batch, *event)."""
        if tuple(x.shape[1:]) != self.event_shape:
            raise ValueError(f"VariationalDequantizer expects x of shape (batch, "
                             f"{self.event_shape}), got {tuple(x.shape)}")
        k = to_levels(x, self.num_levels, "x")
        return self.context_net(k / (self.num_levels - 1) - 0.5)

    def distribution(self, x: torch.Tensor) -> dist.TransformedDistribution:
        """q(u | x): a distribution with batch shape (batch,) and event shape
        ``event_shape``, support [0, 1)^D."""
        h = self.context(x)  # (batch, context_dim)
        zeros = h.new_zeros(h.shape[:-1] + (self.dim,))
        base = _FiniteLogistic(zeros, torch.ones_like(zeros)).to_event(1)  # (batch,) | (D,)
        transforms = [self.marginal.condition(h)]
        transforms += [t.condition(h) for t in self.autoregressive]
        transforms += [T.SigmoidTransform().with_cache(1),
                       T.ReshapeTransform((self.dim,), self.event_shape).with_cache(1)]
        return dist.TransformedDistribution(base, transforms)

    def forward(self, x: torch.Tensor, *, num_data: Optional[int] = None,
                idx: Optional[torch.Tensor] = None) -> torch.Tensor:
        q = self.distribution(x)
        with data_plate(x, num_data, idx):
            return pyro.sample(NOISE, q)
