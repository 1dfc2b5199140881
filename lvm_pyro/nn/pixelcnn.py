"""Gated PixelCNN network (van den Oord et al. 2016, "Conditional Image Generation with
PixelCNN Decoders", Sec. 2.1-2.3 and Fig. 2) over a grid of integer symbols.

Plain torch: no Pyro, no sampling loop (see :mod:`lvm_pyro.nn.pixelcnn_sampling` for the
naive and the cached sampler, :class:`lvm_pyro.models.GatedPixelCNNPrior` for the prior).

Masks as cropped kernels
------------------------
The paper's masked convolutions are written here as convolutions whose kernels only hold
the unmasked taps, followed by a shift (pad, then crop). With ``r = kernel_size // 2``:

* vertical stack, first layer (mask A): kernel ``(r, k)`` over rows ``i - r .. i - 1``;
  later layers (mask B): kernel ``(r + 1, k)`` over rows ``i - r .. i`` of the previous
  vertical features (which themselves only see rows ``< i``). So the vertical features at
  row ``i`` depend on input rows ``< i`` only, and can feed the horizontal stack of the
  same row directly (the paper's "shift down" is built in).
* horizontal stack, first layer (mask A): kernel ``(1, r)`` over columns ``j - r .. j - 1``;
  later layers (mask B): kernel ``(1, r + 1)`` over columns ``j - r .. j``.

The output at ``(i, j)`` after ``L`` layers therefore depends on exactly the inputs at rows
``i - rL .. i - 1``, columns ``j - rL .. j + rL`` and on row ``i``, columns
``j - rL .. j - 1`` (clipped at the borders): every earlier position within that window,
no blind spot, nothing at ``(i, j)`` or later in raster order. ``tests/test_pixelcnn.py``
checks this set exactly with Jacobians.

Each gated layer (paper Eq. 2 with the conditioning of Eq. 4):
``v' = tanh(W_f * v + V_f y) . sigmoid(W_g * v + V_g y)``;
the horizontal stack adds a 1x1 map of the vertical pre-activation, gates the same way,
applies a 1x1 convolution and a residual connection (not in the first layer, whose input
sits at the current position). A spatial conditioning map s (B, S, H, W) (paper Eq. 5,
e.g. the upsampled top codes of VQ-VAE-2) enters every layer as an unmasked 1x1
convolution ``V * s`` added to both pre-activations: s is given, not generated, so it
may be read at every position, the current one included.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["gate", "GatedLayer", "GatedPixelCNN"]


def gate(pre: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """Gated activation ``tanh(a) * sigmoid(b)`` where ``(a, b)`` are the two halves of
    ``pre`` along ``dim`` (paper Eq. 2): (..., 2C, ...) -> (..., C, ...)."""
    a, b = pre.chunk(2, dim=dim)
    return torch.tanh(a) * torch.sigmoid(b)


class GatedLayer(nn.Module):
    """One gated layer with a vertical and a horizontal stack (Fig. 2 of the paper).

    Args:
        channels: C, width of both stacks.
        kernel_size: odd k >= 3; r = k // 2 is the reach per layer.
        first: mask A (the current position is excluded) and no residual; else mask B.
        num_classes: if given, a learnt class embedding (V y of Eq. 4) is added to the
            vertical and the horizontal pre-activations.
        cond_dim: if given (instead of ``num_classes``), a learnt linear map of a
            continuous vector h (B, cond_dim), V^T h of Eq. 4 without bias (e.g. a VAE's
            latent z, Gulrajani et al. 2016), is added the same way.
        cond_channels: if given, S, the channels of a spatial conditioning map s; the
            unmasked 1x1 convolution V * s (paper Eq. 5, no bias) is added to the vertical
            and horizontal pre-activations (with or without ``num_classes``).

    ``forward(v, h, y=None, s=None)``: v, h (B, C, H, W), y (B,) int64 labels,
    (B, cond_dim) float or None, s (B, S, H, W) float or None -> (v', h'), both
    (B, C, H, W).

    Raises:
        ValueError: both ``num_classes`` and ``cond_dim``; at ``forward``, a missing ``y``
            for a conditional layer, a missing or misshapen ``s`` for a spatially
            conditioned one.
    """

    def __init__(self, channels: int, kernel_size: int, first: bool,
                 num_classes: Optional[int] = None, cond_dim: Optional[int] = None,
                 cond_channels: Optional[int] = None):
        super().__init__()
        r = kernel_size // 2
        self.channels, self.kernel_size, self.radius, self.first = channels, kernel_size, r, first
        tap = r if first else r + 1
        self.v_conv = nn.Conv2d(channels, 2 * channels, (tap, kernel_size))
        self.h_conv = nn.Conv2d(channels, 2 * channels, (1, tap))
        self.v_to_h = nn.Conv2d(2 * channels, 2 * channels, 1)
        self.h_out = nn.Conv2d(channels, channels, 1)
        if num_classes and cond_dim:
            raise ValueError("pass num_classes or cond_dim, not both")
        self.cond = nn.Embedding(num_classes, 4 * channels) if num_classes else None
        if cond_dim:
            self.cond = nn.Linear(cond_dim, 4 * channels, bias=False)
        self.cond_map = (nn.Conv2d(cond_channels, 4 * channels, 1, bias=False)
                         if cond_channels else None)

    def spatial_conditioning(self, s: Optional[torch.Tensor]) -> tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
        """Spatial conditioning terms (V_v * s, V_h * s), each (B, 2C, H, W), or
        (None, None) without a conditioning map (paper Eq. 5)."""
        if self.cond_map is None:
            return None, None
        if s is None or s.dim() != 4 or s.shape[1] != self.cond_map.in_channels:
            got = None if s is None else tuple(s.shape)
            raise ValueError("this network is conditioned on a spatial map: pass s, (batch, "
                             f"{self.cond_map.in_channels}, H, W) float; got {got}")
        return self.cond_map(s).chunk(2, dim=1)

    def conditioning(self, y: Optional[torch.Tensor]) -> tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
        """Conditioning terms (V_v y, V_h y), each (B, 2C), or (None, None) when
        unconditional."""
        if self.cond is None:
            return None, None
        if y is None:
            if isinstance(self.cond, nn.Linear):
                raise ValueError("this network is conditioned on a vector: pass y, (batch, "
                                 f"{self.cond.in_features}) float")
            raise ValueError("this network is class-conditional: pass y, (batch,) int64 labels")
        return self.cond(y).chunk(2, dim=-1)

    def forward(self, v: torch.Tensor, h: torch.Tensor,
                y: Optional[torch.Tensor] = None,
                s: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:
        height, width = v.shape[-2:]
        r = self.radius
        v_pre = self.v_conv(F.pad(v, (r, r, r, 0)))[..., :height, :]  # (B, 2C, H, W)
        h_pre = self.h_conv(F.pad(h, (r, 0, 0, 0)))[..., :width] + self.v_to_h(v_pre)
        cv, ch = self.conditioning(y)
        if cv is not None:
            v_pre = v_pre + cv[..., None, None]
            h_pre = h_pre + ch[..., None, None]
        sv, sh = self.spatial_conditioning(s)
        if sv is not None:
            v_pre, h_pre = v_pre + sv, h_pre + sh
        v_new = gate(v_pre)  # (B, C, H, W)
        h_new = self.h_out(gate(h_pre))
        if not self.first:
            h_new = h_new + h
        return v_new, h_new


class GatedPixelCNN(nn.Module):
    """Gated PixelCNN over (B, H, W) grids of symbols in ``{0, ..., num_codes - 1}``:
    returns per-position logits of p(c_ij | c_<ij) in raster order.

    Args:
        num_codes: K, number of symbols (e.g. the VQ-VAE's ``codebook_size``).
        channels: C, width of the stacks (default 64).
        num_layers: L gated layers (default 8); the receptive field reaches
            ``(kernel_size // 2) * L`` rows up and columns left / right.
        kernel_size: odd k >= 3 (default 3).
        num_classes: optional class conditioning (paper Eq. 4).
        head_dim: width of the two-layer 1x1 output head (default 2C).
        cond_dim: optional conditioning on a continuous vector (paper Eq. 4 with h a
            (B, cond_dim) float vector, e.g. a VAE's latent z): pass it as ``y``.
        num_outputs: channels of the output head (default ``num_codes``: softmax logits,
            what the samplers of :mod:`lvm_pyro.nn.pixelcnn_sampling` need); another
            value gives per-position parameters of a parametric likelihood (e.g. a
            discretised logistic's location and log-scale).
        cond_channels: optional spatial conditioning (paper Eq. 5): S channels of a map
            s (B, S, H, W) passed as ``s``, read through a 1x1 convolution in every layer.

    Raises:
        ValueError: a size out of range, an even kernel, both ``num_classes`` and
            ``cond_dim``.
    """

    def __init__(self, num_codes: int, channels: int = 64, num_layers: int = 8,
                 kernel_size: int = 3, num_classes: Optional[int] = None,
                 head_dim: Optional[int] = None, cond_dim: Optional[int] = None,
                 num_outputs: Optional[int] = None, cond_channels: Optional[int] = None):
        super().__init__()
        if num_codes < 2:
            raise ValueError(f"num_codes must be >= 2, got {num_codes}")
        if channels < 1 or num_layers < 1:
            raise ValueError(f"channels and num_layers must be >= 1, got {channels}, {num_layers}")
        if kernel_size < 3 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd and >= 3, got {kernel_size}")
        if num_classes is not None and num_classes < 1:
            raise ValueError(f"num_classes must be None or >= 1, got {num_classes}")
        if cond_dim is not None and cond_dim < 1:
            raise ValueError(f"cond_dim must be None or >= 1, got {cond_dim}")
        if cond_dim is not None and num_classes is not None:
            raise ValueError("pass num_classes (labels) or cond_dim (a vector), not both")
        if cond_channels is not None and cond_channels < 1:
            raise ValueError(f"cond_channels must be None or >= 1, got {cond_channels}")
        if num_outputs is not None and num_outputs < 1:
            raise ValueError(f"num_outputs must be None or >= 1, got {num_outputs}")
        num_outputs = num_codes if num_outputs is None else int(num_outputs)
        head_dim = 2 * channels if head_dim is None else int(head_dim)
        self.num_codes, self.channels, self.num_layers = int(num_codes), int(channels), int(num_layers)
        self.kernel_size, self.radius = int(kernel_size), int(kernel_size) // 2
        self.num_classes = num_classes
        self.cond_dim, self.num_outputs = cond_dim, num_outputs
        self.cond_channels = cond_channels
        self.embed = nn.Embedding(num_codes, channels)
        self.layers = nn.ModuleList(
            GatedLayer(channels, kernel_size, first=(l == 0), num_classes=num_classes,
                       cond_dim=cond_dim, cond_channels=cond_channels)
            for l in range(num_layers))
        self.head = nn.Sequential(nn.ReLU(), nn.Conv2d(channels, head_dim, 1), nn.ReLU(),
                                  nn.Conv2d(head_dim, num_outputs, 1))

    @property
    def receptive_radius(self) -> int:
        """How far up / left / right the output at a position reaches: (k // 2) * L."""
        return self.radius * self.num_layers

    def after_layer(self, l: int, h: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        """Hook on the horizontal features h (B, C, H, W) after layer ``l`` (e (B, C, H, W)
        is the embedded input): the identity here; subclasses insert blocks (e.g. causal
        self-attention) that keep causality."""
        return h

    def after_layer_step(self, l: int, h: torch.Tensor, e_prev: torch.Tensor, cache: dict,
                         position: tuple[int, int, int, int]) -> torch.Tensor:
        """:meth:`after_layer` at one position, for the cached sampler: h (B, C) the
        horizontal features at ``position = (i, j, H, W)``, e_prev (B, C) the embedded
        code at the previous position in raster order (zeros at (0, 0)), ``cache`` a dict
        owned by the sampler (empty at the start of a draw) for state kept across
        positions (e.g. an attention key / value cache). The identity here."""
        return h

    def features(self, e: torch.Tensor, y: Optional[torch.Tensor] = None,
                 s: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Last horizontal-stack features from embedded input e (B, C, H, W) float:
        (B, C, H, W). The output head is 1x1, so these carry the network's whole
        dependency structure (used by the causality tests)."""
        v, h = e, e
        for l, layer in enumerate(self.layers):
            v, h = layer(v, h, y, s)
            h = self.after_layer(l, h, e)
        return h

    def forward_embedded(self, e: torch.Tensor, y: Optional[torch.Tensor] = None,
                         s: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Logits from embedded input e (B, C, H, W) float: (B, K, H, W)."""
        return self.head(self.features(e, y, s))

    def forward(self, codes: torch.Tensor, y: Optional[torch.Tensor] = None,
                s: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Logits of p(c_ij | c_<ij): codes (B, H, W) int64 -> (B, K, H, W), float (K =
        ``num_outputs``, by default ``num_codes``); y: (B,) int64 labels, (B, cond_dim)
        float or None; s: (B, S, H, W) spatial conditioning map (``cond_channels``) or
        None. The logits at (i, j) depend only on codes before (i, j) in raster order
        (and on y and s)."""
        e = self.embed(codes).permute(0, 3, 1, 2)  # (B, C, H, W)
        return self.forward_embedded(e, y, s)
