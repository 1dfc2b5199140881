"""Nearest-code search on CPU: lvm_pyro.ops.vq_nearest (tiled BLAS product + exact
two-step argmin) against FAISS's exact ``IndexFlatL2`` (``faiss-cpu``), the full addmm
expansion ||z||^2 - 2 z e^T + ||e||^2 + argmin, torch.cdist + argmin, and
vector-quantize-pytorch's VectorQuantize (eval mode). FAISS and vector-quantize-pytorch
come with the ``bench`` extra; a method whose package is missing is left out.

N = 65536 vectors, D = 64, K = 512 / 2048 / 8192, float32, one thread (torch and FAISS's
OpenMP: ``faiss.omp_set_num_threads(1)``). The FAISS index is built from the codebook
outside the timed call (``add`` copies the vectors), as our op's codebook is an input.

* time: every method in this one process, ``--repeats`` interleaved rounds (each round
  runs every method once, in turn); median and range (min - max) of the wall time and of
  the calling thread's CPU time (``time.thread_time``: torch and FAISS run in the calling
  thread with one thread, so it leaves out the time the process waits for a core on a
  shared machine). Printed with the ratios to the addmm expansion and to FAISS.
* peak memory: each method once in a fresh child process (same inputs), the rise of the
  resident set during the call over its value just before it (inputs and a small warm-up
  call already made), sampled every 0.2 ms by a background thread, in MiB.
* agreement: the fraction of indices equal to the addmm expansion's and to FAISS's (the
  float32 methods round differently, so an exact near-tie may go either way).
* machine load: ``uptime`` before and after, in the text and JSON.

Writes ``benchmarks/results/vq_nearest_cpu.json`` and ``.txt``. No thresholds asserted.

    .venv/bin/python benchmarks/bench_vq_nearest.py [--n 65536] [--ks 512 2048 8192] \\
        [--repeats 5] [--sweep 512,1024,64 1024,1024,64]

``--sweep ROWS,TILE,BLOCK ...`` also times our op with other query rows per chunk
(``chunk_size``), codes per tile (``CODE_TILE``) and codes per block (``CODE_BLOCK``).
"""

from __future__ import annotations

import argparse
import importlib
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
METHODS = ("ours", "faiss", "addmm", "cdist", "vector_quantize_pytorch")


def _inputs(n: int, d: int, k: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g), torch.randn(k, d, generator=g)


def _ours_with(codebook: torch.Tensor, rows: int, tile: int, block: int):
    """Our op with other tile settings (module constants swapped in for the call)."""
    mod = importlib.import_module("lvm_pyro.ops.vq_nearest")

    def fn(z):
        saved = mod.CODE_TILE, mod.CODE_BLOCK
        mod.CODE_TILE, mod.CODE_BLOCK = tile, block
        try:
            return mod.vq_nearest(z, codebook, chunk_size=rows)
        finally:
            mod.CODE_TILE, mod.CODE_BLOCK = saved
    return fn


def make_method(name: str, codebook: torch.Tensor):
    """A callable z -> (N,) int64 indices for ``name`` (or None if unavailable)."""
    if name == "ours":
        from lvm_pyro.ops import vq_nearest

        return lambda z: vq_nearest(z, codebook)
    if name == "faiss":
        try:
            import faiss
        except ImportError:
            return None
        faiss.omp_set_num_threads(1)
        index = faiss.IndexFlatL2(codebook.shape[1])  # exact search, squared L2
        index.add(codebook.numpy())

        def flat_l2(z):
            _, idx = index.search(z.numpy(), 1)  # (N, 1) int64
            return torch.from_numpy(idx[:, 0])
        return flat_l2
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


def _uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    except OSError:
        return "uptime unavailable"


def _summary(values: list) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values),
            "all": values}


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def _fmt(x: float | None, spec: str) -> str:
    return format(x, spec) if x is not None and x == x else format("-", spec.split(".")[0] + "s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=65536)
    ap.add_argument("--d", type=int, default=64)
    ap.add_argument("--ks", type=int, nargs="+", default=[512, 2048, 8192])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--methods", nargs="+", default=list(METHODS))
    ap.add_argument("--sweep", nargs="*", default=[], metavar="ROWS,TILE,BLOCK",
                    help="also time ours with these rows per chunk, codes per tile and per block")
    ap.add_argument("--no-memory", action="store_true", help="skip the peak-memory children")
    ap.add_argument("--out", default="vq_nearest_cpu", help="results file stem")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        print(json.dumps(child(a.child, a.n, a.d, a.ks[0])))
        return
    torch.set_num_threads(1)
    load_before = _uptime()
    rows = []
    lines = [f"vq_nearest CPU benchmark: N={a.n}, D={a.d}, float32, 1 thread, "
             f"torch {torch.__version__}, {platform.processor() or platform.machine()}, "
             f"{a.repeats} interleaved rounds",
             f"load before: {load_before}",
             "time: median [min - max] over rounds, wall and thread CPU seconds; ratios of "
             "medians; memory: peak RSS rise of one call in a fresh process",
             f"{'K':>5} {'method':>24} {'wall s':>22} {'cpu s':>22} {'cpu x addmm':>11} "
             f"{'cpu x faiss':>11} {'peak MiB':>9} {'= addmm':>7} {'= faiss':>7}"]
    for k in a.ks:
        z, codebook = _inputs(a.n, a.d, k)
        fns = {m: make_method(m, codebook) for m in a.methods}
        fns = {m: f for m, f in fns.items() if f is not None}
        for spec in a.sweep:
            r, t, b = (int(v) for v in spec.split(","))
            fns[f"ours_{r}x{t}_b{b}"] = _ours_with(codebook, r, t, b)
        wall = {m: [] for m in fns}
        cpu = {m: [] for m in fns}
        first = {}
        for m, f in fns.items():  # warm-up
            f(z[:64])
        for _ in range(a.repeats):
            for m, f in fns.items():
                w0, c0 = time.perf_counter(), time.thread_time()
                idx = f(z)
                cpu[m].append(time.thread_time() - c0)
                wall[m].append(time.perf_counter() - w0)
                first.setdefault(m, idx)
        mem = {} if a.no_memory else {m: measure_memory(m, a.n, a.d, k) for m in fns
                                      if m in METHODS}
        med_cpu = {m: statistics.median(v) for m, v in cpu.items()}
        for m in fns:
            eq = {ref: float((first[m] == first[ref]).double().mean()) if ref in first else None
                  for ref in ("addmm", "faiss")}
            mm = mem.get(m, {}).get("peak_rise_mib")
            row = {"K": k, "method": m, "wall_seconds": _summary(wall[m]),
                   "cpu_seconds": _summary(cpu[m]),
                   "cpu_ratio_vs_addmm": _ratio(med_cpu[m], med_cpu.get("addmm")),
                   "cpu_ratio_vs_faiss": _ratio(med_cpu[m], med_cpu.get("faiss")),
                   "wall_ratio_vs_faiss": _ratio(statistics.median(wall[m]),
                                                 statistics.median(wall["faiss"]))
                   if "faiss" in wall else None,
                   "peak_rise_mib": mm,
                   "fraction_equal_to_addmm": eq["addmm"], "fraction_equal_to_faiss": eq["faiss"]}
            rows.append(row)
            ws, cs = row["wall_seconds"], row["cpu_seconds"]
            lines.append(
                f"{k:>5} {m:>24} {ws['median']:>7.3f} [{ws['min']:.3f}-{ws['max']:.3f}] "
                f"{cs['median']:>7.3f} [{cs['min']:.3f}-{cs['max']:.3f}] "
                f"{_fmt(row['cpu_ratio_vs_addmm'], '11.2f')} "
                f"{_fmt(row['cpu_ratio_vs_faiss'], '11.2f')} {_fmt(mm, '9.1f')} "
                f"{_fmt(eq['addmm'], '7.4f')} {_fmt(eq['faiss'], '7.4f')}")
        print("\n".join(lines[-len(fns):]), flush=True)
    load_after = _uptime()
    lines.append(f"load after: {load_after}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    meta = {"n": a.n, "d": a.d, "repeats": a.repeats, "threads": 1, "torch": torch.__version__,
            "faiss": _version("faiss"), "python": platform.python_version(),
            "machine": platform.machine(), "load_before": load_before, "load_after": load_after,
            "note": "time: median and range over interleaved rounds in one process, wall "
                    "(perf_counter) and calling-thread CPU (thread_time); ratios are of "
                    "medians; memory: peak rise of the resident set (sampled every 0.2 ms) "
                    "in a fresh child process per method (one call)"}
    (RESULTS / f"{a.out}.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    (RESULTS / f"{a.out}.txt").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def _version(module: str) -> str | None:
    try:
        return importlib.import_module(module).__version__
    except ImportError:
        return None


if __name__ == "__main__":
    main()
