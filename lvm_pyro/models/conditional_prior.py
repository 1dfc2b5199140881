"""VQ-VAE-2's bottom-level prior: a gated PixelCNN over the bottom codes conditioned on
the top codes (a spatial map, van den Oord et al. 2016, Eq. 5) and optionally on a class
label (Eq. 4); Razavi et al. 2019, Sec. 3.2."""

from __future__ import annotations

from typing import Any, Optional, Sequence

import pyro
import torch
import torch.nn.functional as F

from ..nn.code_conditioner import CodeConditioner
from ..nn.pixelcnn import GatedPixelCNN
from ..sites import CODES_BOTTOM, data_plate
from .codes_prior import ModuleCodesPrior
from .pixelcnn_prior import _check_codes, _sampler
from ..registration import CachedPyroModule

__all__ = ["ConditionalPixelCNNPrior"]


class ConditionalPixelCNNPrior(CachedPyroModule):
    """Gated PixelCNN prior over a grid of codes given a coarser grid of codes::

        s = CodeConditioner(context)                       (B, S, H, W), context (B, h, w)
        codes[i, j] | codes[<(i, j)], context, y ~ Categorical(logits = PixelCNN(codes; y, s)[:, i, j])

    Args:
        num_codes: K, the bottom codebook size.
        grid_shape: (H, W) of the bottom grid.
        context_codes: K_top, the top codebook size.
        context_shape: (h, w) of the top grid; H / h = W / w must be a whole number f.
        channels, num_layers, kernel_size, num_classes, head_dim: the network's, see
            :class:`lvm_pyro.nn.GatedPixelCNN` (defaults 64, 8, 3, None, 2 * channels).
        cond_channels: S, channels of the conditioning map (default ``channels``).

    ``forward(codes, *, top_codes, y=None, num_data=None, idx=None)`` is the stage-two
    Pyro program: the observed site ``"codes_bottom"`` in the ``"data"`` plate (maximum
    likelihood with an empty guide); ``top_codes`` is the ``context`` of the other
    methods (Pyro's handlers reserve the keyword ``context`` when they call a program).

    Raises:
        ValueError: sizes out of range; grids that do not divide.
    """

    def __init__(self, num_codes: int, grid_shape: Sequence[int], context_codes: int,
                 context_shape: Sequence[int], channels: int = 64, num_layers: int = 8,
                 kernel_size: int = 3, num_classes: Optional[int] = None,
                 head_dim: Optional[int] = None, cond_channels: Optional[int] = None):
        super().__init__()
        grid_shape = tuple(int(s) for s in grid_shape)
        context_shape = tuple(int(s) for s in context_shape)
        if len(grid_shape) != 2 or min(grid_shape) < 1:
            raise ValueError(f"grid_shape must be (H, W) with H, W >= 1, got {grid_shape}")
        if len(context_shape) != 2 or min(context_shape) < 1:
            raise ValueError(f"context_shape must be (h, w) with h, w >= 1, got {context_shape}")
        f = grid_shape[0] // context_shape[0]
        if f < 1 or grid_shape != (f * context_shape[0], f * context_shape[1]):
            raise ValueError(f"grid_shape {grid_shape} must be a whole multiple f of "
                             f"context_shape {context_shape} (the same f in both dims)")
        cond_channels = channels if cond_channels is None else int(cond_channels)
        self.grid_shape, self.context_shape = grid_shape, context_shape
        self.context_codes = int(context_codes)
        self.conditioner = CodeConditioner(context_codes, cond_channels, f)
        self.net = GatedPixelCNN(num_codes, channels, num_layers, kernel_size, num_classes,
                                 head_dim, cond_channels=cond_channels)
        self.hyperparameters: dict[str, Any] = {
            "num_codes": int(num_codes), "grid_shape": list(grid_shape),
            "context_codes": int(context_codes), "context_shape": list(context_shape),
            "channels": int(channels), "num_layers": int(num_layers),
            "kernel_size": int(kernel_size), "num_classes": num_classes,
            "head_dim": self.net.head[1].out_channels, "cond_channels": cond_channels}

    @property
    def num_codes(self) -> int:
        """K, the number of symbols."""
        return self.net.num_codes

    @property
    def num_classes(self) -> Optional[int]:
        """Number of classes of the conditioning, or None."""
        return self.net.num_classes

    def _context(self, context: Optional[torch.Tensor], batch: torch.Size) -> torch.Tensor:
        if context is None:
            raise ValueError("pass context, the top codes (..., h, w) int64 this grid is "
                             "conditioned on")
        _check_codes(context, self.context_codes, self.context_shape)
        return context.expand(*batch, *self.context_shape).reshape(-1, *self.context_shape).long()

    def _labels(self, y: Optional[torch.Tensor], batch: torch.Size, device) -> Optional[torch.Tensor]:
        if self.num_classes is None:
            return None
        if y is None:
            raise ValueError("this prior is class-conditional: pass y, int64 labels of "
                             "shape codes.shape[:-2] (or broadcastable to it)")
        return torch.as_tensor(y, device=device).long().expand(batch).reshape(-1)

    def logits(self, codes: torch.Tensor, context: torch.Tensor,
               y: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Logits of p(c_ij | c_<ij, context, y): codes (..., H, W) integer, context
        (..., h, w) -> (..., K, H, W) float."""
        _check_codes(codes, self.num_codes, self.grid_shape)
        batch = torch.broadcast_shapes(codes.shape[:-2], context.shape[:-2])
        flat = codes.expand(*batch, *self.grid_shape).reshape(-1, *self.grid_shape).long()
        s = self.conditioner(self._context(context, batch))  # (B', S, H, W)
        out = self.net(flat, self._labels(y, batch, codes.device), s)
        return out.reshape(*batch, self.num_codes, *self.grid_shape)

    def log_prob(self, codes: torch.Tensor, y: Optional[torch.Tensor] = None, *,
                 context: Optional[torch.Tensor] = None) -> torch.Tensor:
        """log p(codes | context, y) in nats: codes (..., H, W) integer in [0, K), context
        (..., h, w) the top codes -> (...) float (broadcast batch shape).

        Raises:
            ValueError: wrong shapes, dtypes or values; a missing ``context``, or a missing
                ``y`` for a class-conditional prior.
        """
        if context is None:
            self._context(None, torch.Size())
        logits = self.logits(codes, context, y)  # (..., K, H, W)
        batch = logits.shape[:-3]
        target = codes.expand(*batch, *self.grid_shape).long()
        lp = -F.cross_entropy(logits.reshape(-1, self.num_codes, *self.grid_shape),
                              target.reshape(-1, *self.grid_shape), reduction="none")
        return lp.sum(dim=(-2, -1)).reshape(batch)

    @torch.no_grad()
    def sample(self, num_samples: int, y: Optional[torch.Tensor] = None, *,
               context: Optional[torch.Tensor] = None, method: str = "cached",
               uniforms: Optional[torch.Tensor] = None,
               generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """Ancestral samples codes ~ p(codes | context, y): (num_samples, H, W) int64.

        Args:
            num_samples: number of grids (>= 1).
            y: (num_samples,) int64 labels for a class-conditional prior (or one int).
            context: (num_samples, h, w) top codes (or (h, w), shared).
            method: ``"cached"`` (default; Ramachandran et al. 2017) or ``"naive"``; the
                same draws given the same ``uniforms``.
            uniforms: optional (num_samples, H, W) in [0, 1), the network's dtype and
                device; drawn with ``generator`` when None.

        Raises:
            ValueError: bad ``num_samples``, ``method``, ``uniforms``, ``context`` or ``y``.
        """
        fn, uniforms = _sampler(self.net, self.grid_shape, num_samples, method, uniforms,
                                generator)
        p = next(self.net.parameters())
        batch = torch.Size([num_samples])
        s = self.conditioner(self._context(context, batch).to(p.device))  # (n, S, H, W)
        return fn(self.net, uniforms, self._labels(y, batch, p.device), s).codes

    def distribution(self, context: torch.Tensor,
                     y: Optional[torch.Tensor] = None) -> ModuleCodesPrior:
        """This prior given ``context`` (*batch, h, w) as a Pyro distribution over (H, W)
        code grids, batch shape the broadcast of ``context.shape[:-2]`` and ``y.shape``."""
        self.net, self.conditioner  # inside a PyroModule call this registers the weights
        return ModuleCodesPrior(self, self.grid_shape, self.num_codes, y, context=context)

    def forward(self, codes: torch.Tensor, *, top_codes: torch.Tensor,
                y: Optional[torch.Tensor] = None, num_data: Optional[int] = None,
                idx: Optional[torch.Tensor] = None) -> None:
        with data_plate(codes, num_data, idx):
            pyro.sample(CODES_BOTTOM, self.distribution(top_codes, y), obs=codes)
