"""One Fashion-MNIST epoch of the IWAE paper's one-stochastic-layer VAE (784-200-200-50
tanh, Bernoulli, batch 100, Adam 1e-3, dynamic binarisation), single-sample ELBO and K=5
IWAE bound, in one process on one thread, against an independent plain-PyTorch loop:

* ``plain``: ``nn.Sequential`` nets written here, default ``torch.optim.Adam``, the
  bound written out by hand (none of our modules);
* ``pyro_svi``: Pyro's ``examples/vae`` style (its own ``nn.Module`` nets registered
  with ``pyro.module``, ``pyro.infer.SVI`` with ``pyro.optim.Adam``, validation off):
  ``Trace_ELBO`` for the VAE column, ``RenyiELBO(alpha=0, num_particles=5)`` (vectorised)
  for the K=5 column (Pyro has no per-datapoint IWAE objective; its Renyi bound treats
  the minibatch as one datapoint, at the same cost);
* ``pyro_jit``: the same with ``JitTrace_ELBO`` (for the K=5 column
  ``JitTrace_ELBO(num_particles=5)`` vectorised: Pyro has no JIT Renyi bound);
* ``lvm_pyro``: our :class:`lvm_pyro.training.Trainer` with ``Trace_ELBO()`` and
  ``IWAE_ELBO(num_particles=5)`` on :func:`lvm_pyro.training.builders.build_vae`;
* with ``--compile`` also ``lvm_pyro Trainer, --compile``: the same with
  ``Trainer(compile_networks=True)``, timed after a warm-up that compiles the networks
  (the warm-up's seconds are reported apart).

Rounds are interleaved (every system once per round, the order rotated each round); the
ratio of each system to the round's plain time is reported as median [min, max] over the
rounds. A second table times one step of a 2-D toy VAE (2 x 128 tanh nets, z_dim 2,
Gaussian likelihood, batch 128), measured first, before the epochs.

    python benchmarks/bench_vae_epoch.py --compile       # the README's table, ~10 min of one core
    python benchmarks/bench_vae_epoch.py --subset 6000 --rounds 1      # a quick look
    python benchmarks/bench_vae_epoch.py --profile       # where one step's time goes
    python benchmarks/bench_vae_epoch.py --epochs-nll 10 # + test NLL after 10 epochs
    python benchmarks/bench_vae_epoch.py --nll-only --epochs-nll 10 --nll-seeds 3 --out benchmarks/results/vae_epoch_nll.json

Writes ``benchmarks/results/vae_epoch.json`` and ``vae_epoch.md`` (with ``uptime``, the
machine's load, at the start and the end).
"""

from __future__ import annotations

import argparse
import cProfile
import json
import math
import os
import platform
import pstats
import statistics
import time
import warnings
from pathlib import Path

import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from pyro.infer import SVI, JitTrace_ELBO, RenyiELBO, Trace_ELBO
from pyro.optim import Adam as PyroAdam
from torch import nn

from lvm_pyro.checks import validate_data
from lvm_pyro.data import binarize_test, load_dataset
from lvm_pyro.inference import IWAE_ELBO, log_marginal_likelihood, summarize_nll
from lvm_pyro.training import Trainer
from lvm_pyro.training.builders import build_vae

CFG = {"z_dim": 50, "hidden_dim": 200, "num_hidden": 2, "activation": "tanh", "likelihood": "bernoulli"}
TOY_CFG = {"z_dim": 2, "hidden_dim": 128, "num_hidden": 2, "activation": "tanh", "likelihood": "gaussian"}
BATCH, LR, Z = 100, 1e-3, 50
LOG_2PI = math.log(2 * math.pi)


class Clock:
    """Wall and CPU seconds (this process; one thread) since construction. On a shared
    machine the CPU time is the robust measure: other jobs' load inflates wall time."""

    def __init__(self):
        self.wall, self.cpu = time.perf_counter(), time.process_time()

    def stop(self) -> dict:
        return {"wall": time.perf_counter() - self.wall, "cpu": time.process_time() - self.cpu}


# -- the plain loop (independent of lvm_pyro) -------------------------------------------
def mlp(sizes):
    layers = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(nn.Tanh())
    return nn.Sequential(*layers)


class PlainVAE(nn.Module):
    """Encoder D-200-200-2Z, decoder Z-200-200-D (or 2D for a Gaussian likelihood)."""

    def __init__(self, d=784, z=Z, h=200, gaussian=False):
        super().__init__()
        self.z, self.gaussian = z, gaussian
        self.enc = mlp([d, h, h, 2 * z])
        self.dec = mlp([z, h, h, 2 * d if gaussian else d])

    def log_weights(self, x, k):
        """(k, batch) log p(x, z) - log q(z | x), z ~ q reparameterised; x (batch, D)."""
        h = self.enc(x)
        loc, scale = h[:, :self.z], F.softplus(h[:, self.z:]) + 1e-4
        eps = torch.randn((k, *loc.shape), dtype=x.dtype)
        z = loc + scale * eps  # (k, batch, z)
        out = self.dec(z)
        if self.gaussian:
            d = x.shape[-1]
            mu, s = out[..., :d], F.softplus(out[..., d:]) + 1e-3
            log_px = (-0.5 * ((x - mu) / s) ** 2 - s.log() - 0.5 * LOG_2PI).sum(-1)
        else:
            log_px = -F.binary_cross_entropy_with_logits(out, x.expand_as(out), reduction="none").sum(-1)
        log_pz = (-0.5 * z ** 2 - 0.5 * LOG_2PI).sum(-1)
        log_qz = (-0.5 * eps ** 2 - scale.log() - 0.5 * LOG_2PI).sum(-1)
        return log_px + log_pz - log_qz


def plain_loss(net, xb, k):
    lw = net.log_weights(xb, k)
    bound = torch.logsumexp(lw, 0) - math.log(k) if k > 1 else lw[0]
    return -bound.mean()


def plain_epochs(x, epochs, k, seed=0):
    """Plain loop: returns ({"wall", "cpu"} seconds, net)."""
    torch.manual_seed(seed)
    net = PlainVAE()
    opt = torch.optim.Adam(net.parameters(), lr=LR)
    g = torch.Generator().manual_seed(seed)
    xf = x.flatten(1)
    n = len(xf)
    t0 = Clock()
    for _ in range(epochs):
        xe = torch.bernoulli(xf, generator=g)  # dynamic binarisation
        perm = torch.randperm(n, generator=g)
        for s in range(0, n, BATCH):
            loss = plain_loss(net, xe[perm[s:s + BATCH]], k)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            loss.item()  # the one host sync a progress bar needs
    return t0.stop(), net


# -- Pyro examples/vae style ------------------------------------------------------------
class ExEncoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = mlp([784, 200, 200, 2 * Z])

    def forward(self, x):
        h = self.net(x.reshape(-1, 784))
        return h[:, :Z], F.softplus(h[:, Z:]) + 1e-4


class ExDecoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = mlp([Z, 200, 200, 784])

    def forward(self, z):
        return self.net(z)


class ExampleVAE(nn.Module):
    """Pyro's examples/vae.py model / guide pair on the nets above."""

    def __init__(self):
        super().__init__()
        self.encoder, self.decoder = ExEncoder(), ExDecoder()

    def model(self, x):
        pyro.module("decoder", self.decoder)
        with pyro.plate("data", x.shape[0], dim=-1):
            z = pyro.sample("latent", dist.Normal(x.new_zeros(()), 1.0).expand([Z]).to_event(1))
            logits = self.decoder(z)
            pyro.sample("obs", dist.Bernoulli(logits=logits, validate_args=False).to_event(1),
                        obs=x.reshape(-1, 784))

    def guide(self, x):
        pyro.module("encoder", self.encoder)
        with pyro.plate("data", x.shape[0], dim=-1):
            loc, scale = self.encoder(x)
            pyro.sample("latent", dist.Normal(loc, scale).to_event(1))


def svi_epochs(x, epochs, k, jit=False, seed=0):
    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    vae = ExampleVAE()
    if k == 1:
        loss = (JitTrace_ELBO if jit else Trace_ELBO)()
    elif jit:  # Pyro has no JIT Renyi bound: the K-particle ELBO, at the same cost
        loss = JitTrace_ELBO(num_particles=k, vectorize_particles=True, max_plate_nesting=1)
    else:
        loss = RenyiELBO(alpha=0, num_particles=k, vectorize_particles=True, max_plate_nesting=1)
    svi = SVI(vae.model, vae.guide, PyroAdam({"lr": LR}), loss=loss)
    g = torch.Generator().manual_seed(seed)
    xf = x.flatten(1)
    n = len(xf)
    t0 = Clock()
    with pyro.validation_enabled(False):
        for _ in range(epochs):
            xe = torch.bernoulli(xf, generator=g)
            perm = torch.randperm(n, generator=g)
            for s in range(0, n, BATCH):
                svi.step(xe[perm[s:s + BATCH]])
    return t0.stop(), vae


# -- ours -------------------------------------------------------------------------------
def ours_epochs(x, epochs, k, seed=0, cfg=CFG, batch=BATCH, compiled=False):
    """Our Trainer; ``compiled``: ``Trainer(compile_networks=True)`` warmed up (compiled)
    on one epoch of the first 200 images before the clock starts."""
    pyro.clear_param_store()
    torch.manual_seed(seed)  # the initial weights, as the plain loop's
    model, guide = build_vae(cfg, x.shape[1:])
    elbo = Trace_ELBO() if k == 1 else IWAE_ELBO(num_particles=k)
    t = Trainer(model, guide, elbo, lr=LR, batch_size=batch, seed=seed, progress=False,
                divergence_tolerance=None, compile_networks=compiled)
    if compiled:
        torch._dynamo.reset()  # every run compiles afresh, as a new process would
        c = Clock()
        t.fit(x[:2 * batch], 1)
        COMPILE_SECONDS.append(c.stop())
        epochs += 1
    t0 = Clock()
    t.fit(x, epochs)
    return t0.stop(), (model, guide)


SYSTEMS = {
    "plain PyTorch": lambda x, k: plain_epochs(x, 1, k)[0],
    "Pyro SVI, examples style (validation off)": lambda x, k: svi_epochs(x, 1, k)[0],
    "Pyro SVI, JitTrace_ELBO": lambda x, k: svi_epochs(x, 1, k, jit=True)[0],
    "lvm_pyro Trainer (Trace_ELBO / IWAE_ELBO)": lambda x, k: ours_epochs(x, 1, k)[0],
}
COMPILED_ROW = "lvm_pyro Trainer, --compile (after compiling)"
COMPILE_SECONDS: list = []  # the warm-up (compilation) of the compiled row, per run
COLUMNS = {"VAE epoch": 1, "IWAE K=5 epoch": 5}
TIMER = "cpu"  # what the ratios use (--timer)


# -- the 2-D toy's step -----------------------------------------------------------------
def toy_step_times(steps, rounds):
    """Median ms per step (per round) of plain and ours on a 2-D toy (batch 128)."""
    torch.manual_seed(0)
    x = torch.randn(128 * 40, 2) @ torch.tensor([[1.0, 0.6], [0.0, 0.8]])
    out = {"plain": [], "lvm_pyro": []}
    for _ in range(rounds):
        torch.manual_seed(0)
        net = PlainVAE(d=2, z=2, h=128, gaussian=True)
        opt = torch.optim.Adam(net.parameters(), lr=LR)

        def plain_step(xb):
            loss = plain_loss(net, xb, 1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            return loss.item()

        pyro.clear_param_store()
        model, guide = build_vae(TOY_CFG, (2,))
        t = Trainer(model, guide, Trace_ELBO(), lr=LR, batch_size=128, progress=False,
                    divergence_tolerance=None)
        t.fit(x[:256], 1)  # discovery, first steps
        # as inside fit: the data checked once, the steps without per-batch checks
        t._data_validated = validate_data((model, guide), x)
        idx = torch.arange(128)
        for name, fn in (("plain", lambda i: plain_step(x[idx + 128 * (i % 40)])),
                         ("lvm_pyro", lambda i: t._step(x[idx + 128 * (i % 40)], len(x),
                                                        idx + 128 * (i % 40)))):
            for i in range(20):
                fn(i)
            t0 = Clock()
            for i in range(steps):
                fn(i)
            out[name].append(1000 * t0.stop()[TIMER] / steps)
    return out


# -- the step, interleaved in blocks ----------------------------------------------------
def step_blocks(x, k, steps=600, block=50):
    """CPU seconds of ``steps`` plain steps and ``steps`` Trainer steps (``Trainer._step``
    on the epoch's minibatches, data checked once as inside ``fit``), alternating in
    blocks of ``block`` steps so that the machine's drift hits both alike. The epoch's
    once-per-epoch work (binarisation, data checks) is left out of both."""
    g = torch.Generator().manual_seed(0)
    xe = torch.bernoulli(x[:steps * BATCH], generator=g)
    xf = xe.flatten(1)
    torch.manual_seed(0)
    net = PlainVAE()
    opt = torch.optim.Adam(net.parameters(), lr=LR)
    pyro.clear_param_store()
    model, guide = build_vae(CFG, x.shape[1:])
    t = Trainer(model, guide, Trace_ELBO() if k == 1 else IWAE_ELBO(num_particles=k), lr=LR,
                batch_size=BATCH, progress=False, divergence_tolerance=None)
    t.fit(x[:2 * BATCH], 1)  # discovery and the first (checked) steps
    t._data_validated = validate_data((model, guide), xe)

    def plain(i):
        loss = plain_loss(net, xf[i * BATCH:(i + 1) * BATCH], k)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        loss.item()

    def ours(i):
        idx = torch.arange(i * BATCH, (i + 1) * BATCH)
        t._step(xe[idx], len(x), idx)

    total = {"plain": 0.0, "lvm_pyro": 0.0}
    for start in range(0, steps, block):
        for name, fn in (("plain", plain), ("lvm_pyro", ours)):
            c = time.process_time()
            for i in range(start, min(start + block, steps)):
                fn(i)
            total[name] += time.process_time() - c
    return {**total, "ratio": total["lvm_pyro"] / total["plain"], "steps": steps, "block": block}


# -- profile ----------------------------------------------------------------------------
def profile_steps(x, k, steps=200):
    """cProfile of ``steps`` Trainer steps and plain steps; tottime grouped by where the
    code lives (ms per step)."""
    xb = torch.bernoulli(x[:BATCH], generator=torch.Generator().manual_seed(0))
    idx = torch.arange(BATCH)
    pyro.clear_param_store()
    model, guide = build_vae(CFG, x.shape[1:])
    t = Trainer(model, guide, Trace_ELBO() if k == 1 else IWAE_ELBO(num_particles=k), lr=LR,
                batch_size=BATCH, progress=False, divergence_tolerance=None)
    t.fit(x[:200], 1)
    t._data_validated = validate_data((model, guide), xb)  # as inside fit
    net = PlainVAE()
    opt = torch.optim.Adam(net.parameters(), lr=LR)
    xf = xb.flatten(1)

    def plain_step():
        loss = plain_loss(net, xf, k)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.item()

    report = {}
    for name, fn in (("plain", plain_step), ("lvm_pyro", lambda: t._step(xb, len(x), idx))):
        for _ in range(20):
            fn()
        pr = cProfile.Profile()
        pr.enable()
        for _ in range(steps):
            fn()
        pr.disable()
        groups: dict[str, float] = {}
        for (f, _, fname), (_, _, tt, _, _) in pstats.Stats(pr).stats.items():
            key = ("pyro (Python)" if "/pyro/" in f else "torch (Python)" if "/torch/" in f
                   else "lvm_pyro (Python)" if "lvm_pyro" in f
                   else f"C: {fname}" if f == "~" else "other Python")
            groups[key] = groups.get(key, 0.0) + tt
        total = sum(groups.values())
        report[name] = {"total_ms": round(1000 * total / steps, 3),
                        **{g: round(1000 * v / steps, 3)
                           for g, v in sorted(groups.items(), key=lambda kv: -kv[1])[:14]}}
    return report


# -- NLL after training -----------------------------------------------------------------
def plain_nll(net, x_test, num_samples=5000, chunk=50):
    """log p(x) per test image by importance sampling with the plain nets."""
    out = []
    with torch.no_grad():
        for i in range(0, len(x_test), 100):
            xb = x_test[i:i + 100].flatten(1)
            acc = None
            for s in range(0, num_samples, chunk):
                lse = torch.logsumexp(net.log_weights(xb, min(chunk, num_samples - s)), 0)
                acc = lse if acc is None else torch.logaddexp(acc, lse)
            out.append(acc - math.log(num_samples))
    return torch.cat(out)


def nll_comparison(x, epochs, seeds=1):
    """Test NLL (K=5000, first 2000 test images binarised with seed 0) of the plain loop and
    our Trainer after ``epochs`` single-sample-ELBO epochs each, for training seeds 0 ..
    ``seeds`` - 1: per seed both NLLs and the paired difference's mean and standard error
    over the test images; with several seeds also each system's mean and standard deviation
    over seeds and the difference of the means with its standard error over seeds."""
    xt = binarize_test(load_dataset("fashion-mnist", "test").images[:2000])
    runs = []
    for seed in range(seeds):
        _, net = plain_epochs(x, epochs, 1, seed=seed)
        lp_plain = plain_nll(net, xt)
        _, (model, guide) = ours_epochs(x, epochs, 1, seed=seed)
        lp = torch.cat([log_marginal_likelihood(model, guide, xt[i:i + 100], num_samples=5000)
                        for i in range(0, len(xt), 100)])
        diff = (lp_plain - lp).double()  # NLL(ours) - NLL(plain) per test image
        runs.append({"seed": seed, "plain": summarize_nll(lp_plain, 784)._asdict(),
                     "lvm_pyro": summarize_nll(lp, 784)._asdict(),
                     "paired_difference": {"mean": float(diff.mean()),
                                           "se": float(diff.std() / math.sqrt(len(diff)))}})
        print(f"seed {seed}: NLL plain {runs[-1]['plain']['nll']:.2f}, lvm_pyro "
              f"{runs[-1]['lvm_pyro']['nll']:.2f}", flush=True)
    out = {"epochs": epochs, **runs[0], "seeds": runs}
    if seeds > 1:
        p = torch.tensor([r["plain"]["nll"] for r in runs], dtype=torch.float64)
        o = torch.tensor([r["lvm_pyro"]["nll"] for r in runs], dtype=torch.float64)
        out["over_seeds"] = {
            "plain": {"mean": float(p.mean()), "sd": float(p.std())},
            "lvm_pyro": {"mean": float(o.mean()), "sd": float(o.std())},
            "difference_of_means": float(o.mean() - p.mean()),
            "difference_se": float(math.sqrt(p.var() / seeds + o.var() / seeds))}
    return out


def _summary(times):
    return {"median": statistics.median(times), "min": min(times), "max": max(times)}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].replace("\n", " ")
                                 + " plain PyTorch, Pyro SVI (examples style, JitTrace_ELBO)"
                                 " and the lvm_pyro Trainer; see the module docstring.",
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--subset", type=int, default=None, help="train on the first N training images (default: all 60000)")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds: each round times one epoch of every system in turn "
                         "(>= 3 for the table; median and range over rounds)")
    ap.add_argument("--toy-steps", type=int, default=500, help="timed steps per round of the 2-D toy")
    ap.add_argument("--profile", action="store_true", help="only profile 200 steps of each")
    ap.add_argument("--epochs-nll", type=int, default=0,
                    help="also train plain and ours N epochs and compare test NLL (0: no)")
    ap.add_argument("--nll-seeds", type=int, default=1,
                    help="with --epochs-nll: train both with seeds 0 .. N-1 and report the "
                         "spread of the test NLL over seeds")
    ap.add_argument("--blocks", action="store_true",
                    help="only the step ratio with plain and Trainer steps alternating in "
                         "50-step blocks over 600 steps each, K=1 and K=5, written to --out")
    ap.add_argument("--nll-only", action="store_true",
                    help="only the --epochs-nll comparison (no timing table), written to --out")
    ap.add_argument("--threads", type=int, default=1, help="torch threads")
    ap.add_argument("--compile", action="store_true",
                    help="add a row: the Trainer with torch.compile'd networks (timed after compiling)")
    ap.add_argument("--out", default="benchmarks/results/vae_epoch.json",
                    help="results JSON (a .md beside it)")
    a = ap.parse_args()
    warnings.filterwarnings("ignore", category=FutureWarning, module="torch.jit")
    torch.set_num_threads(a.threads)
    if a.compile:
        SYSTEMS[COMPILED_ROW] = lambda x, k: ours_epochs(x, 1, k, compiled=True)[0]
    x = load_dataset("fashion-mnist", "train").images  # (60000, 1, 28, 28) in [0, 1]
    if a.subset:
        x = x[:a.subset]
    if a.profile:
        for k in (1, 5):
            print(f"K={k}:", json.dumps(profile_steps(x, k), indent=1))
        return
    if a.blocks:
        res = {"step_blocks": {f"K={k}": step_blocks(x, k) for k in (1, 5)},
               "uptime": os.popen("uptime").read().strip()}
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps(res, indent=2))
        print(json.dumps(res, indent=2))
        return
    if a.nll_only:
        if not a.epochs_nll:
            ap.error("--nll-only needs --epochs-nll N")
        res = {"n_train": len(x), "nll": nll_comparison(x, a.epochs_nll, a.nll_seeds)}
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps(res, indent=2))
        print(json.dumps(res, indent=2))
        return
    load_before = os.popen("uptime").read().strip()
    res = {"n_train": len(x), "threads": a.threads, "rounds": a.rounds, "torch": torch.__version__,
           "pyro": pyro.__version__, "machine": platform.processor() or platform.machine(),
           "uptime_start": load_before, "seconds": {c: {s: [] for s in SYSTEMS} for c in COLUMNS}}
    # the toy first, in a fresh process: after minutes of full-size epochs of five systems
    # every small step of this process got slower (allocator state), ours most
    toy = toy_step_times(a.toy_steps, a.rounds)
    res["toy_ms_per_step"] = {k: _summary(v) for k, v in toy.items()}
    res["toy_ratio"] = _summary([o / p for o, p in zip(toy["lvm_pyro"], toy["plain"])])
    names = list(SYSTEMS)
    for r in range(a.rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        for col, k in COLUMNS.items():
            for s in order:
                res["seconds"][col][s].append(SYSTEMS[s](x, k))
            row = res["seconds"][col]
            print(f"round {r} {col}: " + ", ".join(
                f"{s.split(' (')[0]} {row[s][-1]['cpu']:.2f}s cpu / {row[s][-1]['wall']:.2f}s wall "
                f"({row[s][-1]['cpu'] / row['plain PyTorch'][-1]['cpu']:.2f}x cpu)"
                for s in names), flush=True)
    for timer in ("cpu", "wall"):
        res[f"ratio_to_plain_{timer}"] = {
            col: {s: _summary([t[timer] / p[timer] for t, p in
                               zip(ts, res["seconds"][col]["plain PyTorch"])])
                  for s, ts in res["seconds"][col].items()} for col in COLUMNS}
    if a.epochs_nll:
        res["nll"] = nll_comparison(x, a.epochs_nll, a.nll_seeds)
    res["compile_seconds"] = COMPILE_SECONDS
    res["uptime_end"] = os.popen("uptime").read().strip()
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2))
    md = markdown(res, a)
    out.with_suffix(".md").write_text(md)
    print(md)


def markdown(res, a) -> str:
    def cell(s):
        return f"{s['median']:.2f} [{s['min']:.2f}, {s['max']:.2f}]"

    lines = [f"`python benchmarks/bench_vae_epoch.py{' --subset %d' % a.subset if a.subset else ''}"
             f"{' --rounds %d' % a.rounds if a.rounds != 3 else ''}"
             f"{' --compile' if a.compile else ''}`: {res['n_train']} images, "
             f"{res['rounds']} interleaved rounds, {res['threads']} thread, torch {res['torch']}, "
             f"pyro {res['pyro']}. Ratio to the plain loop's epoch time, median [min, max], in "
             "CPU time of the process (wall time in brackets below: other jobs' load inflates it).",
             "", "| system | VAE epoch ratio | IWAE K=5 epoch ratio |", "|---|---|---|"]
    for s in SYSTEMS:
        lines.append(f"| {s} | " + " | ".join(cell(res["ratio_to_plain_cpu"][c][s]) for c in COLUMNS) + " |")
    lines += ["", "The same in wall time:", "", "| system | VAE epoch ratio | IWAE K=5 epoch ratio |",
              "|---|---|---|"]
    for s in SYSTEMS:
        lines.append(f"| {s} | " + " | ".join(cell(res["ratio_to_plain_wall"][c][s]) for c in COLUMNS) + " |")
    p = res["seconds"]

    def med(col, timer):
        return statistics.median(t[timer] for t in p[col]["plain PyTorch"])

    lines += ["", f"Plain epoch seconds (median, CPU / wall): VAE {med('VAE epoch', 'cpu'):.2f} / "
              f"{med('VAE epoch', 'wall'):.2f} s, IWAE K=5 {med('IWAE K=5 epoch', 'cpu'):.2f} / "
              f"{med('IWAE K=5 epoch', 'wall'):.2f} s.", "",
              "2-D toy VAE (2 x 128 tanh nets, z_dim 2, Gaussian, batch 128), CPU ms per step, median "
              f"[min, max]: plain {cell(res['toy_ms_per_step']['plain'])}, lvm_pyro Trainer "
              f"{cell(res['toy_ms_per_step']['lvm_pyro'])}; ratio {cell(res['toy_ratio'])}.", "",
              f"Load: start `{res['uptime_start']}`; end `{res['uptime_end']}`."]
    if res.get("compile_seconds"):
        c = res["compile_seconds"]
        lines += ["", f"The compiled row's warm-up (compiling the networks; 2 steps on 200 "
                  f"images, not in its epoch time): median {statistics.median(t['cpu'] for t in c):.1f} "
                  f"CPU s / {statistics.median(t['wall'] for t in c):.1f} wall s per run."]
    if "nll" in res:
        n = res["nll"]
        lines += ["", f"Test NLL after {n['epochs']} epochs (K=5000, first 2000 test images "
                  f"binarised with seed 0): plain {n['plain']['nll']:.2f} +- {n['plain']['nll_se']:.2f}, "
                  f"lvm_pyro {n['lvm_pyro']['nll']:.2f} +- {n['lvm_pyro']['nll_se']:.2f} nats; paired "
                  f"difference (ours - plain) {n['paired_difference']['mean']:+.2f} +- "
                  f"{n['paired_difference']['se']:.2f} nats."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
