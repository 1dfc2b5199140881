"""Ancestral sampling from a :class:`~lvm_pyro.nn.pixelcnn.GatedPixelCNN`: the naive loop
and a cached one.

Both draw position by position in raster order, by inverse-CDF sampling from
``softmax(logits)`` with caller-supplied uniforms, so that given the same uniforms they
return the same codes (up to the floating-point rounding of the logits: identical in
float64, logits within about 1e-6 in float32; ``tests/test_pixelcnn.py``).

* :func:`sample_naive` runs the whole network on the whole grid for every position:
  ``H * W`` full forward passes, O((H W)^2) work.
* :func:`sample_cached` follows Ramachandran et al. 2017 ("Fast Generation for
  Convolutional Autoregressive Models"): what earlier rows and positions determined is
  kept in per-layer caches. The vertical stack of every layer is computed once per row
  (its features at row i depend on rows < i only), for the whole row at once; the
  horizontal stack is computed only at the current position, from a row buffer holding
  the previous layer's horizontal features of the ``k // 2`` positions to the left. Work is
  O(H W) network evaluations of one position plus O(H) of one row: about one full forward
  pass in total.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F

from .pixelcnn import GatedPixelCNN, gate

__all__ = ["SampleResult", "inverse_cdf", "sample_naive", "sample_cached"]


class SampleResult(NamedTuple):
    """``codes`` (B, H, W) int64 and the ``logits`` (B, K, H, W) each position was drawn
    from."""

    codes: torch.Tensor
    logits: torch.Tensor


def inverse_cdf(logits: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Draw from Categorical(logits) by inverting the CDF at ``u``.

    Args:
        logits: (B, K) float.
        u: (B,) uniforms in [0, 1), same dtype.

    Returns:
        (B,) int64: the smallest k with cdf_k > u (clamped to K - 1 against rounding).
    """
    cdf = torch.softmax(logits, dim=-1).cumsum(dim=-1)  # (B, K)
    k = (cdf <= u[:, None]).sum(dim=-1)
    return k.clamp_(max=logits.shape[-1] - 1)


def _check(net: GatedPixelCNN, uniforms: torch.Tensor, y: Optional[torch.Tensor],
           s: Optional[torch.Tensor] = None):
    if uniforms.dim() != 3:
        raise ValueError(f"uniforms must be (num_samples, H, W), got shape {tuple(uniforms.shape)}")
    p = next(net.parameters())
    if uniforms.dtype != p.dtype or uniforms.device != p.device:
        raise ValueError(f"uniforms must have the network's dtype and device ({p.dtype}, "
                         f"{p.device}), got ({uniforms.dtype}, {uniforms.device})")
    if net.num_classes is not None and (y is None or y.shape != uniforms.shape[:1]):
        raise ValueError("a class-conditional network needs y of shape (num_samples,)")
    cond_channels = getattr(net, "cond_channels", None)
    if cond_channels is not None:
        want = (uniforms.shape[0], cond_channels, *uniforms.shape[1:])
        if s is None or tuple(s.shape) != want:
            raise ValueError(f"a spatially conditioned network needs s of shape {want}, got "
                             f"{None if s is None else tuple(s.shape)}")
    elif s is not None:
        raise ValueError("s was given but the network has no spatial conditioning "
                         "(cond_channels=None)")


@torch.no_grad()
def sample_naive(net: GatedPixelCNN, uniforms: torch.Tensor,
                 y: Optional[torch.Tensor] = None, s: Optional[torch.Tensor] = None) -> SampleResult:
    """Reference sampler: one full forward pass of ``net`` per position.

    Args:
        net: the network (any dtype / device).
        uniforms: (B, H, W) in [0, 1), the network's dtype and device; ``uniforms[:, i, j]``
            draws position (i, j).
        y: (B,) int64 class labels for a class-conditional network, else None.
        s: (B, S, H, W) spatial conditioning map for a network with ``cond_channels``
            (van den Oord et al. 2016, Eq. 5), else None.

    Returns:
        :class:`SampleResult`.

    Raises:
        ValueError: bad shapes / dtypes, or a missing ``y`` or ``s``.
    """
    _check(net, uniforms, y, s)
    b, height, width = uniforms.shape
    codes = torch.zeros(b, height, width, dtype=torch.long, device=uniforms.device)
    logits = uniforms.new_zeros(b, net.num_codes, height, width)
    for i in range(height):
        for j in range(width):
            lg = net(codes, y, s)[:, :, i, j]  # (B, K)
            logits[:, :, i, j] = lg
            codes[:, i, j] = inverse_cdf(lg, uniforms[:, i, j])
    return SampleResult(codes, logits)


@torch.no_grad()
def sample_cached(net: GatedPixelCNN, uniforms: torch.Tensor,
                  y: Optional[torch.Tensor] = None, s: Optional[torch.Tensor] = None) -> SampleResult:
    """Cached sampler (Ramachandran et al. 2017): same arguments, result and errors as
    :func:`sample_naive`, without recomputing the grid for every position.

    Caches (channels-last, B = batch, C = channels, r = k // 2, zero borders standing in
    for the naive pass's zero padding):

    * ``emb``: the embedded codes drawn so far, (B, r + H, W + 2r, C);
    * ``vert[l]``: the vertical output of layer l, same shape, filled one row at a time;
    * ``v2h[l]``: for the current row, layer l's contribution of the vertical stack and
      the class to the horizontal pre-activation, (B, W, 2C);
    * ``hrow[l]``: the horizontal output of layer l on the current row, (B, r + W, C);
    * ``step_cache``: the network's own state across positions for its
      :meth:`~lvm_pyro.nn.pixelcnn.GatedPixelCNN.after_layer_step` blocks (e.g. the
      key / value cache of causal self-attention).
    """
    _check(net, uniforms, y, s)
    b, height, width = uniforms.shape
    r, c, num_layers = net.radius, net.channels, net.num_layers
    device = uniforms.device
    layers = list(net.layers)
    # weights, rearranged once for channels-last windows
    vw = [l.v_conv.weight.permute(0, 2, 3, 1).reshape(2 * c, -1) for l in layers]  # (2C, tap*k*C)
    hw = [l.h_conv.weight.permute(0, 2, 3, 1).reshape(2 * c, -1) for l in layers]  # (2C, tap*C)
    conds = [l.conditioning(y) for l in layers]
    # spatial conditioning (Eq. 5), channels-last: each (B, H, W, 2C) or None
    sconds = [tuple(None if t is None else t.permute(0, 2, 3, 1) for t in l.spatial_conditioning(s))
              for l in layers]
    step_cache: dict = {}
    head1, head2 = net.head[1], net.head[3]
    emb = uniforms.new_zeros(b, r + height, width + 2 * r, c)
    vert = [uniforms.new_zeros(b, r + height, width + 2 * r, c) for _ in layers[:-1]]
    hrow = [uniforms.new_zeros(b, r + width, c) for _ in layers[:-1]]
    codes = torch.zeros(b, height, width, dtype=torch.long, device=device)
    logits = uniforms.new_zeros(b, net.num_codes, height, width)
    table = net.embed.weight  # (K, C)
    for i in range(height):
        # vertical stack of every layer for the whole of row i (depends on rows < i)
        v2h = []
        src = emb
        for l, layer in enumerate(layers):
            tap = layer.v_conv.kernel_size[0]
            win = src[:, i:i + tap]  # grid rows i - r .. i - 1 (first layer) or i - r .. i
            # win: (B, tap, W + 2r, C) -> patches (B, W, tap * k * C)
            patches = win.unfold(2, net.kernel_size, 1)  # (B, tap, W, C, k)
            patches = patches.permute(0, 2, 1, 4, 3).reshape(b, width, -1)
            v_pre = F.linear(patches, vw[l], layer.v_conv.bias)  # (B, W, 2C)
            to_h = F.linear(v_pre, layer.v_to_h.weight[:, :, 0, 0], layer.v_to_h.bias)
            to_h = to_h + layer.h_conv.bias
            cv, ch = conds[l]
            if cv is not None:
                v_pre = v_pre + cv[:, None, :]
                to_h = to_h + ch[:, None, :]
            sv, sh = sconds[l]
            if sv is not None:
                v_pre = v_pre + sv[:, i]
                to_h = to_h + sh[:, i]
            if l < num_layers - 1:
                vert[l][:, i + r, r:r + width] = gate(v_pre, dim=-1)
                src = vert[l]
            v2h.append(to_h)
        # horizontal stack, one position at a time
        for j in range(width):
            t = i * width + j - 1  # previous position in raster order (zero border at t < 0)
            e_prev = emb[:, t // width + r, t % width + r]  # (B, C)
            h = None
            for l, layer in enumerate(layers):
                if layer.first:
                    win = emb[:, i + r, j:j + r]  # columns j - r .. j - 1: (B, r, C)
                else:
                    win = hrow[l - 1][:, j:j + r + 1]  # columns j - r .. j: (B, r + 1, C)
                pre = torch.addmm(v2h[l][:, j], win.reshape(b, -1), hw[l].t())  # (B, 2C)
                out = F.linear(gate(pre, dim=-1), layer.h_out.weight[:, :, 0, 0], layer.h_out.bias)
                if not layer.first:
                    out = out + h
                h = net.after_layer_step(l, out, e_prev, step_cache, (i, j, height, width))  # (B, C)
                if l < num_layers - 1:
                    hrow[l][:, j + r] = h
            z = F.linear(torch.relu(h), head1.weight[:, :, 0, 0], head1.bias)
            lg = F.linear(torch.relu(z), head2.weight[:, :, 0, 0], head2.bias)  # (B, K)
            logits[:, :, i, j] = lg
            k = inverse_cdf(lg, uniforms[:, i, j])
            codes[:, i, j] = k
            emb[:, i + r, j + r] = table[k]
    return SampleResult(codes, logits)
