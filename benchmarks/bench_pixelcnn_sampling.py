"""Prior sampling from a gated PixelCNN: naive loop vs cached sampler, same process.

Fixed network (state it when quoting figures): K = 512 codes, C = 32 channels, L = 5 gated
layers, kernel 3 (receptive reach 5 rows / columns), 1x1 head of width 64, PyTorch's
default initialisation (seed 0), float32, one CPU thread. Batch of 8 grids per call.

* naive: ``H * W`` full forward passes of the network over the whole (B, H, W) grid
  (:func:`lvm_pyro.nn.pixelcnn_sampling.sample_naive`);
* cached: vertical stack once per row, horizontal stack only at the current position
  (:func:`lvm_pyro.nn.pixelcnn_sampling.sample_cached`, Ramachandran et al. 2017).

Both consume the same uniforms; the script checks that they return the same codes and
reports the largest logit difference. Wall time per batch of samples: best of
``--repeats`` for the cached sampler and for the naive one at grids up to 16x16; the naive
loop at 32x32 runs once (about two minutes here). No timing thresholds anywhere.

Usage::

    .venv/bin/python benchmarks/bench_pixelcnn_sampling.py            # writes results
    .venv/bin/python benchmarks/bench_pixelcnn_sampling.py --grids 7 16 --no-write
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from lvm_pyro.nn.pixelcnn import GatedPixelCNN
from lvm_pyro.nn.pixelcnn_sampling import sample_cached, sample_naive

RESULTS = Path(__file__).parent / "results"


def _time(fn, repeats: int, device: torch.device):
    best, out = float("inf"), None
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return best, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--grids", type=int, nargs="+", default=[7, 16, 32])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--num-codes", type=int, default=512)
    ap.add_argument("--channels", type=int, default=32)
    ap.add_argument("--layers", type=int, default=5)
    ap.add_argument("--kernel-size", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--naive-once-above", type=int, default=16,
                    help="grids larger than this run the naive loop once")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--no-write", action="store_true")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    device = torch.device(a.device)
    torch.manual_seed(0)
    net = GatedPixelCNN(a.num_codes, a.channels, a.layers, a.kernel_size).to(device).eval()
    setup = {"num_codes": a.num_codes, "channels": a.channels, "num_layers": a.layers,
             "kernel_size": a.kernel_size, "head_dim": 2 * a.channels, "batch": a.batch,
             "dtype": "float32", "device": str(device), "threads": a.threads,
             "torch": torch.__version__, "python": platform.python_version(),
             "machine": platform.machine()}
    print("setup:", json.dumps(setup))
    rows = []
    for size in a.grids:
        u = torch.rand(a.batch, size, size, generator=torch.Generator().manual_seed(size)).to(device)
        t_cached, cached = _time(lambda: sample_cached(net, u), a.repeats, device)
        reps = a.repeats if size <= a.naive_once_above else 1
        t_naive, naive = _time(lambda: sample_naive(net, u), reps, device)
        same = int((naive.codes == cached.codes).flatten(1).all(1).sum())
        diff = float((naive.logits - cached.logits).abs().max())
        row = {"grid": f"{size}x{size}", "naive_s": t_naive, "cached_s": t_cached,
               "speedup": t_naive / t_cached, "naive_repeats": reps, "cached_repeats": a.repeats,
               "identical_grids": f"{same}/{a.batch}", "max_abs_logit_diff": diff}
        rows.append(row)
        print(f"{row['grid']:>6}: naive {t_naive:8.3f} s  cached {t_cached:7.3f} s  "
              f"speedup {row['speedup']:6.1f}x  identical grids {row['identical_grids']}  "
              f"max |logit diff| {diff:.2e}", flush=True)
    if not a.no_write:
        RESULTS.mkdir(exist_ok=True)
        tag = "cpu" if device.type == "cpu" else device.type
        path = RESULTS / f"pixelcnn_sampling_{tag}.json"
        path.write_text(json.dumps({"setup": setup, "results": rows}, indent=2))
        print(f"written: {path}")


if __name__ == "__main__":
    main()
