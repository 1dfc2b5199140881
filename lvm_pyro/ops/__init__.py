"""Custom operators (torch.library ops with a CPU reference and Triton CUDA kernels)."""

__all__: list[str] = []
