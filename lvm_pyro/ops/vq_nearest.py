"""Nearest-codebook search, the hot spot of vector quantisation (van den Oord et al. 2017,
eq. 1: k = argmin_j ||z_e - e_j||_2), registered as the custom op ``lvm_pyro::vq_nearest``.

Implementations (one op, dispatched by device):

* CPU (the reference): the expansion ``argmin_j ( ||e_j||^2 - 2 z . e_j )`` (``||z||^2``
  is constant per row and dropped), computed tile by tile so that memory stays
  O(rows x tile) instead of the N x K distance matrix, in the blocked scheme of FAISS's
  exact search (``IndexFlatL2``; Johnson, Douze and Jegou 2019, "Billion-scale similarity
  search with GPUs", IEEE Trans. Big Data: ||x - y||^2 through one matrix product): a
  chunk of query rows against a tile of ``CODE_TILE`` codes is one BLAS matrix product
  whose ``(rows, tile)`` output stays in cache. The bias ``||e_j||^2`` rides in the
  product as an extra column (``[z, 1]`` times ``[-2 e_j, ||e_j||^2]``), so no separate
  pass adds it. The argmin of each tile is taken in two vectorised steps (the minimum of
  every block of ``CODE_BLOCK`` codes, then the first block holding the row's minimum
  and the first minimum inside it), which is the exact ``argmin`` of the tile's values at
  a fraction of the cost of ``torch.argmin`` over a long row; the tiles' winners are
  merged in code order. float32 inputs are computed in float32, float64 in float64,
  float16 / bfloat16 in float32.
* CUDA: a Triton kernel (:mod:`lvm_pyro.ops._triton_vq`) that fuses the distance and the
  argmin over codebook tiles and never materialises N x K; the dot products use IEEE fp32
  (``tl.dot(..., input_precision="ieee")``, no TF32). float64 inputs on CUDA take the
  chunked torch path (in float64) instead.
* A fake (meta) kernel, so ``torch.compile`` traces through the op.

Exact ties (e.g. duplicated codebook rows) resolve to the lowest index on every path.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

__all__ = ["vq_nearest", "default_chunk_size", "DEFAULT_CHUNK_ELEMENTS"]

#: query rows x codes per tile is at most this many distances (2**19 float32 = 2 MiB);
#: see benchmarks/bench_vq_nearest.py (``--sweep``) for the choice.
DEFAULT_CHUNK_ELEMENTS = 2 ** 19
#: codes per BLAS product (the width of one distance tile).
CODE_TILE = 1024
#: codes per block of the two-step argmin (block minima, then the argmin inside one block).
CODE_BLOCK = 64
#: rows x K is also at most this many (the winning block of every tile, kept for a chunk
#: of rows, is rows x K x CODE_BLOCK / CODE_TILE values: 2**23 / 16 float32 = 2 MiB).
_MAX_ROWS_X_CODES = 2 ** 23


def default_chunk_size(num_codes: int, budget: int = DEFAULT_CHUNK_ELEMENTS) -> int:
    """Query rows per chunk of the CPU path: rows x min(``num_codes``, ``CODE_TILE``) <=
    ``budget`` distances and rows x ``num_codes`` <= 2**23 (at least 1 row)."""
    num_codes = max(1, int(num_codes))
    return max(1, min(budget // min(num_codes, CODE_TILE), _MAX_ROWS_X_CODES // num_codes))


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _chunked_nearest(z: Tensor, codebook: Tensor, chunk_size: int) -> Tensor:
    """Tiled expansion + exact two-step argmin on any device: z (N, D), codebook (K, D) ->
    (N,) int64, the first index of each row's minimum of ||e_j||^2 - 2 z.e_j as computed.

    Memory: a (rows, tile) distance buffer, reused, plus the winning block of every tile
    for one chunk of rows ((K / tile) x rows x CODE_BLOCK values)."""
    dtype = _compute_dtype(torch.promote_types(z.dtype, codebook.dtype))
    dev = z.device
    n, d = z.shape
    k = codebook.shape[0]
    out = torch.empty(n, dtype=torch.int64, device=dev)
    if n == 0:
        return out
    b = min(CODE_BLOCK, k)  # codes per block
    kp = -(-k // b) * b  # K padded to whole blocks (the padding codes' distances are +inf)
    tile = min(max(b, CODE_TILE // b * b), kp)  # codes per tile, whole blocks
    e = codebook.to(dtype)
    # augmented codebook rows [-2 e_j, ||e_j||^2] (D + 1,), zero rows as padding
    e_aug = torch.zeros(kp, d + 1, dtype=dtype, device=dev)  # (Kp, D + 1)
    torch.mul(e, -2.0, out=e_aug[:k, :d])  # exact: a power of two
    torch.sum(e * e, dim=1, out=e_aug[:k, d])  # ||e_j||^2
    e_aug_t = e_aug.t()  # (D + 1, Kp)
    starts = list(range(0, kp, tile))
    num_tiles = len(starts)
    rows = max(1, min(int(chunk_size), n))
    z_aug = torch.ones(rows, d + 1, dtype=dtype, device=dev)  # [z, 1]
    dist_buf = torch.empty(rows * tile, dtype=dtype, device=dev)  # one (rows, tile) tile
    block_min = torch.empty(rows * (tile // b), dtype=dtype, device=dev)
    tile_min = torch.empty(num_tiles, rows, dtype=dtype, device=dev)  # each tile's minimum
    tile_block = torch.empty(num_tiles, rows, dtype=torch.int64, device=dev)  # its block
    tile_vals = torch.empty(num_tiles, rows, b, dtype=dtype, device=dev)  # that block's values
    block_first = torch.tensor(starts, dtype=torch.int64, device=dev) // b  # (T,) tile -> block
    row_ids = torch.arange(rows, device=dev)
    row_first = {w: row_ids * (w // b) for w in {min(tile, kp - c0) for c0 in starts}}
    sel = torch.empty(rows, dtype=torch.int64, device=dev)
    for start in range(0, n, rows):
        c = min(rows, n - start)
        z_aug[:c, :d].copy_(z[start:start + c])
        zc = z_aug[:c]  # (c, D + 1)
        for t, c0 in enumerate(starts):
            w = min(tile, kp - c0)
            g = w // b  # blocks in this tile
            dist = dist_buf[:c * w].view(c, w)
            torch.mm(zc, e_aug_t[:, c0:c0 + w], out=dist)  # ||e||^2 - 2 z.e, (c, w)
            if c0 + w > k:
                dist[:, k - c0:].fill_(float("inf"))  # padding codes are never chosen
            bm = block_min[:c * g].view(c, g)
            torch.amin(dist.view(c, g, b), dim=2, out=bm)  # (c, g) block minima
            torch.min(bm, dim=1, out=(tile_min[t, :c], tile_block[t, :c]))  # first block
            torch.add(tile_block[t, :c], row_first[w][:c], out=sel[:c])  # row of (c * g, b)
            torch.index_select(dist.view(c * g, b), 0, sel[:c], out=tile_vals[t, :c])
        if num_tiles > 1:
            best_tile = tile_min[:, :c].argmin(dim=0)  # (c,) first tile with the minimum
            flat = best_tile * rows + row_ids[:c]  # (c,) rows of the (T * rows, ...) views
            block = tile_block.view(-1).index_select(0, flat) + block_first[best_tile]
            vals = tile_vals.view(-1, b).index_select(0, flat)  # (c, b)
        else:
            block, vals = tile_block[0, :c], tile_vals[0, :c]
        out[start:start + c] = block * b + vals.argmin(dim=1)  # first minimum in the block
    return out


@torch.library.custom_op("lvm_pyro::vq_nearest", mutates_args=(), device_types="cpu")
def _vq_nearest_op(z: Tensor, codebook: Tensor, chunk_size: int) -> Tensor:
    return _chunked_nearest(z, codebook, chunk_size)


@_vq_nearest_op.register_fake
def _vq_nearest_fake(z: Tensor, codebook: Tensor, chunk_size: int) -> Tensor:
    torch._check(z.dim() == 2 and codebook.dim() == 2 and z.shape[1] == codebook.shape[1])
    return z.new_empty((z.shape[0],), dtype=torch.int64)


@_vq_nearest_op.register_kernel("cuda")
def _vq_nearest_cuda(z: Tensor, codebook: Tensor, chunk_size: int) -> Tensor:
    if torch.promote_types(z.dtype, codebook.dtype) == torch.float64:
        return _chunked_nearest(z, codebook, chunk_size)
    from ._triton_vq import triton_vq_nearest  # Triton is imported only when CUDA runs

    return triton_vq_nearest(z, codebook)


def vq_nearest(z: Tensor, codebook: Tensor, *, chunk_size: Optional[int] = None) -> Tensor:
    """Index of the nearest codebook row for every row of ``z`` (squared Euclidean
    distance), without materialising the N x K distance matrix.

    Args:
        z: (N, D) floating query vectors (encoder outputs); gradients are not tracked.
        codebook: (K, D) floating codebook, same device as ``z``.
        chunk_size: query rows per chunk on the CPU path (default
            :func:`default_chunk_size`: rows x min(K, 1024) <= 2**19 distances, i.e. a
            2 MiB float32 tile, and rows x K <= 2**23). The result does not depend on it.

    Returns:
        (N,) int64 indices in [0, K). Exact ties go to the lowest index. A row of ``z``
        holding NaN or inf gets an unspecified index in [0, K).

    Precision: the chosen code is optimal up to the rounding of the expansion
    ||e||^2 - 2 z.e in the compute dtype (float32 for float32 / float16 / bfloat16
    inputs, float64 for float64): its true squared distance exceeds the minimum by at
    most a few ulps of (||z||^2 + max_j ||e_j||^2). The CUDA (Triton) path uses IEEE
    fp32 dot products (no TF32).

    Raises:
        ValueError: wrong ranks, mismatched D, an empty codebook, non-floating dtypes,
            different devices, or ``chunk_size < 1``.
    """
    if z.dim() != 2 or codebook.dim() != 2:
        raise ValueError(f"vq_nearest needs z (N, D) and codebook (K, D); got z "
                         f"{tuple(z.shape)} and codebook {tuple(codebook.shape)} "
                         "(flatten spatial positions into N first)")
    if z.shape[1] != codebook.shape[1]:
        raise ValueError(f"z has D={z.shape[1]} but codebook rows have D={codebook.shape[1]}; "
                         "embedding_dim must match")
    if codebook.shape[0] == 0:
        raise ValueError("codebook is empty (K = 0); codebook_size must be >= 1")
    if not (torch.is_floating_point(z) and torch.is_floating_point(codebook)):
        raise ValueError(f"vq_nearest needs floating tensors, got {z.dtype} and "
                         f"{codebook.dtype}; convert with .float()")
    if z.device != codebook.device:
        raise ValueError(f"z is on {z.device} but codebook on {codebook.device}; move both "
                         "to one device")
    if chunk_size is None:
        chunk_size = default_chunk_size(codebook.shape[0])
    elif chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    return _vq_nearest_op(z.detach(), codebook.detach(), int(chunk_size))

