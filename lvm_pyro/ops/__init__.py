"""Custom operators (torch.library ops with a CPU reference and Triton CUDA kernels)."""

from .vq_nearest import vq_nearest

__all__ = [
    "vq_nearest",
]
