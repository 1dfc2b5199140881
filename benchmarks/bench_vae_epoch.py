"""One Fashion-MNIST epoch of the IWAE paper's one-layer VAE (2 x 200 tanh, z = 50,
batch 100, Adam 1e-3, dynamic binarisation): our loop (Pyro programs + lvm_pyro Trainer)
vs a plain-PyTorch loop written here, in one process; prints seconds and ratios, and a
per-phase breakdown of one of our steps.

    python benchmarks/bench_vae_epoch.py [--epochs-nll 10] [--subset N] [--repeats 2]

``--epochs-nll E`` also trains both for E epochs and compares their test NLL
(5000 importance samples, first 2000 test images binarised with seed 0).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import pyro
import pyro.poutine as poutine
import torch
import torch.nn.functional as F
from pyro.infer import Trace_ELBO, TraceMeanField_ELBO

from lvm_pyro.data import Binarizer, binarize_test, load_dataset
from lvm_pyro.inference import log_marginal_likelihood, summarize_nll
from lvm_pyro.training import Trainer
from lvm_pyro.training.builders import build_vae

CFG = {"z_dim": 50, "hidden_dim": 200, "num_hidden": 2, "activation": "tanh", "likelihood": "bernoulli"}


def ours(x, epochs, elbo, validate=False):
    """Our default path: Trainer (validated discovery pass, unvalidated steps)."""
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    model, guide = build_vae(CFG, x.shape[1:])
    t = Trainer(model, guide, elbo, lr=1e-3, batch_size=100, seed=0, progress=False,
                validate=validate)
    t0 = time.perf_counter()
    t.fit(x, epochs)
    return time.perf_counter() - t0, model, guide


def plain(x, epochs):
    """Plain PyTorch VAE loop: same networks, same single-sample ELBO estimator."""
    torch.manual_seed(0)
    pyro.clear_param_store()
    model, guide = build_vae(CFG, x.shape[1:])
    enc, dec = guide.encoder, model.decoder
    opt = torch.optim.Adam(list(enc.parameters()) + list(dec.parameters()), lr=1e-3)
    binarizer = Binarizer("dynamic", 1)
    g = torch.Generator().manual_seed(0)
    n = len(x)
    t0 = time.perf_counter()
    for _ in range(epochs):
        xe = binarizer(x)
        perm = torch.randperm(n, generator=g)
        for s in range(0, n, 100):
            xb = xe[perm[s:s + 100]]
            h = enc(xb)
            loc, scale = h[:, 0], F.softplus(h[:, 1]) + 1e-4
            eps = torch.randn_like(loc)
            z = loc + scale * eps
            logits = dec(z)[:, 0]
            log_px_z = -F.binary_cross_entropy_with_logits(logits, xb, reduction="none").flatten(1).sum(1)
            log_pz = (-0.5 * z ** 2 - 0.5 * math.log(2 * math.pi)).sum(1)
            log_qz = (-0.5 * eps ** 2 - scale.log() - 0.5 * math.log(2 * math.pi)).sum(1)
            loss = -(log_px_z + log_pz - log_qz).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return time.perf_counter() - t0, model, guide


def breakdown(x, steps=50):
    """Time the phases of our step: guide trace, model replay, log-prob sum, backward, Adam."""
    pyro.clear_param_store()
    model, guide = build_vae(CFG, x.shape[1:])
    xb = torch.bernoulli(x[:100])
    idx = torch.arange(100)
    elbo = Trace_ELBO()
    elbo.loss_and_grads(model, guide, xb, num_data=len(x), idx=idx)
    params = [p for _, p in pyro.get_param_store().named_parameters()]
    opt = torch.optim.Adam(params, lr=1e-3)
    tm = {"guide trace": 0.0, "model replay": 0.0, "log_prob sum": 0.0, "backward": 0.0, "adam step": 0.0}
    for _ in range(steps):
        t0 = time.perf_counter()
        gt = poutine.trace(guide).get_trace(xb, num_data=len(x), idx=idx)
        t1 = time.perf_counter()
        mt = poutine.trace(poutine.replay(model, trace=gt)).get_trace(xb, num_data=len(x), idx=idx)
        t2 = time.perf_counter()
        loss = -(mt.log_prob_sum() - gt.log_prob_sum())
        t3 = time.perf_counter()
        loss.backward()
        t4 = time.perf_counter()
        opt.step()
        opt.zero_grad(set_to_none=True)
        t5 = time.perf_counter()
        for k, a, b in zip(tm, (t0, t1, t2, t3, t4), (t1, t2, t3, t4, t5)):
            tm[k] += b - a
    total = sum(tm.values())
    return {k: f"{1000 * v / steps:.2f} ms ({100 * v / total:.0f}%)" for k, v in tm.items()}


def nll(model, guide, x_test):
    lps = [log_marginal_likelihood(model, guide, x_test[i:i + 100], num_samples=5000)
           for i in range(0, len(x_test), 100)]
    return summarize_nll(torch.cat(lps), 784)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--subset", type=int, default=None, help="train on the first N images")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--epochs-nll", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="benchmarks/results/vae_epoch.json")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    x = load_dataset("fashion-mnist", "train").images
    if a.subset:
        x = x[:a.subset]
    res = {"n_train": len(x), "threads": a.threads, "runs": []}
    for r in range(a.repeats):
        row = {}
        row["plain"] = plain(x, 1)[0]
        row["trace_elbo (default)"] = ours(x, 1, Trace_ELBO())[0]
        row["trace_elbo validated steps"] = ours(x, 1, Trace_ELBO(), validate=True)[0]
        row["meanfield"] = ours(x, 1, TraceMeanField_ELBO())[0]
        res["runs"].append(row)
        print(f"repeat {r}: " + ", ".join(f"{k} {v:.2f}s ({v / row['plain']:.2f}x)" for k, v in row.items()))
    res["breakdown_ms_per_step"] = breakdown(x)
    print("per-step breakdown of Trace_ELBO:", json.dumps(res["breakdown_ms_per_step"], indent=1))
    if a.epochs_nll:
        xt = binarize_test(load_dataset("fashion-mnist", "test").images[:2000])
        for name, fn in (("plain", lambda: plain(x, a.epochs_nll)), ("trace_elbo", lambda: ours(x, a.epochs_nll, Trace_ELBO()))):
            _, m, g = fn()
            s = nll(m, g, xt)
            res[f"nll_{name}"] = s._asdict()
            print(f"{name}: test NLL {s.nll:.2f} +- {s.nll_se:.2f} nats ({a.epochs_nll} epochs, K=5000, 2000 test images)")
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
