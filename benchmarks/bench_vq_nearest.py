"""Nearest-code search on CPU: lvm_pyro.ops.vq_nearest (chunked addmm + argmin) against
the full addmm expansion ||z||^2 - 2 z e^T + ||e||^2 + argmin, torch.cdist + argmin, and
vector-quantize-pytorch's VectorQuantize (eval mode, when installed: the ``bench`` extra).

N = 65536 vectors, D = 64, K = 512 / 2048 / 8192, float32, one torch thread.

* time: every method in this one process, interleaved rounds, median of ``--repeats``;
  printed with its ratio to the addmm expansion.
* peak memory: each method once in a fresh child process (same inputs), the rise of the
  resident set during the call over its value just before it (inputs and a small warm-up
  call already made), sampled every 0.2 ms by a background thread, in MiB.

Writes ``benchmarks/results/vq_nearest_cpu.json`` and ``.txt``. No thresholds asserted.

    .venv/bin/python benchmarks/bench_vq_nearest.py [--n 65536] [--ks 512 2048 8192]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
METHODS = ("ours", "addmm", "cdist", "vector_quantize_pytorch")


def _inputs(n: int, d: int, k: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g), torch.randn(k, d, generator=g)


def make_method(name: str, codebook: torch.Tensor, chunk_elements: int | None = None):
    """A callable z -> (N,) int64 indices for ``name`` (or None if unavailable)."""
    if name == "ours":
        from lvm_pyro.ops import vq_nearest
        from lvm_pyro.ops.vq_nearest import default_chunk_size

        chunk = None if chunk_elements is None else default_chunk_size(len(codebook), chunk_elements)
        return lambda z: vq_nearest(z, codebook, chunk_size=chunk)
    if name == "addmm":
        e_sq = (codebook * codebook).sum(1)

        def addmm(z):
            z_sq = (z * z).sum(1, keepdim=True)  # (N, 1)
            d = torch.addmm(e_sq, z, codebook.t(), beta=1.0, alpha=-2.0).add_(z_sq)  # (N, K)
            return d.argmin(1)
        return addmm
    if name == "cdist":
        return lambda z: torch.cdist(z, codebook).argmin(1)
    if name == "vector_quantize_pytorch":
        try:
            from vector_quantize_pytorch import VectorQuantize
        except ImportError:
            return None
        vq = VectorQuantize(dim=codebook.shape[1], codebook_size=len(codebook)).eval()
        with torch.no_grad():
            vq._codebook.embed.copy_(codebook.unsqueeze(0))

        def vqp(z):
            with torch.no_grad():
                _, idx, _ = vq(z.unsqueeze(0))  # (1, N, D) -> indices (1, N)
            return idx.reshape(-1)
        return vqp
    raise ValueError(f"unknown method {name!r}")


class _RSSPoller:
    """Samples the resident set size (/proc/self/statm) every ``interval`` seconds in a
    background thread (torch kernels release the GIL); ``peak`` in MiB."""

    def __init__(self, interval: float = 2e-4):
        import os
        import threading

        self.page = os.sysconf("SC_PAGE_SIZE")
        self.interval, self.peak, self._stop = interval, self.rss(), threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def rss(self) -> float:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * self.page / 2 ** 20

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self.rss())
            time.sleep(self.interval)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.rss())


def child(name: str, n: int, d: int, k: int) -> dict:
    """Run ``name`` once in this (fresh) process; report the peak-RSS rise and time."""
    torch.set_num_threads(1)
    z, codebook = _inputs(n, d, k)
    fn = make_method(name, codebook)
    if fn is None:
        return {"available": False}
    fn(z[:64])  # warm-up: imports, op registration, first-call dispatch
    poller = _RSSPoller()
    before = poller.rss()
    with poller:
        t0 = time.perf_counter()
        idx = fn(z)
        seconds = time.perf_counter() - t0
    return {"available": True, "peak_rise_mib": poller.peak - before, "seconds": seconds,
            "checksum": int(idx.sum())}


def measure_memory(name: str, n: int, d: int, k: int) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", name, "--n", str(n), "--d", str(d),
                          "--ks", str(k)], capture_output=True, text=True, cwd=ROOT)
    if out.returncode != 0:
        return {"available": False, "error": out.stderr[-500:]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=65536)
    ap.add_argument("--d", type=int, default=64)
    ap.add_argument("--ks", type=int, nargs="+", default=[512, 2048, 8192])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--methods", nargs="+", default=list(METHODS))
    ap.add_argument("--chunk-sweep", action="store_true",
                    help="also time ours with chunk budgets 2**18 .. 2**24 distances")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        print(json.dumps(child(a.child, a.n, a.d, a.ks[0])))
        return
    torch.set_num_threads(1)
    rows = []
    lines = [f"vq_nearest CPU benchmark: N={a.n}, D={a.d}, float32, 1 thread, "
             f"torch {torch.__version__}, {platform.processor() or platform.machine()}",
             f"{'K':>5} {'method':>24} {'seconds':>8} {'x addmm':>8} {'peak MiB':>9} "
             f"{'x addmm':>8} {'agree':>6}"]
    for k in a.ks:
        z, codebook = _inputs(a.n, a.d, k)
        fns = {m: make_method(m, codebook) for m in a.methods}
        fns = {m: f for m, f in fns.items() if f is not None}
        if a.chunk_sweep:
            for b in (18, 20, 22, 24):
                fns[f"ours_chunk_2^{b}"] = make_method("ours", codebook, 2 ** b)
        times = {m: [] for m in fns}
        ref = None
        agree = {}
        for m, f in fns.items():  # warm-up + agreement with the addmm expansion
            f(z[:64])
        for _ in range(a.repeats):
            for m, f in fns.items():
                t0 = time.perf_counter()
                idx = f(z)
                times[m].append(time.perf_counter() - t0)
                if m == "addmm":
                    ref = idx
                agree.setdefault(m, idx)
        med = {m: statistics.median(t) for m, t in times.items()}
        mem = {m: measure_memory(m, a.n, a.d, k) for m in fns if m in METHODS}
        for m in fns:
            frac = float((agree[m] == ref).double().mean()) if ref is not None else float("nan")
            mm = mem.get(m, {}).get("peak_rise_mib", float("nan"))
            ref_mm = mem.get("addmm", {}).get("peak_rise_mib", float("nan"))
            row = {"K": k, "method": m, "seconds": med[m], "seconds_all": times[m],
                   "time_ratio_vs_addmm": med[m] / med["addmm"] if "addmm" in med else None,
                   "peak_rise_mib": mm,
                   "memory_ratio_vs_addmm": mm / ref_mm if ref_mm == ref_mm and ref_mm > 0 else None,
                   "fraction_equal_to_addmm": frac}
            rows.append(row)
            lines.append(f"{k:>5} {m:>24} {med[m]:>8.3f} {row['time_ratio_vs_addmm'] or 0:>8.2f} "
                         f"{mm:>9.1f} {row['memory_ratio_vs_addmm'] or float('nan'):>8.3f} {frac:>6.4f}")
        print("\n".join(lines[-len(fns):]), flush=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    meta = {"n": a.n, "d": a.d, "repeats": a.repeats, "threads": 1, "torch": torch.__version__,
            "python": platform.python_version(), "machine": platform.machine(),
            "note": "time: median over interleaved rounds in one process; memory: peak rise of "
                    "the resident set (sampled every 0.2 ms) in a fresh child process per "
                    "method (one call)"}
    (RESULTS / "vq_nearest_cpu.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    (RESULTS / "vq_nearest_cpu.txt").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
