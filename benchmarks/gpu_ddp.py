"""1 GPU x N processes: data-parallel training throughput on one CUDA device shared by N
processes (gloo over CUDA tensors: NCCL refuses two ranks on one GPU), N = 1, 2, 4 by
default. CI never runs it.

    python benchmarks/gpu_ddp.py                       # cuda, 1 2 4 processes
    python benchmarks/gpu_ddp.py --device cpu --rows 400 --epochs 2 --procs 1 2   # tiny check

Same measurements and outputs as ``benchmarks/bench_ddp.py`` (``results/ddp_cuda.*``); with
several GPUs, ``torchrun --nproc_per_node <GPUs> -m lvm_pyro.cli fit --device cuda ...``
uses NCCL, one GPU per rank.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_ddp import main  # noqa: E402

if __name__ == "__main__":
    if "--device" not in sys.argv:
        sys.argv += ["--device", "cuda"]
    if "--procs" not in sys.argv:
        sys.argv += ["--procs", "1", "2", "4"]
    main()
