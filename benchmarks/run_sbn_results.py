"""Sigmoid belief net on binarised Fashion-MNIST: VIMCO vs NVIL-style baselines on a small
CPU budget, test NLL by importance sampling. Writes benchmarks/results/sbn_results.json,
sbn_results.md and sample / loss-curve pictures.

    .venv/bin/python benchmarks/run_sbn_results.py            # ~7 min on one core
    .venv/bin/python benchmarks/run_sbn_results.py --epochs 1 --num-test 100   # quick look

Both runs use the same model (one layer of 200 Bernoulli latents, linear conditionals:
the classic SBN), guide, data order, optimiser and number of optimiser steps; they
differ only in the objective: ``--elbo vimco --num-particles 5`` (Mnih & Rezende 2016)
versus ``--elbo tracegraph`` with one sample and the guide's input-dependent baselines
(NVIL, Mnih & Gregor 2014, without variance normalisation).
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import torch

from lvm_pyro.training.run import train_run

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=5, help="epochs over the 60000 training images")
    p.add_argument("--num-test", type=int, default=1000, help="test points for the NLL")
    p.add_argument("--num-samples", type=int, default=1000, help="importance samples K for the NLL")
    p.add_argument("--work", default="/tmp/lvm_pyro_sbn_runs", help="run directories (checkpoints)")
    a = p.parse_args()
    torch.set_num_threads(1)
    common = {"model": "sbn", "data": "fashion-mnist", "z_dim": 200, "num_hidden": 0,
              "num_stochastic_layers": 1, "batch_size": 100, "lr": 1e-3, "epochs": a.epochs,
              "seed": 0, "binarization": "dynamic"}
    runs = {"vimco_k5": {"elbo": "vimco", "num_particles": 5},
            "nvil_k1": {"elbo": "tracegraph", "num_particles": 1}}
    summary = {}
    t_all = time.perf_counter()
    for name, extra in runs.items():
        out = Path(a.work) / name
        if out.exists():
            shutil.rmtree(out)
        m = train_run({**common, **extra}, out, progress=False, num_samples=a.num_samples,
                      num_test=a.num_test)
        summary[name] = {k: m[k] for k in ("test_nll", "test_nll_se", "test_bits_per_dim",
                                           "test_elbo", "test_elbo_se", "num_test_points",
                                           "num_importance_samples", "train_seconds",
                                           "eval_seconds", "test_binarization")}
        summary[name]["train_loss_per_epoch"] = [round(h["loss"], 3) for h in m["train_curve"]]
        summary[name]["optimizer_steps"] = a.epochs * 600
        summary[name]["config"] = {**common, **extra}
        for pic in ("samples.png", "loss_curve.png"):
            shutil.copy(out / pic, RESULTS / f"sbn_{name}_{pic}")
        print(f"{name}: test NLL {m['test_nll']:.2f} +- {m['test_nll_se']:.2f} nats "
              f"(K={m['num_importance_samples']}, {m['num_test_points']} test points), "
              f"test ELBO {m['test_elbo']:.2f}, train {m['train_seconds']:.0f} s", flush=True)
    summary["total_seconds"] = time.perf_counter() - t_all
    summary["versions"] = m["versions"]
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "sbn_results.json").write_text(json.dumps(summary, indent=2, sort_keys=True))
    v, n = summary["vimco_k5"], summary["nvil_k1"]
    lines = [
        "# Sigmoid belief net on binarised Fashion-MNIST (benchmarks/run_sbn_results.py)",
        "",
        f"One layer of 200 Bernoulli latents, linear conditionals; {a.epochs} epochs over the 60000 "
        f"training images (dynamic binarisation), batch 100, Adam lr 1e-3, seed 0, one CPU thread. "
        f"Test NLL: importance sampling with the guide, K = {v['num_importance_samples']}, first "
        f"{v['num_test_points']} test images (fixed binarisation, seed 0); +- one standard error "
        "over test points. A short budget: far from converged, so the figures compare the two "
        "estimators at equal optimiser steps, not the models' best likelihoods.",
        "",
        "| objective | test NLL (nats) | test ELBO (nats) | train seconds |",
        "|---|---|---|---|",
        f"| VIMCO, K = 5 | {v['test_nll']:.2f} +- {v['test_nll_se']:.2f} | {v['test_elbo']:.2f} | {v['train_seconds']:.0f} |",
        f"| NVIL-style (TraceGraph_ELBO, K = 1, input baseline) | {n['test_nll']:.2f} +- {n['test_nll_se']:.2f} | {n['test_elbo']:.2f} | {n['train_seconds']:.0f} |",
        "",
        f"Training loss per epoch (nats per image; VIMCO: -L_5, NVIL: -ELBO): VIMCO "
        f"{v['train_loss_per_epoch']}, NVIL {n['train_loss_per_epoch']}.",
        "",
    ]
    (RESULTS / "sbn_results.md").write_text("\n".join(lines))
    print(f"total {summary['total_seconds']:.0f} s; written {RESULTS / 'sbn_results.json'}")


if __name__ == "__main__":
    main()
