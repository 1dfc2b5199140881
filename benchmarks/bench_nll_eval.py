"""Importance-sampled NLL evaluation (Burda et al. 2015, eq. 8; 200 Fashion-MNIST test
images x K = 5000 samples): our ``log_marginal_likelihood`` (the engine, chunked over
particles with a running logsumexp) against a plain batched evaluator written here on
the same trained networks (the encoder and decoder modules of our model and guide,
called directly: one encoder pass, then chunks of particles through the decoder, the
Gaussian and Bernoulli log densities written out, a running logsumexp). The plain
evaluator runs twice: with its own chunk of 100 particles (as first written), and with
the chunk our evaluator picks by default (the same memory: 2**22 elements per tensor on a
CPU, about 26 particles here), so that the ratio is not a matter of chunk size alone.
On a CPU the chunk size matters: tensors above glibc's mmap threshold (32 MiB) are
page-faulted in afresh every chunk.

    python benchmarks/bench_nll_eval.py            # ~1-3 min of one core
    python benchmarks/bench_nll_eval.py --num-test 50 --num-samples 500 --rounds 1

The networks are the IWAE paper's one-layer VAE (784-200-200-50 tanh) trained for
``--train-epochs`` on the first ``--train-images`` training images (seed 0). Rounds are
interleaved; prints and writes (``benchmarks/results/nll_eval.json`` / ``.md``) the
CPU seconds of each (and wall seconds, which other jobs' load inflates), the ratio ours /
plain in CPU time (median [min, max]) and both NLL estimates.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import time
from pathlib import Path

import pyro
import torch
import torch.nn.functional as F
from pyro.infer import Trace_ELBO

from lvm_pyro.data import binarize_test, load_dataset
from lvm_pyro.inference import log_marginal_likelihood, summarize_nll
from lvm_pyro.inference.evaluation import default_element_budget
from lvm_pyro.training import Trainer
from lvm_pyro.training.builders import build_vae

CFG = {"z_dim": 50, "hidden_dim": 200, "num_hidden": 2, "activation": "tanh", "likelihood": "bernoulli"}
LOG_2PI = math.log(2 * math.pi)


@torch.no_grad()
def plain_log_px(encoder, decoder, x, num_samples, chunk=100, min_scale=1e-4):
    """log p(x_i) ~= logmeanexp_k [log p(x_i | z_k) + log p(z_k) - log q(z_k | x_i)]:
    x (B, 1, 28, 28) binary -> (B,) nats."""
    h = encoder(x)  # (B, 2, Z)
    loc, scale = h[:, 0], F.softplus(h[:, 1]) + min_scale
    xf = x.flatten(1)  # (B, 784)
    log_scale = scale.log().sum(-1)  # (B,)
    running = None
    for s in range(0, num_samples, chunk):
        k = min(chunk, num_samples - s)
        eps = torch.randn((k, *loc.shape), dtype=loc.dtype)
        z = loc + scale * eps  # (k, B, Z)
        logits = decoder(z).flatten(2)  # (k, B, 784)
        log_px_z = -F.binary_cross_entropy_with_logits(
            logits, xf.expand_as(logits), reduction="none").sum(-1)
        log_pz = -0.5 * (z * z).sum(-1)
        log_qz = -0.5 * (eps * eps).sum(-1) - log_scale
        lse = torch.logsumexp(log_px_z + log_pz - log_qz, 0)  # the 2 pi terms cancel
        running = lse if running is None else torch.logaddexp(running, lse)
    return running - math.log(num_samples)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].replace("\n", " "),
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--num-test", type=int, default=200, help="test images")
    ap.add_argument("--num-samples", type=int, default=5000, help="importance samples K")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds")
    ap.add_argument("--train-images", type=int, default=10000,
                    help="training images of the VAE both evaluators score")
    ap.add_argument("--train-epochs", type=int, default=1, help="its epochs")
    ap.add_argument("--threads", type=int, default=1, help="torch threads")
    ap.add_argument("--out", default="benchmarks/results/nll_eval.json",
                    help="results JSON (a .md beside it)")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    uptime_start = os.popen("uptime").read().strip()
    x = load_dataset("fashion-mnist", "train").images[:a.train_images]
    xt = binarize_test(load_dataset("fashion-mnist", "test").images[:a.num_test])
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    model, guide = build_vae(CFG, x.shape[1:])
    Trainer(model, guide, Trace_ELBO(), batch_size=100, progress=False).fit(x, a.train_epochs)
    model.eval()
    guide.eval()
    ours_chunk = max(1, min(a.num_samples, default_element_budget(xt.device) // xt.numel()))
    runs = {
        "plain": lambda: plain_log_px(guide.encoder, model.decoder, xt, a.num_samples),
        "plain_same_chunk": lambda: plain_log_px(guide.encoder, model.decoder, xt, a.num_samples,
                                                 chunk=ours_chunk),
        "lvm_pyro": lambda: log_marginal_likelihood(model, guide, xt, num_samples=a.num_samples),
    }
    seconds = {k: [] for k in runs}  # CPU seconds of this process (robust to others' load)
    wall = {k: [] for k in runs}
    estimates = {}
    for r in range(a.rounds):
        for name in (list(runs) if r % 2 == 0 else list(runs)[::-1]):
            torch.manual_seed(r)
            t0, c0 = time.perf_counter(), time.process_time()
            lp = runs[name]()
            seconds[name].append(time.process_time() - c0)
            wall[name].append(time.perf_counter() - t0)
            estimates[name] = summarize_nll(lp, 784)._asdict()
        print(f"round {r}: plain {seconds['plain'][-1]:.2f}s cpu, plain at chunk {ours_chunk} "
              f"{seconds['plain_same_chunk'][-1]:.2f}s cpu, lvm_pyro {seconds['lvm_pyro'][-1]:.2f}s "
              f"cpu ({seconds['lvm_pyro'][-1] / seconds['plain'][-1]:.2f}x, "
              f"{seconds['lvm_pyro'][-1] / seconds['plain_same_chunk'][-1]:.2f}x)", flush=True)

    def ratio(base):
        rs = [o / p for o, p in zip(seconds["lvm_pyro"], seconds[base])]
        return {"median": statistics.median(rs), "min": min(rs), "max": max(rs)}

    res = {"num_test": a.num_test, "num_samples": a.num_samples, "rounds": a.rounds,
           "threads": a.threads, "chunks": {"plain": 100, "plain_same_chunk": ours_chunk,
                                            "lvm_pyro": ours_chunk},
           "cpu_seconds": seconds, "wall_seconds": wall,
           "ratio": ratio("plain"), "ratio_same_chunk": ratio("plain_same_chunk"),
           "nll": estimates, "uptime_start": uptime_start,
           "uptime_end": os.popen("uptime").read().strip()}
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2))
    rs, rc = res["ratio"], res["ratio_same_chunk"]
    md = (f"`python benchmarks/bench_nll_eval.py` ({a.num_test} test images x K={a.num_samples}, "
          f"{a.rounds} interleaved rounds, {a.threads} thread): plain batched evaluator "
          f"{statistics.median(seconds['plain']):.2f} s at 100 particles per chunk and "
          f"{statistics.median(seconds['plain_same_chunk']):.2f} s at {ours_chunk} (ours' default "
          f"chunk), lvm_pyro log_marginal_likelihood {statistics.median(seconds['lvm_pyro']):.2f} s "
          f"(median CPU time of the process); ratio ours / plain {rs['median']:.2f} "
          f"[{rs['min']:.2f}, {rs['max']:.2f}], at the same chunk {rc['median']:.2f} "
          f"[{rc['min']:.2f}, {rc['max']:.2f}]. "
          f"NLL: plain {estimates['plain']['nll']:.2f} +- {estimates['plain']['nll_se']:.2f}, "
          f"lvm_pyro {estimates['lvm_pyro']['nll']:.2f} +- {estimates['lvm_pyro']['nll_se']:.2f} nats. "
          f"Load: start `{uptime_start}`; end `{res['uptime_end']}`.\n")
    out.with_suffix(".md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
