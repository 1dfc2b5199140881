"""VQ-VAE-2 priors on a GPU: a training step of each prior and cached vs naive sampling
(needs CUDA for the figures that matter; not run in CI; ``--device cpu`` runs the same
code on the CPU, as a check that the script works).

1. Training step: Adam on the stage-two Pyro programs (``Trace_ELBO`` with an empty
   guide) of the top prior (:class:`lvm_pyro.models.AttentionPixelCNNPrior`, 8x8 grid)
   and the bottom prior (:class:`lvm_pyro.models.ConditionalPixelCNNPrior`, 16x16 given
   the 8x8 top grid), K = 512, C = 64, 10 classes, batch 128, random codes; median wall
   time per step (synchronised).
2. Sampling: cached and naive draws from the same uniforms (batch 64); checks the codes
   agree (float32: logits within ~1e-5, so a rare tie may flip a draw: counted, not
   asserted) and reports the speed-up.

Writes ``benchmarks/results/vqvae2_priors_<device>.json``.

    .venv/bin/python benchmarks/gpu_vqvae2_priors.py [--device cuda] [--steps 20]
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
from pyro.infer import SVI, Trace_ELBO
from pyro.optim import Adam

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lvm_pyro.models import AttentionPixelCNNPrior, ConditionalPixelCNNPrior  # noqa: E402
from lvm_pyro.nn.pixelcnn_sampling import sample_cached, sample_naive  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _timed(fn, device):
    _sync(device)
    t0 = time.perf_counter()
    out = fn()
    _sync(device)
    return time.perf_counter() - t0, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--sample-batch", type=int, default=64)
    ap.add_argument("--channels", type=int, default=64)
    ap.add_argument("--top", type=int, default=8, help="top grid size (bottom: twice it)")
    a = ap.parse_args()
    device = torch.device(a.device)
    torch.manual_seed(0)
    k, c, ht = 512, a.channels, a.top
    top = AttentionPixelCNNPrior(k, (ht, ht), c, num_layers=4, num_classes=10).to(device)
    bottom = ConditionalPixelCNNPrior(k, (2 * ht, 2 * ht), k, (ht, ht), c, num_layers=8,
                                      num_classes=10).to(device)
    codes_t = torch.randint(0, k, (a.batch, ht, ht), device=device)
    codes_b = torch.randint(0, k, (a.batch, 2 * ht, 2 * ht), device=device)
    y = torch.randint(0, 10, (a.batch,), device=device)
    out = {"device": str(device), "torch": torch.__version__, "channels": c, "num_codes": k,
           "top_grid": ht, "bottom_grid": 2 * ht, "batch": a.batch}
    if device.type == "cuda":
        out["gpu"] = torch.cuda.get_device_name(device)
    for name, prior, args, kw in (("top", top, (codes_t,), {"y": y}),
                                  ("bottom", bottom, (codes_b,), {"y": y, "top_codes": codes_t})):
        pyro.clear_param_store()
        svi = SVI(prior, lambda *args, **kwargs: None, Adam({"lr": 1e-3}),
                  Trace_ELBO(max_plate_nesting=1))
        times = [_timed(lambda: svi.step(*args, **kw), device)[0] for _ in range(a.steps)]
        out[f"{name}_train_step_s"] = statistics.median(times[2:] or times)
        print(f"{name} prior: training step {out[f'{name}_train_step_s'] * 1e3:.1f} ms", flush=True)
    n = a.sample_batch
    ys = torch.arange(n, device=device) % 10
    with torch.no_grad():
        u_t = torch.rand(n, ht, ht, device=device)
        u_b = torch.rand(n, 2 * ht, 2 * ht, device=device)
        s = bottom.conditioner(codes_t[:n] if a.batch >= n else codes_t.repeat(n, 1, 1)[:n])
        for name, net, u, kw in (("top", top.net, u_t, {}), ("bottom", bottom.net, u_b, {"s": s})):
            t_c, cached = _timed(lambda: sample_cached(net, u, ys, **kw), device)
            t_n, naive = _timed(lambda: sample_naive(net, u, ys, **kw), device)
            same = int((cached.codes == naive.codes).flatten(1).all(1).sum())
            out[f"{name}_sample"] = {"cached_s": t_c, "naive_s": t_n, "speedup": t_n / t_c,
                                     "identical_grids": f"{same}/{n}"}
            print(f"{name} prior sampling: cached {t_c:.3f} s, naive {t_n:.3f} s, "
                  f"speed-up {t_n / t_c:.1f}x, identical grids {same}/{n}", flush=True)
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"vqvae2_priors_{device.type}.json"
    path.write_text(json.dumps(out, indent=2))
    print(f"written: {path}")


if __name__ == "__main__":
    main()
