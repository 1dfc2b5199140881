"""VQ-VAE-2 priors: naive loop vs cached sampler (key / value cache for attention).

Fixed networks (state them when quoting figures), PyTorch's default initialisation
(seed 0), float32, one CPU thread, a batch of 8 grids per call:

* top prior: :class:`lvm_pyro.nn.AttentionPixelCNN`, K = 512 codes, C = 32 channels,
  L = 4 gated layers (kernel 3), causal self-attention after layers 1 and 3, 4 heads,
  10 classes;
* bottom prior: :class:`lvm_pyro.models.ConditionalPixelCNNPrior`, K = 512, C = 32, L = 5,
  conditioned on a random top grid of half the size (512 top codes) and 10 classes.

Both samplers consume the same uniforms; the script checks that they return the same
codes. The cached time is the best of ``--repeats``. The naive loop is ``H * W`` full
forward passes of the network, so it is run in full for grids up to ``--naive-full-max``
and, above that, *estimated* as ``H * W`` times the best full forward pass (marked
``naive_estimated``; the naive loop's own overhead per position is one logits slice and
one inverse-CDF draw, negligible beside a forward pass). No timing thresholds anywhere.

Usage::

    .venv/bin/python benchmarks/bench_vqvae2_sampling.py            # writes results
    .venv/bin/python benchmarks/bench_vqvae2_sampling.py --grids 8 --no-write
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from lvm_pyro.models import ConditionalPixelCNNPrior
from lvm_pyro.nn import AttentionPixelCNN
from lvm_pyro.nn.pixelcnn_sampling import sample_cached, sample_naive

RESULTS = Path(__file__).parent / "results"


def _time(fn, repeats: int):
    best, out = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--grids", type=int, nargs="+", default=[8, 16, 32])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--num-codes", type=int, default=512)
    ap.add_argument("--channels", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--naive-full-max", type=int, default=16,
                    help="larger grids estimate the naive loop from one forward pass")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--no-write", action="store_true")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    k, c, b = a.num_codes, a.channels, a.batch
    top_net = AttentionPixelCNN(k, c, 4, num_classes=10, attention_layers=[1, 3], num_heads=4).eval()
    setup = {"num_codes": k, "channels": c, "batch": b, "dtype": "float32", "threads": a.threads,
             "top": "AttentionPixelCNN L=4, attention after layers 1 and 3, 4 heads, 10 classes",
             "bottom": "ConditionalPixelCNNPrior L=5 given a top grid of half the size, 10 classes",
             "torch": torch.__version__, "python": platform.python_version(),
             "machine": platform.machine()}
    print("setup:", json.dumps(setup))
    y = torch.arange(b) % 10
    rows = []
    for size in a.grids:
        bottom = ConditionalPixelCNNPrior(k, (size, size), k, (size // 2, size // 2), c, 5,
                                          num_classes=10).eval()
        top_codes = torch.randint(0, k, (b, size // 2, size // 2),
                                  generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            s = bottom.conditioner(top_codes)
        u = torch.rand(b, size, size, generator=torch.Generator().manual_seed(size))
        for name, net, kw in (("top (attention)", top_net, {}),
                              ("bottom (conditioned)", bottom.net, {"s": s})):
            t_cached, cached = _time(lambda: sample_cached(net, u, y, **kw), a.repeats)
            full = size <= a.naive_full_max
            if full:
                t_naive, naive = _time(lambda: sample_naive(net, u, y, **kw), a.repeats)
                same = f"{int((naive.codes == cached.codes).flatten(1).all(1).sum())}/{b}"
            else:
                with torch.no_grad():
                    t_pass, _ = _time(lambda: net(cached.codes, y, **kw), 3)
                    logits = net(cached.codes, y, **kw)
                t_naive = t_pass * size * size
                diff = float((logits - cached.logits).abs().max())
                same = f"not run (full-pass logits of the cached codes within {diff:.1e})"
            row = {"prior": name, "grid": f"{size}x{size}", "naive_s": t_naive,
                   "naive_estimated": not full, "cached_s": t_cached,
                   "speedup": t_naive / t_cached, "identical_grids": same}
            rows.append(row)
            print(f"{name:>21} {row['grid']:>6}: naive {t_naive:8.3f} s"
                  f"{' (est.)' if not full else '       '}  cached {t_cached:7.3f} s  "
                  f"speedup {row['speedup']:6.1f}x  identical: {same}", flush=True)
    if not a.no_write:
        RESULTS.mkdir(exist_ok=True)
        path = RESULTS / "vqvae2_sampling_cpu.json"
        path.write_text(json.dumps({"setup": setup, "results": rows}, indent=2))
        print(f"written: {path}")


if __name__ == "__main__":
    main()
