"""Triton kernel for :func:`lvm_pyro.ops.vq_nearest`: fused squared distance + argmin over
codebook tiles; the N x K distance matrix is never materialised.

Each program owns BLOCK_N query rows and walks the codebook in tiles of BLOCK_K rows,
keeping a running (minimum, index) pair per query row:

    dist[n, k] = ||e_k||^2 - 2 <z_n, e_k>        (||z_n||^2 dropped: constant per row)

The dot products are ``tl.dot(..., input_precision="ieee")``: IEEE fp32 products and
accumulation (no TF32), so the result matches the CPU float32 reference up to summation
order. Inputs of lower precision are loaded and cast to fp32. Ties: ``tl.argmin`` breaks
ties to the left inside a tile, and a later tile replaces the running best only when
strictly smaller, so exact ties resolve to the lowest index.

Runs on CUDA tensors, or on CPU tensors under ``TRITON_INTERPRET=1`` (set before this
module is imported), which is how the test suite checks it without a GPU.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

__all__ = ["triton_vq_nearest"]


@triton.jit
def _vq_nearest_kernel(z_ptr, e_ptr, e_sq_ptr, out_ptr, N, K, D,
                       stride_zn, stride_zd, stride_ek, stride_ed,
                       BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr,
                       SINGLE_D: tl.constexpr):
    pid = tl.program_id(0)
    rows = pid * BLOCK_N + tl.arange(0, BLOCK_N)  # (BLOCK_N,)
    row_mask = rows < N
    d_idx = tl.arange(0, BLOCK_D)  # (BLOCK_D,)
    best = tl.full((BLOCK_N,), float("inf"), tl.float32)
    best_idx = tl.zeros((BLOCK_N,), tl.int64)
    if SINGLE_D:  # D <= BLOCK_D: load the query tile once
        z_tile = tl.load(z_ptr + rows[:, None] * stride_zn + d_idx[None, :] * stride_zd,
                         mask=row_mask[:, None] & (d_idx[None, :] < D),
                         other=0.0).to(tl.float32)  # (BLOCK_N, BLOCK_D)
    for k0 in range(0, K, BLOCK_K):
        cols = k0 + tl.arange(0, BLOCK_K)  # (BLOCK_K,)
        col_mask = cols < K
        if SINGLE_D:
            e_tile = tl.load(e_ptr + cols[None, :] * stride_ek + d_idx[:, None] * stride_ed,
                             mask=col_mask[None, :] & (d_idx[:, None] < D),
                             other=0.0).to(tl.float32)  # (BLOCK_D, BLOCK_K)
            acc = tl.dot(z_tile, e_tile, input_precision="ieee")  # (BLOCK_N, BLOCK_K)
        else:
            acc = tl.zeros((BLOCK_N, BLOCK_K), tl.float32)
            for d0 in range(0, D, BLOCK_D):
                ds = d0 + d_idx
                zt = tl.load(z_ptr + rows[:, None] * stride_zn + ds[None, :] * stride_zd,
                             mask=row_mask[:, None] & (ds[None, :] < D), other=0.0).to(tl.float32)
                et = tl.load(e_ptr + cols[None, :] * stride_ek + ds[:, None] * stride_ed,
                             mask=col_mask[None, :] & (ds[:, None] < D), other=0.0).to(tl.float32)
                acc = tl.dot(zt, et, acc, input_precision="ieee")
        e_sq = tl.load(e_sq_ptr + cols, mask=col_mask, other=0.0)  # (BLOCK_K,)
        dist = e_sq[None, :] - 2.0 * acc
        dist = tl.where(col_mask[None, :], dist, float("inf"))
        tile_min = tl.min(dist, axis=1)  # (BLOCK_N,)
        tile_arg = tl.argmin(dist, axis=1, tie_break_left=True).to(tl.int64) + k0
        better = tile_min < best  # strict: earlier tiles win ties
        best = tl.where(better, tile_min, best)
        best_idx = tl.where(better, tile_arg, best_idx)
    tl.store(out_ptr + rows, best_idx, mask=row_mask)


def triton_vq_nearest(z: torch.Tensor, codebook: torch.Tensor, *, block_n: int = 64,
                      block_k: int = 64, block_d: int | None = None,
                      num_warps: int = 4) -> torch.Tensor:
    """Launch the fused kernel: z (N, D), codebook (K, D) floating (fp32 / fp16 / bf16,
    computed in fp32) on CUDA (or CPU under ``TRITON_INTERPRET=1``) -> (N,) int64.

    Args:
        block_n, block_k: query rows and codebook rows per tile (powers of two >= 16).
        block_d: embedding dims per tile (default: next power of two >= D, capped at 128,
            at least 16); D larger than it is looped over.
        num_warps: warps per program (ignored by the interpreter).

    Raises:
        ValueError: bad shapes or tile sizes.
    """
    if z.dim() != 2 or codebook.dim() != 2 or z.shape[1] != codebook.shape[1]:
        raise ValueError(f"need z (N, D) and codebook (K, D); got {tuple(z.shape)}, "
                         f"{tuple(codebook.shape)}")
    n, d = z.shape
    k = codebook.shape[0]
    if block_d is None:
        block_d = min(128, max(16, triton.next_power_of_2(d)))
    for name, b in (("block_n", block_n), ("block_k", block_k), ("block_d", block_d)):
        if b < 16 or b & (b - 1):
            raise ValueError(f"{name} must be a power of two >= 16 (tl.dot's minimum), got {b}")
    out = torch.empty(n, dtype=torch.int64, device=z.device)
    if n == 0:
        return out
    e_sq = codebook.float().pow(2).sum(dim=1).contiguous()  # (K,) fp32
    grid = (triton.cdiv(n, block_n),)
    _vq_nearest_kernel[grid](
        z, codebook, e_sq, out, n, k, d,
        z.stride(0), z.stride(1), codebook.stride(0), codebook.stride(1),
        BLOCK_N=block_n, BLOCK_K=block_k, BLOCK_D=block_d, SINGLE_D=d <= block_d,
        num_warps=num_warps)
    return out
