"""A small multi-scale flow over pixels (RealNVP, Dinh et al. 2017; Glow, Kingma &
Dhariwal 2018) as a Pyro model, and its dequantised version ``FlowModel``."""

from __future__ import annotations

from typing import Optional, Sequence

import pyro
import pyro.distributions as dist
import pyro.distributions.transforms as T
import torch
from torch import nn
from torch.distributions.transforms import ComposeTransform, Transform

from ..nn.coupling_net import CouplingConvNet
from ..nn.flow_layers import ChannelSubset, Squeeze2d
from ..checks import all_finite
from ..sites import OBS, data_plate
from .dequantization import DequantizedModel
from ..registration import CachedPyroModule

__all__ = ["PixelFlowDensity", "FlowModel"]


class PixelFlowDensity(CachedPyroModule):
    """Density p(y) over images y in R^{C x H x W} (RealNVP's multi-scale architecture,
    Dinh et al. 2017, sec. 3.6), written as the map f from data to latent::

        s = logit(alpha + (1 - 2 alpha) y)                       (RealNVP sec. 4.1)
        scale(s): squeeze (c, h, w) -> (4c, h/2, w/2); num_couplings x [affine coupling
                  on the channels (Pyro ``AffineCoupling(dim=-3)``, conv hypernetwork),
                  channel reversal]; then, below the last scale, scale(.) again on the
                  first 2c channels only (the other half is factored out); unsqueeze
        e = f(y) ~ N(0, I)                                        site "x": y = f^-1(e)

    log p(y) = log N(f(y); 0, I) + log |det df/dy| (change of variables; Pyro's
    ``TransformedDistribution``). Squeeze and factor-out are the hand-written
    :class:`~lvm_pyro.nn.Squeeze2d` and :class:`~lvm_pyro.nn.ChannelSubset`.

    Args:
        event_shape: (C, H, W), H and W divisible by 2 ** num_scales.
        num_scales: number of squeeze levels >= 1.
        num_couplings: coupling layers per scale >= 1.
        hidden_channels: width of each coupling's CouplingConvNet.
        alpha: logit margin in (0, 1/2) (RealNVP uses 0.05).

    ``forward(x, *, num_data=None, idx=None)``: x (batch, C, H, W) float y values; site
    ``"x"`` observes them under the flow (nats of y). Wrap it in ``DequantizedModel``
    (or use :class:`FlowModel`) for quantised data.

    Raises:
        ValueError: bad arguments; x of the wrong shape or not finite.
    """

    def __init__(self, event_shape: Sequence[int], *, num_scales: int = 2,
                 num_couplings: int = 4, hidden_channels: int = 32, alpha: float = 0.05):
        super().__init__()
        self.event_shape = tuple(int(s) for s in event_shape)
        if len(self.event_shape) != 3 or min(self.event_shape) < 1:
            raise ValueError(f"event_shape must be (C, H, W), got {event_shape}")
        if num_scales < 1 or num_couplings < 1 or hidden_channels < 1:
            raise ValueError("num_scales, num_couplings and hidden_channels must be >= 1, got "
                             f"{num_scales}, {num_couplings}, {hidden_channels}")
        c, h, w = self.event_shape
        if h % 2 ** num_scales or w % 2 ** num_scales:
            raise ValueError(f"H = {h} and W = {w} must be divisible by 2 ** num_scales = "
                             f"{2 ** num_scales}; lower num_scales")
        if not 0 < alpha < 0.5:
            raise ValueError(f"alpha must be in (0, 1/2), got {alpha}")
        self.alpha = float(alpha)
        couplings: list[nn.Module] = []
        self._to_latent = ComposeTransform(
            [T.AffineTransform(self.alpha, 1 - 2 * self.alpha, event_dim=3),
             T.SigmoidTransform().inv,
             self._scale(c, h, w, num_scales, num_couplings, hidden_channels, couplings)],
            cache_size=1)
        self.couplings = nn.ModuleList(couplings)

    @staticmethod
    def _scale(c: int, h: int, w: int, levels: int, num_couplings: int, hidden: int,
               couplings: list) -> Transform:
        c4, h2, w2 = 4 * c, h // 2, w // 2
        parts: list[Transform] = [Squeeze2d()]
        flip = torch.arange(c4 - 1, -1, -1)
        for _ in range(num_couplings):
            coupling = T.AffineCoupling(c4 // 2, CouplingConvNet(c4 // 2, c4 - c4 // 2, h2, w2, hidden),
                                        dim=-3)
            couplings.append(coupling)
            parts += [coupling, T.Permute(flip, dim=-3)]
        if levels > 1:
            inner = PixelFlowDensity._scale(c4 // 2, h2, w2, levels - 1, num_couplings, hidden,
                                            couplings)
            parts.append(ChannelSubset(inner, c4 // 2))
        parts.append(Squeeze2d().inv)
        return ComposeTransform(parts, cache_size=1)

    @property
    def transform(self) -> Transform:
        """The data-to-latent bijection f (event_dim 3)."""
        return self._to_latent

    def distribution(self, dtype: Optional[torch.dtype] = None) -> dist.TransformedDistribution:
        """p(y): event shape (C, H, W), batch shape ()."""
        p = next(self.couplings.parameters())
        zeros = torch.zeros(self.event_shape, dtype=dtype or p.dtype, device=p.device)
        base = dist.Normal(zeros, 1.0).to_event(3)
        return dist.TransformedDistribution(base, [self._to_latent.inv])

    def forward(self, x: torch.Tensor, *, num_data: Optional[int] = None,
                idx: Optional[torch.Tensor] = None) -> None:
        if tuple(x.shape[1:]) != self.event_shape:
            raise ValueError(f"PixelFlowDensity expects x of shape (batch, {self.event_shape}), "
                             f"got {tuple(x.shape)}")
        if not all_finite(x):
            raise ValueError(f"site '{OBS}': data contain NaN or infinite values")
        self.couplings  # noqa: B018 (registers the coupling parameters with Pyro)
        with data_plate(x, num_data, idx):
            pyro.sample(OBS, self.distribution(x.dtype), obs=x)


class FlowModel(DequantizedModel):
    """Dequantised multi-scale pixel flow for L-level images::

        u ~ U[0, 1)^D                      site "u"
        k + u ~ p_v, p_v(v) = p_y(v / L) L^-D,  p_y = PixelFlowDensity   site "x"

    Paired with ``UniformDequantizer`` (uniform dequantisation) or
    ``VariationalDequantizer`` (Flow++'s learned q(u | x)) its log weights give a lower
    bound on log P(k) in nats (see :class:`~lvm_pyro.models.DequantizedModel`).

    Args:
        event_shape: (C, H, W).
        num_levels: L (256 for 8-bit data).
        **flow_kwargs: ``num_scales``, ``num_couplings``, ``hidden_channels``, ``alpha``
            of :class:`PixelFlowDensity`.

    ``forward(x, *, num_data=None, idx=None)``: x (batch, C, H, W) integer levels or the
    grid k / (L - 1).
    """

    def __init__(self, event_shape: Sequence[int], num_levels: int = 256, **flow_kwargs):
        super().__init__(PixelFlowDensity(event_shape, **flow_kwargs), num_levels)

    @property
    def flow(self) -> PixelFlowDensity:
        return self.density_model

    @torch.no_grad()
    def sample(self, num_samples: int) -> torch.Tensor:
        """Images drawn from the flow and quantised: k = clamp(floor(L y), 0, L - 1),
        returned on the grid k / (L - 1): (num_samples, C, H, W) float in [0, 1]."""
        y = self.flow.distribution().sample((num_samples,))
        top = self.num_levels - 1
        return torch.clamp(torch.floor(y * self.num_levels), 0, top) / top
