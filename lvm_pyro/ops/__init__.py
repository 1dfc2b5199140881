"""Custom operators (torch.library ops with a CPU reference and Triton CUDA kernels)."""

__all__: list[str] = []
from .vq_nearest import vq_nearest  # noqa: E402

__all__ += ["vq_nearest"]
