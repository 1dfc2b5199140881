"""One training step on CUDA: the plain-PyTorch loop of ``bench_vae_epoch.py`` against our
``Trainer`` (``Trace_ELBO`` and ``IWAE_ELBO(num_particles=5)``) on the IWAE paper's
one-layer VAE (784-200-200-50 tanh, Bernoulli), at batch 100 and 1000. CI never runs it.

    python benchmarks/gpu_step.py                       # CUDA, batch 100 and 1000
    python benchmarks/gpu_step.py --device cpu --batches 8 --steps 5 --rounds 1   # a smoke run

Random binary images stand in for data (the step's cost does not depend on their
values). Each (batch, K) times ``--steps`` steps after 20 warm-up steps, plain and ours
interleaved over ``--rounds``, synchronising the device at the end of each block (both
loops also read the loss every step, the one host sync a progress bar needs). Prints ms
per step and the ratio ours / plain (median [min, max]); writes ``--out`` (JSON).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import pyro
import torch
from pyro.infer import Trace_ELBO

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_vae_epoch import CFG, LR, PlainVAE, plain_loss  # noqa: E402

from lvm_pyro.inference import IWAE_ELBO  # noqa: E402
from lvm_pyro.training import Trainer  # noqa: E402
from lvm_pyro.training.builders import build_vae  # noqa: E402


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_block(fn, steps, device) -> float:
    """ms per call of ``fn`` over ``steps`` calls (device synchronised around them)."""
    _sync(device)
    t0 = time.perf_counter()
    for i in range(steps):
        fn(i)
    _sync(device)
    return 1000 * (time.perf_counter() - t0) / steps


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--batches", type=int, nargs="+", default=[100, 1000])
    ap.add_argument("--particles", type=int, nargs="+", default=[1, 5])
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", default="benchmarks/results/gpu_step.json")
    a = ap.parse_args()
    device = torch.device(a.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device here; pass --device cpu for a smoke run")
    torch.set_num_threads(1)
    res = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
           "torch": torch.__version__, "rows": []}
    for batch in a.batches:
        n = batch * 10
        x = torch.bernoulli(torch.rand(n, 1, 28, 28, device=device))
        for k in a.particles:
            torch.manual_seed(0)
            net = PlainVAE().to(device)
            opt = torch.optim.Adam(net.parameters(), lr=LR)
            xf = x.flatten(1)

            def plain_step(i):
                loss = plain_loss(net, xf[(i % 10) * batch:(i % 10 + 1) * batch], k)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                return loss.item()

            pyro.clear_param_store()
            model, guide = build_vae(CFG, x.shape[1:])
            model, guide = model.to(device), guide.to(device)
            t = Trainer(model, guide, Trace_ELBO() if k == 1 else IWAE_ELBO(num_particles=k),
                        lr=LR, batch_size=batch, progress=False, binarization="none",
                        divergence_tolerance=None)
            t.fit(x[:batch], 1)  # discovery and the first step
            idx = torch.arange(batch, device=device)

            def ours_step(i):
                s = (i % 10) * batch
                return t._step(x[s:s + batch], n, idx + s)

            times = {"plain": [], "lvm_pyro": []}
            for _ in range(a.rounds):
                for name, fn in (("plain", plain_step), ("lvm_pyro", ours_step)):
                    time_block(fn, 20, device)
                    times[name].append(time_block(fn, a.steps, device))
            ratios = [o / p for o, p in zip(times["lvm_pyro"], times["plain"])]
            row = {"batch": batch, "num_particles": k,
                   "plain_ms": statistics.median(times["plain"]),
                   "lvm_pyro_ms": statistics.median(times["lvm_pyro"]),
                   "ratio": {"median": statistics.median(ratios), "min": min(ratios),
                             "max": max(ratios)}}
            res["rows"].append(row)
            print(f"batch {batch} K={k}: plain {row['plain_ms']:.3f} ms, lvm_pyro "
                  f"{row['lvm_pyro_ms']:.3f} ms per step, ratio {row['ratio']['median']:.2f} "
                  f"[{row['ratio']['min']:.2f}, {row['ratio']['max']:.2f}]", flush=True)
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
