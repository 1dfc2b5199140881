"""GPU check and timing of the Triton nearest-code kernel (needs CUDA; not run in CI).

1. Correctness: on CUDA, ``lvm_pyro.ops.vq_nearest`` (the Triton kernel, IEEE fp32 dots)
   against the CPU chunked reference on the same inputs: the chosen code's float64
   distance must be within 1e-5 (||z||^2 + max ||e||^2) of the minimum for every row, and
   duplicated codebook rows must give the lowest index.
2. Timing: N = 65536, D = 64, K = 512 / 2048 / 8192 (float32), median of CUDA-event-timed
   runs, against torch.cdist + argmin and the addmm expansion on the same GPU (target:
   2x faster than cdist + argmin at K = 8192); peak CUDA memory per method
   (torch.cuda.max_memory_allocated above the inputs).

Writes ``benchmarks/results/vq_nearest_gpu.json`` / ``.txt``.

    .venv/bin/python benchmarks/gpu_vq.py [--repeats 20]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lvm_pyro.ops import vq_nearest  # noqa: E402
from lvm_pyro.ops._triton_vq import triton_vq_nearest  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"


def check(n: int, d: int, k: int, seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    codebook = torch.randn(k, d, generator=g)
    codebook[k // 2] = codebook[3]  # an exact tie: index 3 must win
    z = codebook[torch.randint(k, (n,), generator=g)] + 0.3 * torch.randn(n, d, generator=g)
    z[:8] = codebook[3]
    gpu = vq_nearest(z.cuda(), codebook.cuda()).cpu()
    cpu = vq_nearest(z, codebook)
    dist = torch.cdist(z.double(), codebook.double()) ** 2
    chosen = dist.gather(1, gpu[:, None]).squeeze(1)
    scale = (z.double() ** 2).sum(1) + (codebook.double() ** 2).sum(1).max()
    excess = ((chosen - dist.min(1).values) / scale).max().item()
    return {"n": n, "d": d, "k": k, "max_relative_excess": excess, "ok": excess <= 1e-5,
            "ties_lowest": bool((gpu[:8] == 3).all()),
            "fraction_equal_to_cpu": float((gpu == cpu).double().mean())}


def time_cuda(fn, repeats: int) -> float:
    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        torch.cuda.synchronize()
        times.append(a.elapsed_time(b) / 1000.0)
    return statistics.median(times)


def peak_mib(fn) -> float:
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2 ** 20


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--n", type=int, default=65536)
    ap.add_argument("--d", type=int, default=64)
    a = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("gpu_vq.py needs a CUDA device")
    torch.backends.cuda.matmul.allow_tf32 = False  # baselines in IEEE fp32 too
    checks = [check(n, d, k, s) for s, (n, d, k) in enumerate(
        [(1000, 64, 512), (4097, 64, 8192), (777, 200, 300), (513, 3, 70)])]
    rows = []
    lines = [f"Triton vq_nearest on {torch.cuda.get_device_name()}: N={a.n}, D={a.d}, float32",
             f"{'K':>5} {'method':>18} {'ms':>9} {'x cdist':>8} {'peak MiB':>9}"]
    for k in (512, 2048, 8192):
        g = torch.Generator(device="cuda").manual_seed(k)
        z = torch.randn(a.n, a.d, device="cuda", generator=g)
        e = torch.randn(k, a.d, device="cuda", generator=g)
        e_sq = (e * e).sum(1)
        methods = {
            "triton": lambda: triton_vq_nearest(z, e),
            "triton_bk128": lambda: triton_vq_nearest(z, e, block_n=64, block_k=128),
            "triton_bn128": lambda: triton_vq_nearest(z, e, block_n=128, block_k=64, num_warps=8),
            "cdist_argmin": lambda: torch.cdist(z, e).argmin(1),
            "addmm_argmin": lambda: torch.addmm(e_sq, z, e.t(), alpha=-2.0).argmin(1),
        }
        t = {m: time_cuda(f, a.repeats) for m, f in methods.items()}
        mem = {m: peak_mib(f) for m, f in methods.items()}
        for m in methods:
            row = {"K": k, "method": m, "seconds": t[m], "speedup_vs_cdist": t["cdist_argmin"] / t[m],
                   "peak_mib": mem[m]}
            rows.append(row)
            lines.append(f"{k:>5} {m:>18} {1000 * t[m]:>9.3f} {row['speedup_vs_cdist']:>8.2f} "
                         f"{mem[m]:>9.1f}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = {"device": torch.cuda.get_device_name(), "torch": torch.__version__,
           "checks": checks, "timings": rows}
    (RESULTS / "vq_nearest_gpu.json").write_text(json.dumps(out, indent=2))
    (RESULTS / "vq_nearest_gpu.txt").write_text("\n".join(lines) + "\n")
    print(json.dumps(checks, indent=1))
    print("\n".join(lines))
    if not all(c["ok"] and c["ties_lowest"] for c in checks):
        sys.exit("CHECK FAILED: see checks above")


if __name__ == "__main__":
    main()
