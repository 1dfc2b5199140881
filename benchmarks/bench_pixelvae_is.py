"""Importance-sampled log p(x) of a PixelCNN-decoder VAE: wall time per test image.

Fixed model (state it when quoting figures): binary 28x28 images, z_dim 32, decoder
5 gated layers x 32 channels, kernel 3 (the issue's CPU budget), an MLP encoder 784-200-64,
PyTorch's default initialisation (seed 0), float32, one CPU thread. The weights are
untrained: the cost of one decoder pass does not depend on them. Test images: random
binary images (no data set needed).

Measured: :func:`lvm_pyro.inference.log_marginal_likelihood` with K importance samples
per image (each particle one decoder pass over the image, particles folded into the
decoder's batch, in chunks of ``--chunk-size`` particles), best of ``--repeats``; and, for
pictures, drawing x ~ p(x | z) with the cached and the naive sampler. No thresholds.

Usage::

    .venv/bin/python benchmarks/bench_pixelvae_is.py --num-images 10 --num-samples 100
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import torch

from lvm_pyro.guides import AmortizedNormalGuide
from lvm_pyro.inference import log_marginal_likelihood
from lvm_pyro.models import PixelCNNDecoderVAE
from lvm_pyro.nn import MLP


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--num-images", type=int, default=10)
    ap.add_argument("--num-samples", type=int, default=100)
    ap.add_argument("--chunk-size", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--size", type=int, default=28)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    device = torch.device(args.device)
    shape = (1, args.size, args.size)
    model = PixelCNNDecoderVAE(32, shape, channels=32, num_layers=5, kernel_size=3).to(device)
    guide = AmortizedNormalGuide(MLP(shape, (200,), (2, 32)), 32).to(device)
    x = torch.randint(0, 2, (args.num_images, *shape), generator=torch.Generator().manual_seed(0))
    x = x.float().to(device)
    best = float("inf")
    for _ in range(args.repeats):
        t = time.perf_counter()
        log_px = log_marginal_likelihood(model, guide, x, num_samples=args.num_samples,
                                         chunk_size=args.chunk_size)
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t)
    z = torch.randn(4, 32, device=device)
    times = {}
    for method in ("cached", "naive"):
        t = time.perf_counter()
        model.sample_x(z, method=method, generator=None)
        times[method] = time.perf_counter() - t
    out = {"device": str(device), "threads": torch.get_num_threads(), "image": list(shape),
           "num_images": args.num_images, "num_samples": args.num_samples,
           "chunk_size": args.chunk_size, "seconds_total": best,
           "seconds_per_image": best / args.num_images,
           "log_px_mean": float(log_px.mean()),
           "sample_4_images_seconds": times, "torch": torch.__version__,
           "machine": platform.processor() or platform.machine()}
    print(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
