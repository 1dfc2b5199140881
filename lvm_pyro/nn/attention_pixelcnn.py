"""Gated PixelCNN with causal self-attention layers over raster order, in the manner of
PixelSNAIL (Chen et al. 2018), the top-level prior of VQ-VAE-2 (Razavi et al. 2019,
Sec. 3.2: "we use ... a PixelCNN with multi-headed self-attention layers" for the top
codes, which need global context).

Plain torch. The attention blocks sit on the horizontal stack after chosen gated layers
(:meth:`lvm_pyro.nn.pixelcnn.GatedPixelCNN.after_layer`). The horizontal features at a
position p depend only on codes strictly before p in raster order, so attention over
earlier positions keeps that property while making every earlier position visible:
after one attention block the output at p depends on *all* codes before p (no finite
receptive field), and still on none at or after p (``tests/test_vqvae2.py`` checks the
exact set by Jacobians).
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .pixelcnn import GatedPixelCNN

__all__ = ["CausalSelfAttention", "AttentionPixelCNN", "raster_positions"]


def raster_positions(height: int, width: int, like: torch.Tensor) -> torch.Tensor:
    """Fixed 2-d position features of every grid position in raster order, (H W, 2):
    (row / H, column / W) - 0.5, in ``like``'s dtype and device."""
    rows = torch.arange(height, dtype=like.dtype, device=like.device) / height - 0.5
    cols = torch.arange(width, dtype=like.dtype, device=like.device) / width - 0.5
    return torch.stack(torch.meshgrid(rows, cols, indexing="ij"), -1).reshape(-1, 2)


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention over the positions of a grid in raster order,
    with a residual connection (Vaswani et al. 2017, Eq. 1, through
    ``torch.nn.functional.scaled_dot_product_attention``). As in PixelSNAIL (Chen et al.
    2018), keys and values also read the embedded input, and the query at position p
    attends to positions q < p only (plus a learnt start slot, so that p = 0 has
    something to read)::

        query_p = W_q (LN_q(h_p) + W_pos pos_p)
        slot_0  = start,   slot_(q+1) = LN_k(h_q) + W_e e_q + W_pos pos_q     (q < T - 1)
        h'_p = h_p + W_o MultiHead(query_p; keys / values W_k, W_v of slots 0 .. p)

    (pos from :func:`raster_positions`). h_p depends on codes before p only, and the
    slots read codes up to p - 1, so h'_p depends on every code before p and on none at
    or after p.

    Args:
        channels: C, the feature width.
        num_heads: heads (C must be divisible by it).

    ``forward(h, e)``: h, e (B, C, H, W) -> (B, C, H, W).
    ``step(h, e_prev, cache, t, height, width)``: h (B, C) at raster position t, e_prev
    (B, C) the embedded code at t - 1; keeps keys and values in ``cache`` (a dict, reset
    at t = 0) and returns (B, C), what ``forward`` gives at t.

    Raises:
        ValueError: C not divisible by ``num_heads``.
    """

    def __init__(self, channels: int, num_heads: int = 1):
        super().__init__()
        if num_heads < 1 or channels % num_heads:
            raise ValueError(f"channels ({channels}) must be divisible by num_heads ({num_heads})")
        self.channels, self.num_heads = int(channels), int(num_heads)
        self.norm_q, self.norm_k = nn.LayerNorm(channels), nn.LayerNorm(channels)
        self.pos = nn.Linear(2, channels, bias=False)
        self.embed_in = nn.Linear(channels, channels, bias=False)
        self.start = nn.Parameter(torch.zeros(channels))
        self.query = nn.Linear(channels, channels)
        self.key_value = nn.Linear(channels, 2 * channels)
        self.out = nn.Linear(channels, channels)

    def _heads(self, z: torch.Tensor) -> torch.Tensor:
        """(B, T, C) -> (B, heads, T, C / heads)."""
        b, t, _ = z.shape
        return z.reshape(b, t, self.num_heads, -1).transpose(1, 2)

    def forward(self, h: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        b, c, height, width = h.shape
        x = h.flatten(2).transpose(1, 2)  # (B, T, C), raster order
        ex = e.flatten(2).transpose(1, 2)  # (B, T, C)
        pos = self.pos(raster_positions(height, width, x))  # (T, C)
        q = self._heads(self.query(self.norm_q(x) + pos))
        slots = self.norm_k(x) + self.embed_in(ex) + pos  # (B, T, C): slot q + 1
        slots = torch.cat([self.start.expand(b, 1, c), slots[:, :-1]], dim=1)  # (B, T, C)
        k, v = (self._heads(z) for z in self.key_value(slots).chunk(2, dim=-1))
        o = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, heads, T, C/heads)
        o = self.out(o.transpose(1, 2).reshape(b, -1, c))  # (B, T, C)
        return h + o.transpose(1, 2).reshape(b, c, height, width)

    def step(self, h: torch.Tensor, e_prev: torch.Tensor, cache: dict, t: int,
             height: int, width: int) -> torch.Tensor:
        b, c = h.shape
        pos = self.pos(raster_positions(height, width, h))  # (T, C)
        if t == 0:
            shape = (b, self.num_heads, height * width, c // self.num_heads)
            cache["k"], cache["v"] = h.new_zeros(shape), h.new_zeros(shape)
            slot = self.start.expand(b, c)
        else:
            slot = self.norm_k(cache["h_prev"]) + self.embed_in(e_prev) + pos[t - 1]  # (B, C)
        k, v = (self._heads(z[:, None]) for z in self.key_value(slot).chunk(2, dim=-1))
        cache["k"][:, :, t], cache["v"][:, :, t] = k[:, :, 0], v[:, :, 0]
        cache["h_prev"] = h
        q = self._heads(self.query(self.norm_q(h) + pos[t])[:, None])  # (B, heads, 1, C/heads)
        o = F.scaled_dot_product_attention(q, cache["k"][:, :, :t + 1], cache["v"][:, :, :t + 1])
        return h + self.out(o.reshape(b, c))


class AttentionPixelCNN(GatedPixelCNN):
    """A :class:`~lvm_pyro.nn.pixelcnn.GatedPixelCNN` with a
    :class:`CausalSelfAttention` block on the horizontal stack after each gated layer in
    ``attention_layers``: per-position logits of p(c_ij | c_<ij) over a (B, H, W) grid
    of symbols, every earlier position in view once an attention block has run.

    Args:
        num_codes, channels, num_layers, kernel_size, num_classes, head_dim: as
            :class:`~lvm_pyro.nn.pixelcnn.GatedPixelCNN` (class conditioning, paper Eq. 4).
        attention_layers: indices (0 .. num_layers - 1) of the gated layers followed by an
            attention block (default: every second layer, starting with layer 1, or
            layer 0 for a one-layer net).
        num_heads: heads per attention block.

    ``forward(codes, y=None)`` as the gated PixelCNN's. The cached sampler of
    :mod:`lvm_pyro.nn.pixelcnn_sampling` works unchanged: it calls
    :meth:`after_layer_step`, which keeps each block's keys and values.

    Raises:
        ValueError: a layer index out of range, C not divisible by ``num_heads``, and the
            gated PixelCNN's errors.
    """

    def __init__(self, num_codes: int, channels: int = 64, num_layers: int = 8,
                 kernel_size: int = 3, num_classes: Optional[int] = None,
                 head_dim: Optional[int] = None,
                 attention_layers: Optional[Sequence[int]] = None, num_heads: int = 1):
        super().__init__(num_codes, channels, num_layers, kernel_size, num_classes, head_dim)
        if attention_layers is None:
            attention_layers = list(range(1, num_layers, 2)) or [0]
        attention_layers = sorted({int(l) for l in attention_layers})
        if any(not 0 <= l < num_layers for l in attention_layers):
            raise ValueError(f"attention_layers must lie in [0, {num_layers - 1}], got "
                             f"{attention_layers}")
        self.attention_layers = attention_layers
        self.attention = nn.ModuleDict(
            {str(l): CausalSelfAttention(channels, num_heads) for l in attention_layers})

    def after_layer(self, l: int, h: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        return self.attention[str(l)](h, e) if str(l) in self.attention else h

    def after_layer_step(self, l: int, h: torch.Tensor, e_prev: torch.Tensor, cache: dict,
                         position: tuple[int, int, int, int]) -> torch.Tensor:
        if str(l) not in self.attention:
            return h
        i, j, height, width = position
        return self.attention[str(l)].step(h, e_prev, cache.setdefault(l, {}), i * width + j,
                                           height, width)
