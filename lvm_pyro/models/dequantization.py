"""Dequantised density models of quantised data (Theis et al. 2016; Ho et al. 2019,
sec. 3.1; Hoogeboom et al. 2020).

A density p(y) on R^D (y = pixel intensities / L) becomes a model of L-level data k
through a latent noise site ``"u"`` ~ U[0, 1)^D: the observation ``"x"`` is scored at
v = k + u under the density of v = L y, with the change-of-variables term::

    log p_v(k + u) = log p_y((k + u) / L) - D log L.

With any guide q(u | k) on [0, 1)^D (site ``"u"``), the engine's log weight is
log p_v(k + u) - log q(u | k), and Jensen's inequality gives (Ho et al. 2019, eq. 12;
Hoogeboom et al. 2020, eq. 9 for the K-sample version)::

    log P(k) >= E_{u_1..K ~ q} log (1/K) sum_i p_v(k + u_i) / q(u_i | k),

where P(k) = int_[0,1)^D p_v(k + u) du is the discrete model obtained by integrating the
density over each bin. With q uniform (``UniformDequantizer``) this is the uniform
dequantisation bound E_u log p_y((k + u) / L) - D log L; a learned q
(``VariationalDequantizer``) can only tighten it.
"""

from __future__ import annotations

from typing import Callable, Optional

import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import torch
from pyro.poutine.messenger import Messenger

from ..data.levels import to_levels
from ..sites import DATA_PLATE, NOISE, OBS, data_plate, program_kwargs
from ..registration import CachedPyroModule

__all__ = ["DequantizedModel"]


class _ScoreAtDequantized(Messenger):
    """Rewrites the observed site ``"x"``: its value becomes v = k + u and its
    distribution the density of v = L y (``AffineTransform(0, L)`` of the model's
    density over y, so Pyro adds -D log L)."""

    def __init__(self, value: torch.Tensor, num_levels: int, event_ndim: int):
        super().__init__()
        self.value = value
        self.num_levels = num_levels
        self.event_ndim = event_ndim
        self.seen = False

    def _pyro_sample(self, msg):
        if msg["name"] != OBS or not msg["is_observed"]:
            return
        fn = msg["fn"]
        event_shape = tuple(self.value.shape[self.value.dim() - self.event_ndim:])
        if tuple(fn.event_shape) != event_shape:
            raise ValueError(
                f"the density model's site '{OBS}' has event shape {tuple(fn.event_shape)}, "
                f"but the data have {event_shape}; declare the image dims with "
                f".to_event({self.event_ndim})")
        msg["fn"] = dist.TransformedDistribution(
            fn, [dist.transforms.AffineTransform(0.0, float(self.num_levels),
                                                 event_dim=self.event_ndim)])
        msg["value"] = self.value
        self.seen = True


class DequantizedModel(CachedPyroModule):
    """Dequantised model of L-level data k, wrapping a density model over y in R^D::

        u ~ U[0, 1)^D                          site "u", inside the "data" plate
        <density_model's latents, e.g. z>      (sites of density_model)
        k + u ~ p_v,  p_v(v) = p_y(v / L) L^-D site "x" (density_model's "x", rescored)

    ``density_model`` is any Pyro program following :mod:`lvm_pyro.sites` whose observed
    site ``"x"`` is a density over y in the units (k + u) / L (e.g. ``VAEModel`` with
    ``GaussianLikelihood``, or :class:`~lvm_pyro.models.flow.PixelFlowDensity`). It is
    called with the bin centres (k + 1/2) / L as its ``x`` argument (for shape and
    support checks), and its ``"x"`` site is scored at (k + u) / L instead; so it must use
    its ``x`` argument only as that observation (true for VAEs and flows; an
    autoregressive density that conditions on x elsewhere would see the bin centres).

    Args:
        density_model: the Pyro program p(y, ...).
        num_levels: L >= 2 (256 for 8-bit data).

    ``forward(x, *, num_data=None, idx=None)``: x (batch, *event_shape) quantised data,
    either integer levels 0..L-1 or floats on the grid k / (L - 1) in [0, 1] (see
    :func:`lvm_pyro.data.to_levels`). Log densities are in nats of v = k + u, so the bound
    is on log P(k), the probability of the discrete data itself: bits/dim need no further
    offset.

    Raises:
        ValueError: ``num_levels < 2``; x off the grid; a density model with no observed
            site ``"x"`` or whose ``"x"`` event shape differs from x's.
    """

    def __init__(self, density_model: Callable, num_levels: int = 256):
        super().__init__()
        if num_levels < 2:
            raise ValueError(f"num_levels must be >= 2, got {num_levels}")
        self.density_model = density_model
        self.num_levels = int(num_levels)

    def forward(self, x: torch.Tensor, *, num_data: Optional[int] = None,
                idx: Optional[torch.Tensor] = None) -> None:
        k = to_levels(x, self.num_levels, OBS)  # (batch, *event) levels as floats
        event_shape = k.shape[1:]
        n = len(event_shape)
        if n == 0:
            raise ValueError("x must be (batch, *event_shape) with at least one event dim")
        with data_plate(x, num_data, idx):
            u = pyro.sample(NOISE, dist.Uniform(k.new_zeros(event_shape),
                                                k.new_ones(event_shape)).to_event(n))
        centres = (k + 0.5) / self.num_levels  # (batch, *event) stand-in for the density's x
        handler = _ScoreAtDequantized(k + u, self.num_levels, n)  # v: (..., batch, *event)
        density_model = self.density_model
        # The density model opens its own "data" plate over the same indices: its
        # subsample site would duplicate ours in the trace, so it is hidden.
        with handler, poutine.block(hide=[DATA_PLATE]):
            density_model(centres, **program_kwargs(density_model, num_data, idx))
        if not handler.seen:
            raise ValueError(f"the density model has no observed site '{OBS}'; observe the "
                             f"data with pyro.sample('{OBS}', density, obs=x)")
