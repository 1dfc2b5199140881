"""Benchmark: IWAE (K = 5) training on Fashion-MNIST, ours vs a plain-PyTorch loop vs
Pyro's RenyiELBO(alpha=0, vectorize_particles=True), in one process.

Every contender trains the IWAE paper's one-stochastic-layer network (784-200-200-2x50
tanh encoder, 50-200-200-784 tanh decoder, Bernoulli pixels; lvm_pyro.nn.MLP), from the
same initial weights, with Adam (lr 1e-3), batch 100, the same minibatch order and the
same dynamic binarisation, for ``--steps`` steps (default 600 = one epoch of 60000
images). The loop is identical for the Pyro objectives (``elbo.loss_and_grads`` then
``Adam.step``); the plain loop writes the IWAE loss by hand. Contenders run interleaved
for ``--repeats`` rounds and the *median* per round is reported, in process CPU seconds
(one thread; the machine is shared, so CPU time is the fair measure) and wall seconds. ``--nll`` evaluates each trained model's test NLL on the first ``--num-test``
test images (binarised with seed 0) with ``--num-samples`` importance samples.

    .venv/bin/python benchmarks/bench_iwae.py [--steps 600] [--repeats 3] [--nll]
        [--profile] [--out benchmarks/results/iwae_bench.json]

Prints seconds per epoch and ratios to the plain loop; writes a JSON record.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

torch.set_num_threads(1)

import pyro  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from pyro.infer import RenyiELBO  # noqa: E402

from lvm_pyro.data import binarize, binarize_test, load_dataset  # noqa: E402
from lvm_pyro.inference import IWAE_ELBO, log_marginal_likelihood, summarize_nll  # noqa: E402
from lvm_pyro.training.builders import build_vae  # noqa: E402

CONFIG = {"z_dim": 50, "hidden_dim": 200, "num_hidden": 2, "activation": "tanh",
          "likelihood": "bernoulli", "network": "mlp"}
K = 5
BATCH = 100


# -- the plain-PyTorch IWAE loop (the baseline) ------------------------------------------
def plain_iwae_loss(encoder, decoder, x, num_particles, data_scale):
    """-(N/B) sum_i logmeanexp_k log w_ik, written by hand (Burda et al. 2015, eq. 8)."""
    h = encoder(x)                                             # (B, 2, z)
    loc, scale = h[:, 0], F.softplus(h[:, 1]) + 1e-4           # as AmortizedNormalGuide
    eps = torch.randn((num_particles,) + loc.shape)
    z = loc + scale * eps                                      # (K, B, z)
    logits = decoder(z)[:, :, 0]                               # (K, B, 1, 28, 28)
    log_px_z = -F.binary_cross_entropy_with_logits(
        logits, x.expand_as(logits), reduction="none").flatten(2).sum(-1)   # (K, B)
    log_pz = (-0.5 * z * z - 0.5 * math.log(2 * math.pi)).sum(-1)
    log_qz = (-0.5 * eps * eps - scale.log() - 0.5 * math.log(2 * math.pi)).sum(-1)
    log_w = log_px_z + log_pz - log_qz                         # (K, B)
    bound = torch.logsumexp(log_w, 0) - math.log(num_particles)
    return -data_scale * bound.sum()


def make_batches(x_train, steps, seed=0):
    """The same minibatches for every contender: (x_b binarised, idx) per step."""
    g = torch.Generator().manual_seed(seed)
    gb = torch.Generator().manual_seed(seed + 1)
    n = len(x_train)
    out, perm, pos = [], torch.randperm(n, generator=g), 0
    for _ in range(steps):
        if pos + BATCH > n:
            perm, pos = torch.randperm(n, generator=g), 0
        idx = perm[pos:pos + BATCH]
        pos += BATCH
        out.append((binarize(x_train[idx], gb), idx))
    return out


class Contender:
    def __init__(self, name, init_model, init_guide, n, elbo=None):
        self.name, self.n, self.elbo = name, n, elbo
        self.model, self.guide = copy.deepcopy(init_model), copy.deepcopy(init_guide)
        params = list(self.model.parameters()) + list(self.guide.parameters())
        self.opt = torch.optim.Adam(params, lr=1e-3)
        self.seconds, self.cpu_seconds, self.losses = [], [], []

    def run(self, batches):
        pyro.clear_param_store()  # PyroModule parameters live in the modules
        t0, c0 = time.perf_counter(), time.process_time()
        total = 0.0
        for xb, idx in batches:
            if self.elbo is None:
                loss = plain_iwae_loss(self.guide.encoder, self.model.decoder, xb, K, self.n / len(xb))
                loss.backward()
                loss = float(loss.detach())
            else:
                loss = self.elbo.loss_and_grads(self.model, self.guide, xb, num_data=self.n, idx=idx)
            self.opt.step()
            self.opt.zero_grad(set_to_none=True)
            total += loss / self.n
        self.seconds.append(time.perf_counter() - t0)
        self.cpu_seconds.append(time.process_time() - c0)
        self.losses.append(total / len(batches))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=600, help="optimiser steps per round (600 = 1 epoch)")
    ap.add_argument("--repeats", type=int, default=3, help="interleaved rounds; median reported")
    ap.add_argument("--nll", action="store_true", help="test NLL of each trained model")
    ap.add_argument("--num-test", type=int, default=500)
    ap.add_argument("--num-samples", type=int, default=1000)
    ap.add_argument("--dreg", action="store_true", help="also time IWAE_ELBO(gradient='dreg')")
    ap.add_argument("--profile", action="store_true", help="cProfile 100 steps of ours")
    ap.add_argument("--out", default="benchmarks/results/iwae_bench.json")
    a = ap.parse_args(argv)

    x_train = load_dataset("fashion-mnist", "train").images
    n = len(x_train)
    pyro.set_rng_seed(0)
    model, guide = build_vae(CONFIG, x_train.shape[1:])
    contenders = [Contender("plain_pytorch", model, guide, n),
                  Contender("lvm_pyro_IWAE_ELBO", model, guide, n, IWAE_ELBO(K)),
                  Contender("pyro_RenyiELBO", model, guide, n,
                            RenyiELBO(alpha=0, num_particles=K, vectorize_particles=True,
                                      max_plate_nesting=1))]
    if a.dreg:
        contenders.append(Contender("lvm_pyro_IWAE_ELBO_dreg", model, guide, n,
                                    IWAE_ELBO(K, gradient="dreg")))
    pyro.enable_validation(False)
    batches = make_batches(x_train, a.steps)
    for r in range(a.repeats):
        order = contenders if r % 2 == 0 else contenders[::-1]
        for c in order:
            torch.manual_seed(100 + r)
            c.run(batches)
            print(f"round {r}: {c.name:26s} {c.cpu_seconds[-1]:7.2f} CPU s {c.seconds[-1]:7.2f} wall s"
                  f"  mean loss {c.losses[-1]:.2f} nats", flush=True)
    base = statistics.median(contenders[0].cpu_seconds)
    base_wall = statistics.median(contenders[0].seconds)
    rows = []
    for c in contenders:
        med, wall = statistics.median(c.cpu_seconds), statistics.median(c.seconds)
        rows.append({"name": c.name, "median_cpu_seconds": med, "cpu_seconds": c.cpu_seconds,
                     "median_wall_seconds": wall, "wall_seconds": c.seconds,
                     "ratio_to_plain": med / base, "wall_ratio_to_plain": wall / base_wall,
                     "mean_train_loss_last_round": c.losses[-1]})
        print(f"{c.name:26s} median {med:7.2f} CPU s ({wall:7.2f} wall s) per {a.steps} steps"
              f"   ratio to plain {med / base:5.2f}x (wall {wall / base_wall:5.2f}x)")
    if a.nll:
        x_test = binarize_test(load_dataset("fashion-mnist", "test").images[:a.num_test], seed=0)
        for c, row in zip(contenders, rows):
            pyro.set_rng_seed(0)
            lp = torch.cat([log_marginal_likelihood(c.model, c.guide, x_test[i:i + 100],
                                                    num_samples=a.num_samples)
                            for i in range(0, len(x_test), 100)])
            s = summarize_nll(lp, 784)
            row.update({"test_nll": s.nll, "test_nll_se": s.nll_se})
            print(f"{c.name:26s} test NLL {s.nll:.2f} +- {s.nll_se:.2f} nats "
                  f"(K={a.num_samples}, first {a.num_test} test images, after "
                  f"{a.repeats} x {a.steps} steps)")
    record = {"benchmark": "IWAE K=5 training, Fashion-MNIST, IWAE-paper one-layer net",
              "steps_per_round": a.steps, "batch_size": BATCH, "num_particles": K,
              "repeats": a.repeats, "threads": torch.get_num_threads(), "results": rows,
              "nll": {"num_test": a.num_test, "num_samples": a.num_samples} if a.nll else None,
              "note": "each contender trains continuously over all rounds (repeats x steps "
                      "steps in total); timings are medians over rounds of process CPU time "
                      "(1 thread) and wall time on a shared 2-core machine",
              "versions": {"torch": torch.__version__, "pyro": pyro.__version__,
                           "python": platform.python_version()}}
    if a.profile:
        import cProfile
        import io
        import pstats

        c = Contender("profile", model, guide, n, IWAE_ELBO(K))
        pr = cProfile.Profile()
        pr.enable()
        c.run(batches[:100])
        pr.disable()
        s = io.StringIO()
        pstats.Stats(pr, stream=s).sort_stats("tottime").print_stats(25)
        print(s.getvalue())
        record["profile_top"] = s.getvalue()
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(record, indent=2))
    print(f"written {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
