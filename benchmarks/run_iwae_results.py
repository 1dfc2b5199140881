"""Real-data results for the IWAE issue: VAE vs IWAE at K = 1, 5, 50 on Fashion-MNIST.

The IWAE paper's one-stochastic-layer network (Burda et al. 2015, sec. 5: 784-200-200-2x50
tanh encoder, 50-200-200-784 tanh decoder, Bernoulli pixels), dynamic binarisation,
Adam lr 1e-3, batch 100, the same number of steps for every objective:

* ``vae``  = ``Trace_ELBO(num_particles=K, vectorize_particles=True)`` (the K-sample
  average ELBO: Burda et al.'s "VAE with k samples"),
* ``iwae`` = ``lvm_pyro.inference.IWAE_ELBO(num_particles=K)`` (standard gradient), and
  ``iwae_dreg`` with ``gradient="dreg"`` when asked.

``--summarize`` writes next to the runs folder (default ``benchmarks/results/``).

Each (objective, K, seed) is one short run written to
``benchmarks/results/iwae_runs/<objective>_k<K>_seed<seed>.json`` (skipped if present, so
the grid can be run piece by piece on a shared machine); ``--summarize`` aggregates them
into ``benchmarks/results/iwae_results.json`` and ``iwae_results.md``.

Evaluation: test NLL = -log p(x) estimated with ``--num-samples`` importance samples
(guide as proposal) on the first ``--num-test`` Fashion-MNIST test images binarised once
with seed 0; active units (Burda et al. 2015, sec. 5.2): latent dims with
Cov_x(E_q[z_i | x]) > 0.01 over the same images.

    .venv/bin/python benchmarks/run_iwae_results.py --objective iwae --k 5 --seed 0
    .venv/bin/python benchmarks/run_iwae_results.py --summarize
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

torch.set_num_threads(1)

import pyro  # noqa: E402
from pyro.infer import Trace_ELBO  # noqa: E402

from lvm_pyro.data import binarize_test, load_dataset  # noqa: E402
from lvm_pyro.inference import (IWAE_ELBO, elbo_per_datapoint, log_marginal_likelihood,  # noqa: E402
                                summarize_nll)
from lvm_pyro.training import Trainer  # noqa: E402
from lvm_pyro.training.builders import build_vae  # noqa: E402

RUNS = Path("benchmarks/results/iwae_runs")
CONFIG = {"z_dim": 50, "hidden_dim": 200, "num_hidden": 2, "activation": "tanh",
          "likelihood": "bernoulli", "network": "mlp"}


def make_objective(name: str, k: int):
    if name == "vae":
        return Trace_ELBO(num_particles=k, vectorize_particles=k > 1, max_plate_nesting=1)
    if name == "iwae":
        return IWAE_ELBO(num_particles=k)
    if name == "iwae_dreg":
        return IWAE_ELBO(num_particles=k, gradient="dreg")
    raise ValueError(f"unknown objective {name!r}")


@torch.no_grad()
def active_units(guide, x: torch.Tensor, threshold: float = 0.01) -> tuple[int, list[float]]:
    """Burda et al. 2015, sec. 5.2: number of dims with Cov_x(E_q[z_i | x]) > threshold."""
    loc = torch.cat([guide.loc_scale(x[i:i + 500])[0] for i in range(0, len(x), 500)])
    var = loc.double().var(0)
    return int((var > threshold).sum()), var.tolist()


def run_one(a) -> dict:
    out = RUNS / f"{a.objective}_k{a.k}_seed{a.seed}.json"
    if out.exists() and not a.force:
        print(f"{out} exists; skipping")
        return json.loads(out.read_text())
    pyro.clear_param_store()
    pyro.enable_validation(False)
    x_train = load_dataset("fashion-mnist", "train").images
    if a.num_train:
        x_train = x_train[:a.num_train]
    x_test = binarize_test(load_dataset("fashion-mnist", "test").images[:a.num_test], seed=0)
    pyro.set_rng_seed(a.seed)
    model, guide = build_vae(CONFIG, x_train.shape[1:])
    elbo = make_objective(a.objective, a.k)
    trainer = Trainer(model, guide, elbo, lr=1e-3, batch_size=100, seed=a.seed,
                      binarization="dynamic", progress=False)
    c0, t0 = time.process_time(), time.perf_counter()
    history = trainer.fit(x_train, a.epochs)
    train_cpu, train_wall = time.process_time() - c0, time.perf_counter() - t0
    c0 = time.process_time()
    pyro.set_rng_seed(1000 + a.seed)
    log_px = torch.cat([log_marginal_likelihood(model, guide, x_test[i:i + 100],
                                                num_samples=a.num_samples)
                        for i in range(0, len(x_test), 100)])
    elbo_test = torch.cat([elbo_per_datapoint(model, guide, x_test[i:i + 100], num_samples=10)
                           for i in range(0, len(x_test), 100)])
    au, variances = active_units(guide, x_test)
    s = summarize_nll(log_px, 784)
    rec = {"objective": a.objective, "num_particles": a.k, "seed": a.seed, "epochs": a.epochs,
           "num_train": len(x_train), "steps": trainer.step, "batch_size": 100, "lr": 1e-3,
           "test_nll": s.nll, "test_nll_se": s.nll_se, "test_elbo": float(elbo_test.mean()),
           "active_units": au, "latent_variances": variances,
           "num_test": len(x_test), "num_importance_samples": a.num_samples,
           "train_loss_curve": [h["loss"] for h in history],
           "train_cpu_seconds": train_cpu, "train_wall_seconds": train_wall,
           "eval_cpu_seconds": time.process_time() - c0,
           "versions": {"torch": torch.__version__, "pyro": pyro.__version__,
                        "python": platform.python_version()}}
    if a.check_samples:
        pyro.set_rng_seed(2000 + a.seed)
        xs = x_test[:a.check_test]
        lp = torch.cat([log_marginal_likelihood(model, guide, xs[i:i + 50], num_samples=a.check_samples)
                        for i in range(0, len(xs), 50)])
        rec.update({"check_nll": float(-lp.double().mean()), "check_num_test": len(xs),
                    "check_num_samples": a.check_samples,
                    "check_nll_same_points_main_k": float(-log_px[:len(xs)].double().mean())})
    RUNS.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(rec, indent=2))
    print(f"{a.objective} K={a.k} seed={a.seed}: test NLL {s.nll:.2f} +- {s.nll_se:.2f}, "
          f"test ELBO {rec['test_elbo']:.2f}, active units {au}, train {train_cpu:.0f} CPU s, "
          f"eval {rec['eval_cpu_seconds']:.0f} CPU s")
    return rec


def summarize() -> int:
    recs = [json.loads(p.read_text()) for p in sorted(RUNS.glob("*.json"))]
    if not recs:
        print("no runs found")
        return 1
    groups: dict[tuple, list] = {}
    for r in recs:
        groups.setdefault((r["objective"], r["num_particles"]), []).append(r)
    rows = []
    for (obj, k), rs in sorted(groups.items(), key=lambda t: (t[0][0], t[0][1])):
        nll = [r["test_nll"] for r in rs]
        au = [r["active_units"] for r in rs]
        el = [r["test_elbo"] for r in rs]
        rows.append({"objective": obj, "num_particles": k, "num_seeds": len(rs),
                     "seeds": [r["seed"] for r in rs],
                     "test_nll_mean": statistics.mean(nll),
                     "test_nll_sd_over_seeds": statistics.stdev(nll) if len(nll) > 1 else float("nan"),
                     "test_nll_per_seed": nll,
                     "test_elbo_mean": statistics.mean(el),
                     "active_units_mean": statistics.mean(au), "active_units_per_seed": au,
                     "train_cpu_seconds_per_run": statistics.mean(r["train_cpu_seconds"] for r in rs),
                     "eval_cpu_seconds_per_run": statistics.mean(r["eval_cpu_seconds"] for r in rs),
                     "check": [{k2: r[k2] for k2 in ("seed", "check_nll", "check_nll_same_points_main_k",
                                                     "check_num_test", "check_num_samples")}
                               for r in rs if "check_nll" in r]})
    r0 = recs[0]
    setup = {"data": "Fashion-MNIST, dynamic binarisation (train); test images binarised once, seed 0",
             "network": "IWAE paper one stochastic layer: 784-200-200-2x50 tanh / 50-200-200-784 tanh, Bernoulli",
             "optimizer": "Adam lr 1e-3, batch 100", "epochs": r0["epochs"], "num_train": r0["num_train"],
             "steps": r0["steps"], "num_test": r0["num_test"],
             "num_importance_samples": r0["num_importance_samples"],
             "total_cpu_seconds": sum(r["train_cpu_seconds"] + r["eval_cpu_seconds"] for r in recs)}
    (RUNS.parent / "iwae_results.json").write_text(
        json.dumps({"setup": setup, "rows": rows}, indent=2))
    lines = ["| objective | K | test NLL (nats), mean +- sd over seeds | per seed | test ELBO | active units |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['objective']} | {r['num_particles']} | {r['test_nll_mean']:.2f} +- "
                     f"{r['test_nll_sd_over_seeds']:.2f} ({r['num_seeds']} seeds) | "
                     f"{', '.join(f'{v:.2f}' for v in r['test_nll_per_seed'])} | "
                     f"{r['test_elbo_mean']:.2f} | {r['active_units_mean']:.1f} "
                     f"({', '.join(str(v) for v in r['active_units_per_seed'])}) |")
    text = "\n".join(lines)
    (RUNS.parent / "iwae_results.md").write_text(
        "# VAE vs IWAE on Fashion-MNIST (short budget)\n\n"
        + "\n".join(f"- {k}: {v}" for k, v in setup.items()) + "\n\n" + text + "\n")
    print(text)
    print(json.dumps(setup, indent=1))
    return 0


def main(argv=None) -> int:
    global RUNS
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--objective", choices=["vae", "iwae", "iwae_dreg"])
    ap.add_argument("--k", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--num-train", type=int, default=None, help="first N training images (all)")
    ap.add_argument("--num-test", type=int, default=1000)
    ap.add_argument("--num-samples", type=int, default=1000)
    ap.add_argument("--check-samples", type=int, default=0,
                    help="also estimate the NLL with this many samples on --check-test images")
    ap.add_argument("--check-test", type=int, default=100)
    ap.add_argument("--force", action="store_true")
    ap.add_argument("--runs-dir", default=str(RUNS), help="where per-run JSON files go")
    ap.add_argument("--summarize", action="store_true")
    a = ap.parse_args(argv)
    RUNS = Path(a.runs_dir)
    if a.summarize:
        return summarize()
    if a.objective is None:
        ap.error("--objective is required unless --summarize")
    run_one(a)
    return 0


if __name__ == "__main__":
    sys.exit(main())
