"""Autoregressive prior over a grid of VQ code indices: a gated PixelCNN (van den Oord et
al. 2016), fitted in stage two on the codes of a trained VQ-VAE encoder (van den Oord et
al. 2017, Sec. 3.3: "we fit an autoregressive distribution over z ... with ancestral
sampling").

With the VQ-VAE's guide a point mass at the encoder's nearest codes, swapping the model's
uniform ``"codes"`` prior for this one (:class:`CodesPrior`) gives the two-stage bound
``log p(x) >= log p(x | z_q(x)) + log p_prior(codes(x))`` as the engine's log weight.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import pyro
import torch
import torch.nn.functional as F
from pyro.poutine.messenger import Messenger

from ..nn.pixelcnn import GatedPixelCNN
from ..nn.pixelcnn_sampling import sample_cached, sample_naive
from ..sites import CODES, data_plate
from .codes_prior import ModuleCodesPrior
from ..registration import CachedPyroModule

__all__ = ["GatedPixelCNNPrior", "CodesPrior"]


def _check_codes(codes: torch.Tensor, num_codes: int, grid_shape: tuple[int, int]) -> None:
    if codes.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
        raise ValueError(f"codes must be an integer tensor (..., H, W), got dtype {codes.dtype}")
    if codes.dim() < 2 or tuple(codes.shape[-2:]) != grid_shape:
        raise ValueError(f"codes must have shape (..., {grid_shape[0]}, {grid_shape[1]}), got "
                         f"{tuple(codes.shape)}")
    if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= num_codes):
        raise ValueError(f"codes must lie in [0, {num_codes - 1}], got values in "
                         f"[{int(codes.min())}, {int(codes.max())}]")


def _sampler(net: GatedPixelCNN, grid_shape: tuple[int, int], num_samples: int, method: str,
             uniforms: Optional[torch.Tensor], generator: Optional[torch.Generator]):
    """The sampling function of ``method`` and the (num_samples, H, W) uniforms it consumes
    (drawn in the network's dtype and device when ``uniforms`` is None), after checking
    the arguments every PixelCNN prior's ``sample`` takes.

    Raises:
        ValueError: ``num_samples < 1``, an unknown ``method``, ``uniforms`` of another shape.
    """
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    if method not in ("cached", "naive"):
        raise ValueError(f"method must be 'cached' or 'naive', got {method!r}")
    shape = (num_samples, *grid_shape)
    if uniforms is None:
        p = next(net.parameters())
        uniforms = torch.rand(shape, generator=generator, dtype=p.dtype, device=p.device)
    elif tuple(uniforms.shape) != shape:
        raise ValueError(f"uniforms must have shape {shape}, got {tuple(uniforms.shape)}")
    return (sample_cached if method == "cached" else sample_naive), uniforms


class GatedPixelCNNPrior(CachedPyroModule):
    """Gated PixelCNN prior over code grids::

        codes[i, j] | codes[<(i, j)] ~ Categorical(logits = PixelCNN(codes)[:, i, j])
        p(codes) = prod_{i, j in raster order} p(codes[i, j] | codes[<(i, j)])   site "codes"

    (optionally given a class label y, paper Eq. 4).

    Args:
        num_codes: K, the codebook size (symbols 0 .. K - 1).
        grid_shape: (H, W) of the code grid, e.g. (7, 7) for a VQ-VAE on 28x28 images
            with two stride-2 layers.
        channels, num_layers, kernel_size, num_classes, head_dim: the network's, see
            :class:`lvm_pyro.nn.GatedPixelCNN` (defaults 64, 8, 3, None, 2 * channels).

    ``forward(codes, *, y=None, num_data=None, idx=None)`` is the stage-two Pyro program:
    the observed site ``"codes"`` inside the ``"data"`` plate; with an empty guide its
    Trace_ELBO is log p(codes) (maximum likelihood).

    Raises:
        ValueError: sizes out of range (see the network), a grid dimension < 1.
    """

    def __init__(self, num_codes: int, grid_shape: Sequence[int], channels: int = 64,
                 num_layers: int = 8, kernel_size: int = 3, num_classes: Optional[int] = None,
                 head_dim: Optional[int] = None):
        super().__init__()
        grid_shape = tuple(int(s) for s in grid_shape)
        if len(grid_shape) != 2 or min(grid_shape) < 1:
            raise ValueError(f"grid_shape must be (H, W) with H, W >= 1, got {grid_shape}")
        self.grid_shape = grid_shape
        self.net = GatedPixelCNN(num_codes, channels, num_layers, kernel_size, num_classes, head_dim)
        self.hyperparameters: dict[str, Any] = {
            "num_codes": int(num_codes), "grid_shape": list(grid_shape), "channels": int(channels),
            "num_layers": int(num_layers), "kernel_size": int(kernel_size),
            "num_classes": num_classes, "head_dim": self.net.head[1].out_channels}

    @property
    def num_codes(self) -> int:
        """K, the number of symbols."""
        return self.net.num_codes

    @property
    def num_classes(self) -> Optional[int]:
        """Number of classes of the conditioning, or None."""
        return self.net.num_classes

    def _flat(self, codes: torch.Tensor, y: Optional[torch.Tensor]):
        _check_codes(codes, self.num_codes, self.grid_shape)
        batch = codes.shape[:-2]
        flat = codes.reshape(-1, *self.grid_shape).long()
        if self.num_classes is not None:
            if y is None:
                raise ValueError("this prior is class-conditional: pass y, int64 labels of "
                                 "shape codes.shape[:-2] (or broadcastable to it)")
            y = torch.as_tensor(y, device=codes.device).long().expand(batch).reshape(-1)
        return flat, y, batch

    def logits(self, codes: torch.Tensor, y: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Logits of p(c_ij | c_<ij): codes (..., H, W) integer -> (..., K, H, W) float."""
        flat, y, batch = self._flat(codes, y)
        return self.net(flat, y).reshape(*batch, self.num_codes, *self.grid_shape)

    def log_prob(self, codes: torch.Tensor, y: Optional[torch.Tensor] = None) -> torch.Tensor:
        """log p(codes) in nats: codes (..., H, W) integer in [0, K) -> (...) float.

        Raises:
            ValueError: wrong shape or dtype, values outside [0, K), missing ``y`` for a
                class-conditional prior.
        """
        flat, y, batch = self._flat(codes, y)
        logits = self.net(flat, y)  # (B', K, H, W)
        lp = -F.cross_entropy(logits, flat, reduction="none")  # (B', H, W)
        return lp.sum(dim=(-2, -1)).reshape(batch)

    @torch.no_grad()
    def sample(self, num_samples: int, y: Optional[torch.Tensor] = None, *,
               method: str = "cached", uniforms: Optional[torch.Tensor] = None,
               generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """Ancestral samples codes ~ p(codes): (num_samples, H, W) int64.

        Args:
            num_samples: number of grids (>= 1).
            y: (num_samples,) int64 labels for a class-conditional prior (or one int).
            method: ``"cached"`` (default; Ramachandran et al. 2017, about one forward
                pass of work) or ``"naive"`` (H * W full forward passes). Same draws given
                the same ``uniforms`` (:mod:`lvm_pyro.nn.pixelcnn_sampling`).
            uniforms: optional (num_samples, H, W) in [0, 1) in the network's dtype and
                device, consumed by inverse-CDF sampling in raster order; drawn with
                ``generator`` (or the global RNG) when None.

        Raises:
            ValueError: bad ``num_samples``, ``method``, ``uniforms`` or ``y``.
        """
        fn, uniforms = _sampler(self.net, self.grid_shape, num_samples, method, uniforms,
                                generator)
        p = next(self.net.parameters())
        if self.num_classes is not None:
            if y is None:
                raise ValueError("this prior is class-conditional: pass y (num_samples,) labels")
            y = torch.as_tensor(y, device=p.device).long().expand(num_samples)
        return fn(self.net, uniforms, y).codes

    def distribution(self, y: Optional[torch.Tensor] = None) -> ModuleCodesPrior:
        """This prior as a Pyro distribution over (H, W) code grids (batch shape y.shape,
        or () when unconditional), sampled by the cached sampler."""
        self.net  # inside a PyroModule call this registers the weights (pyro.module)
        return ModuleCodesPrior(self, self.grid_shape, self.num_codes, y)

    def forward(self, codes: torch.Tensor, *, y: Optional[torch.Tensor] = None,
                num_data: Optional[int] = None, idx: Optional[torch.Tensor] = None) -> None:
        with data_plate(codes, num_data, idx):
            pyro.sample(CODES, self.distribution(y), obs=codes)


class CodesPrior(Messenger):
    """Effect handler: run a VQ-VAE model (or any program with a ``"codes"`` site of event
    shape (H, W)) with its ``"codes"`` distribution replaced by a fitted prior.

    Under the engine (:func:`lvm_pyro.inference.log_weights`) with the VQ-VAE guide (a
    point mass at the encoder's codes) the log weight is then the two-stage bound
    ``log p(x | z_q) + log p_prior(codes)`` per datapoint, in nats.

    Args:
        prior: the fitted :class:`GatedPixelCNNPrior`.
        y: optional labels for a class-conditional prior, broadcast to the site's batch shape.

    Raises:
        ValueError: at the site, when its event shape differs from the prior's grid.
    """

    def __init__(self, prior: GatedPixelCNNPrior, y: Optional[torch.Tensor] = None):
        super().__init__()
        self.prior, self.y = prior, y

    def _pyro_sample(self, msg: dict) -> None:
        if msg["name"] != CODES:
            return
        fn = msg["fn"]
        if tuple(fn.event_shape) != self.prior.grid_shape:
            raise ValueError(f"site {CODES!r} has event shape {tuple(fn.event_shape)} but the "
                             f"prior's grid is {self.prior.grid_shape}")
        msg["fn"] = self.prior.distribution(self.y).expand(fn.batch_shape)
