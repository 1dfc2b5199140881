"""Nearest-codebook search, the hot spot of vector quantisation (van den Oord et al. 2017,
eq. 1: k = argmin_j ||z_e - e_j||_2), registered as the custom op ``lvm_pyro::vq_nearest``.

Implementations (one op, dispatched by device):

* CPU (the reference): chunked over the N query vectors with the addmm expansion
  ``argmin_j ( ||e_j||^2 - 2 z . e_j )`` (``||z||^2`` is constant per row and dropped), so
  memory stays O(chunk x K) instead of the N x K distance matrix. float32 inputs are
  computed in float32, float64 in float64, float16 / bfloat16 in float32.
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

#: distances held at once by the chunked path: chunk rows x K <= this many elements
#: (2**20 float32 = 4 MiB); see benchmarks/bench_vq_nearest.py for the choice.
DEFAULT_CHUNK_ELEMENTS = 2 ** 20


def default_chunk_size(num_codes: int, budget: int = DEFAULT_CHUNK_ELEMENTS) -> int:
    """Rows of z per chunk so that chunk x ``num_codes`` <= ``budget`` (at least 1 row)."""
    return max(1, budget // max(1, num_codes))


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _chunked_nearest(z: Tensor, codebook: Tensor, chunk_size: int) -> Tensor:
    """Chunked addmm expansion + argmin on any device: z (N, D), codebook (K, D) ->
    (N,) int64. Memory: one (chunk, K) buffer, reused."""
    dtype = _compute_dtype(torch.promote_types(z.dtype, codebook.dtype))
    z = z.to(dtype)
    e = codebook.to(dtype)
    n, k = z.shape[0], e.shape[0]
    out = torch.empty(n, dtype=torch.int64, device=z.device)
    if n == 0:
        return out
    e_sq = (e * e).sum(dim=1)  # (K,)
    e_t = e.t()  # (D, K)
    chunk = max(1, min(int(chunk_size), n))
    buf = torch.empty(chunk, k, dtype=dtype, device=z.device)  # (chunk, K), reused
    for start in range(0, n, chunk):
        stop = min(start + chunk, n)
        d = buf[:stop - start]
        torch.addmm(e_sq, z[start:stop], e_t, beta=1.0, alpha=-2.0, out=d)  # ||e||^2 - 2 z.e
        torch.argmin(d, dim=1, out=out[start:stop])  # first minimum: ties -> lowest index
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
        chunk_size: rows per chunk on the CPU path (default: as many as keep
            chunk x K <= 2**20 distances, i.e. 4 MiB in float32).

    Returns:
        (N,) int64 indices in [0, K). Exact ties go to the lowest index.

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

