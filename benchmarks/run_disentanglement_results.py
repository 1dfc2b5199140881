"""Disentanglement results on the CPU dSprites set: beta-VAE (beta = 1, 4, 16) and
beta-TCVAE, several seeds each, every metric with its mean and spread, and latent
traversal figures. One command reproduces everything:

    nice -n 5 .venv/bin/python benchmarks/run_disentanglement_results.py [--jobs 4]

Data: ``load_dataset("dsprites", split)``, the procedural cpu variant (32 x 32 binary
images, 3 shapes x 6 scales x 10 orientations x 16 x 16 positions; 41472 training and
4608 test images).

Model: the library's VAE (:func:`lvm_pyro.training.builders.build_vae`), MLP encoder and
decoder 1024-256-256 with ReLU, z_dim 10, Bernoulli pixels, diagonal-Gaussian guide;
Adam lr 1e-3, batch 128, ``--epochs`` (4) epochs of the whole training split, 1296 steps,
about 25 s of one core (data already binary: no binarisation). Objectives, built by
:func:`lvm_pyro.training.builders.build_objective` from their configs:

* ``beta1``, ``beta4``, ``beta16``: ``MeanFieldConfig(beta=b)``, i.e.
  E_q[log p(x|z)] - b KL(q(z|x) || p(z)) with the analytic KL (Higgins et al. 2017, eq. 4;
  b = 1 is the plain ELBO);
* ``tcvae``: ``TCVAEConfig(alpha=1, beta=6, gamma=1, tc_estimator="mss")``
  (Chen et al. 2018, eq. 4, minibatch stratified sampling; beta = 6 as their dSprites runs).

Evaluation on the test split:

* the seven metrics of :func:`lvm_pyro.diagnostics.disentanglement_metrics` on the guide
  means of all 4608 test images, with ``num_train=1000, num_test=500`` for every metric
  (disentanglement_lib uses 10000 / 5000, which takes over 8 minutes for DCI alone here;
  ``lvm-pyro disentanglement`` defaults to 2000 / 1000): *indicative* values at this
  budget;
* the reconstruction term E_q[log p(x|z)] and KL(q(z|x) || p(z)) per image (nats,
  :func:`lvm_pyro.inference.elbo_parts`, one draw per image, all test images);
* index-code MI, total correlation and dimension-wise KL
  (:func:`lvm_pyro.diagnostics.tc_decomposition`, first 1000 test images, 1 draw each:
  MI is capped at log 1000 = 6.91 nats);
* active units (Burda et al. 2015, Cov_x E_q[z_d | x] > 0.01).

Each (method, seed) writes ``benchmarks/results/disent_runs/<method>_seed<s>.json``
(skipped when present: the grid can be resumed piece by piece); seed 0 of each method also
draws ``docs/figures/disent_traversal_<method>.png``: one row per latent, the guide mean of
one test image with that latent swept over [-2.5, 2.5], each row labelled with the factor(s)
for which that latent is MIG's argmax (the code with the highest mutual information) and
the latent's KL. Then the summary goes to ``benchmarks/results/disent_results.{json,md}``.

``--quick`` (a smoke run: 1 seed, 1 epoch on 2000 images, metrics at 200 / 100) writes to
``--out`` only, never to the committed results.
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

import numpy as np  # noqa: E402
import pyro  # noqa: E402
import pyro.poutine as poutine  # noqa: E402

# every library module the runs need is imported here, before training starts, so that
# edits to the working tree during a long background run cannot change it half-way
from lvm_pyro.data import load_dataset  # noqa: E402
from lvm_pyro.diagnostics import (active_units, disentanglement_metrics,  # noqa: E402
                                  guide_codes, kl_per_dimension, tc_decomposition)
from lvm_pyro.diagnostics.disentanglement import mig_score  # noqa: E402
from lvm_pyro.inference import elbo_parts  # noqa: E402
from lvm_pyro.inference.program import trace_program  # noqa: E402
from lvm_pyro.training import Trainer  # noqa: E402
from lvm_pyro.training.builders import build_objective, build_vae  # noqa: E402
from lvm_pyro.training.config import MeanFieldConfig, TCVAEConfig  # noqa: E402

MODEL = {"z_dim": 10, "hidden_dim": 256, "num_hidden": 2, "activation": "relu",
         "network": "mlp", "likelihood": "bernoulli"}
METHODS = {
    "beta1": MeanFieldConfig(beta=1.0),
    "beta4": MeanFieldConfig(beta=4.0),
    "beta16": MeanFieldConfig(beta=16.0),
    "tcvae": TCVAEConfig(alpha=1.0, beta=6.0, gamma=1.0, tc_estimator="mss"),
}
LABELS = {"beta1": "VAE (beta = 1)", "beta4": "beta-VAE, beta = 4",
          "beta16": "beta-VAE, beta = 16", "tcvae": "beta-TCVAE (alpha 1, beta 6, gamma 1, mss)"}
METRICS = ("beta_vae", "factor_vae", "mig", "dci_disentanglement", "dci_completeness",
           "dci_informativeness", "sap")
TERMS = ("reconstruction", "kl", "elbo", "mutual_information", "total_correlation",
         "dimensionwise_kl", "active_units")
TRAVERSAL_VALUES = torch.linspace(-2.5, 2.5, 9)


@torch.no_grad()
def decode_means(model, z: torch.Tensor, x_like: torch.Tensor) -> torch.Tensor:
    """Bernoulli means of p(x | z) for given latents z (n, D): the model run with ``"z"``
    conditioned and the observation unconditioned; ``x_like`` (n, ...) gives the shape."""
    # condition outside uncondition: uncondition (applied first) frees "x", then condition
    # fixes "z" (the other order would free the conditioned "z" again and draw it)
    fixed = poutine.condition(poutine.uncondition(model), data={"z": z})
    trace = trace_program(fixed, x_like, keywords_of=model)
    return trace.nodes["x"]["fn"].mean.reshape(x_like.shape)


def traversal_figure(model, guide, x_test, codes, factors, factor_names, kl_dims, path: Path,
                     title: str) -> list[str]:
    """One row per latent: decoded images of the guide mean of test image 0 with that
    latent swept over TRAVERSAL_VALUES; rows labelled by MIG's argmax. Returns the labels."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    mig = mig_score(codes.numpy(), factors.numpy(), seed=0, num_train=len(codes))
    best_code = mig.mutual_information.argmax(axis=0)  # (K,) the code MIG picks per factor
    z_dim, n = codes.shape[1], len(TRAVERSAL_VALUES)
    z0 = codes[0].float().to(x_test.device)
    rows = []
    for d in range(z_dim):
        z = z0.repeat(n, 1)
        z[:, d] = TRAVERSAL_VALUES.to(z)
        rows.append(decode_means(model, z, x_test[:1].expand(n, *x_test.shape[1:])).cpu())
    labels = []
    for d in range(z_dim):
        caught = [factor_names[k] for k in range(len(factor_names)) if best_code[k] == d]
        norm = [mig.mutual_information[d, k] / mig.entropy[k] for k in range(len(factor_names))
                if best_code[k] == d]
        what = ", ".join(f"{c} ({v:.2f})" for c, v in zip(caught, norm)) or "-"
        labels.append(f"z{d}: {what}; KL {kl_dims[d]:.2f}")
    fig, axes = plt.subplots(z_dim, n, figsize=(n * 0.8 + 3.2, z_dim * 0.8 + 0.6))
    for d in range(z_dim):
        for j in range(n):
            ax = axes[d, j]
            ax.imshow(rows[d][j, 0].numpy(), cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if d == z_dim - 1:
                ax.set_xlabel(f"{TRAVERSAL_VALUES[j]:.1f}", fontsize=7)
        axes[d, 0].set_ylabel(labels[d], rotation=0, ha="right", va="center", fontsize=7)
    fig.suptitle(title + "\nrow label: factor(s) whose MIG argmax is this latent "
                 "(normalised MI), the latent's KL (nats)", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return labels


def train_model(method: str, seed: int, x_train: torch.Tensor, a, *, device: str = "cpu",
                model_config: dict = MODEL):
    """Train one (method, seed) from scratch (deterministic given the seed on one thread):
    returns model, guide, trainer, history, CPU and wall seconds of training."""
    pyro.clear_param_store()
    x_train = x_train.to(device)
    pyro.set_rng_seed(seed)
    model, guide = build_vae(model_config, x_train.shape[1:])
    model.to(device)
    guide.to(device)
    elbo = build_objective(METHODS[method], num_data=len(x_train))
    trainer = Trainer(model, guide, elbo, lr=1e-3, batch_size=a.batch_size, seed=seed,
                      binarization="none", progress=False)
    c0, t0 = time.process_time(), time.perf_counter()
    history = trainer.fit(x_train, a.epochs)
    return (model, guide, trainer, history, time.process_time() - c0,
            time.perf_counter() - t0)


def redraw_figure(method: str, a, runs: Path, figures: Path) -> list[str]:
    """Retrain the first seed of ``method`` (same code, same seed: the same parameters),
    check that it reproduces the recorded MIG, and draw its traversal figure again; the
    run's record gets the new labels. Raises RuntimeError when the MIG differs."""
    seed = a.seeds[0]
    path = runs / f"{method}_seed{seed}.json"
    rec = json.loads(path.read_text())
    train, test = load_dataset("dsprites", "train"), load_dataset("dsprites", "test")
    x_train = train.images[:a.num_train_images] if a.num_train_images else train.images
    model, guide, *_ = train_model(method, seed, x_train, a)
    with torch.no_grad():
        codes = guide_codes(guide, test.images).cpu()
        kl_dims = kl_per_dimension(model, guide, test.images).double().mean(0)
    mig = mig_score(codes.numpy(), test.factors.numpy(), seed=seed,
                    num_train=rec["metric_settings"]["num_train"]).score
    if abs(mig - rec["mig"]) > 1e-9:
        raise RuntimeError(f"{method} seed {seed}: retrained MIG {mig} != recorded {rec['mig']}"
                           ": not the same model; rerun the grid instead")
    labels = traversal_figure(model, guide, test.images, codes, test.factors,
                              list(test.factor_names), kl_dims.tolist(),
                              figures / f"disent_traversal_{method}.png",
                              f"{LABELS[method]}, seed {seed}")
    rec["traversal_labels"] = labels
    path.write_text(json.dumps(rec, indent=2))
    print(f"{method} seed {seed}: traversal figure redrawn (MIG {mig:.3f} reproduced)", flush=True)
    return labels


def train_and_score(method: str, seed: int, x_train: torch.Tensor, test, a, *,
                    figure: Path | None = None, device: str = "cpu",
                    model_config: dict = MODEL) -> dict:
    """Train one (method, seed) on ``x_train`` (N, 1, H, W) and score it on ``test`` (a
    FactorImageDataset): the record written per run (module docstring). ``a`` carries
    ``epochs``, ``batch_size``, ``metric_train``, ``metric_test``. With ``figure`` also
    draws the traversal figure there."""
    x_test, factors = test.images.to(device), test.factors
    model, guide, trainer, history, train_cpu, train_wall = train_model(
        method, seed, x_train, a, device=device, model_config=model_config)
    c0 = time.process_time()
    pyro.set_rng_seed(1000 + seed)
    with torch.no_grad():
        codes = guide_codes(guide, x_test).cpu()  # (N, D) float64
        parts = elbo_parts(model, guide, x_test, num_samples=1)
        kl_dims = kl_per_dimension(model, guide, x_test).double().mean(0).cpu()  # (D,)
        decomposition = tc_decomposition(model, guide, x_test[:1000], num_samples=1)
        au = active_units(guide, x_test)
    terms_seconds = time.process_time() - c0
    c1 = time.process_time()
    metrics = disentanglement_metrics(codes, factors, seed=seed, num_train=a.metric_train,
                                      num_test=a.metric_test)
    metric_cpu = time.process_time() - c1
    rec = {"method": method, "label": LABELS[method], "seed": seed,
           "objective": {"name": type(METHODS[method]).name,
                         **{k: getattr(METHODS[method], k) for k in
                            METHODS[method].__dataclass_fields__}},
           "model": model_config, "epochs": a.epochs, "batch_size": a.batch_size, "lr": 1e-3,
           "num_train_images": len(x_train), "steps": trainer.step, "num_test_images": len(x_test),
           "image_size": list(x_train.shape[1:]), "device": str(device),
           **metrics,
           "reconstruction": float(parts.reconstruction.double().mean()),
           "kl": float(parts.kl.double().mean()), "elbo": float(parts.elbo.double().mean()),
           "kl_per_dim": kl_dims.tolist(),
           "mutual_information": decomposition.mutual_information,
           "total_correlation": decomposition.total_correlation,
           "dimensionwise_kl": decomposition.dimensionwise_kl,
           "active_units": au.num_active,
           "metric_settings": {"num_train": a.metric_train, "num_test": a.metric_test,
                               "seed": seed, "rows": len(codes)},
           "train_loss_curve": [h["loss"] for h in history],
           "train_cpu_seconds": train_cpu, "train_wall_seconds": train_wall,
           "terms_cpu_seconds": terms_seconds, "metrics_cpu_seconds": metric_cpu,
           "versions": {"torch": torch.__version__, "pyro": pyro.__version__,
                        "python": platform.python_version()}}
    if figure is not None:
        rec["traversal_labels"] = traversal_figure(
            model, guide, x_test, codes, factors, list(test.factor_names), kl_dims.tolist(),
            figure, f"{LABELS[method]}, seed {seed}")
    print(f"{method} seed {seed}: " + ", ".join(f"{k} {rec[k]:.3f}" for k in METRICS)
          + f", reconstruction {rec['reconstruction']:.2f}, KL {rec['kl']:.2f}; train "
          f"{train_cpu:.0f} CPU s ({trainer.step} steps), metrics {metric_cpu:.0f} CPU s",
          flush=True)
    return rec


def run_one(method: str, seed: int, a, runs: Path, figures: Path) -> dict:
    """One (method, seed) on the CPU dSprites set, its record in ``runs`` (skipped when
    present); seed ``a.seeds[0]`` draws the method's traversal figure into ``figures``."""
    out = runs / f"{method}_seed{seed}.json"
    if out.exists():
        print(f"{out} exists; skipping", flush=True)
        return json.loads(out.read_text())
    train, test = load_dataset("dsprites", "train"), load_dataset("dsprites", "test")
    x_train = train.images[:a.num_train_images] if a.num_train_images else train.images
    figure = figures / f"disent_traversal_{method}.png" if seed == a.seeds[0] else None
    rec = train_and_score(method, seed, x_train, test, a, figure=figure)
    runs.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(rec, indent=2))
    return rec


def summarize(recs: list[dict], a, *, data: str = "procedural dSprites cpu variant",
              budget: str = "a CPU budget of under 2 minutes of training a run") -> dict:
    """Mean, sample standard deviation, min and max over seeds of every metric and term,
    per method, with the settings."""
    groups: dict[str, list[dict]] = {}
    for r in recs:
        groups.setdefault(r["method"], []).append(r)
    table = {}
    for method in METHODS:
        rs = groups.get(method, [])
        if not rs:
            continue
        row = {"label": LABELS[method], "seeds": [r["seed"] for r in rs]}
        for key in METRICS + TERMS:
            v = [float(r[key]) for r in rs]
            row[key] = {"mean": statistics.fmean(v),
                        "sd": statistics.stdev(v) if len(v) > 1 else float("nan"),
                        "min": min(v), "max": max(v), "values": v}
        row["train_cpu_seconds"] = statistics.fmean(r["train_cpu_seconds"] for r in rs)
        row["metrics_cpu_seconds"] = statistics.fmean(r["metrics_cpu_seconds"] for r in rs)
        table[method] = row
    first = recs[0]
    size = " x ".join(map(str, first.get("image_size", [1, 32, 32])[1:]))
    return {"note": f"indicative metrics: {budget} and metric sizes num_train "
                    f"{first['metric_settings']['num_train']} / num_test "
                    f"{first['metric_settings']['num_test']} (disentanglement_lib: 10000 / 5000)",
            "data": f"{data}, {first['num_train_images']} training / "
                    f"{first['num_test_images']} test images ({size})",
            "model": first["model"], "epochs": first["epochs"], "batch_size": first["batch_size"],
            "steps": first["steps"], "metric_settings": first["metric_settings"],
            "methods": table}


def _cell(stat: dict, digits: int) -> str:
    sd = "" if stat["sd"] != stat["sd"] else f" +- {stat['sd']:.{digits}f}"
    return f"{stat['mean']:.{digits}f}{sd}"


def write_markdown(summary: dict, path: Path) -> None:
    names = {"beta_vae": "BetaVAE", "factor_vae": "FactorVAE", "mig": "MIG",
             "dci_disentanglement": "DCI dis.", "dci_completeness": "DCI compl.",
             "dci_informativeness": "DCI info.", "sap": "SAP",
             "reconstruction": "E_q log p(x\\|z)", "kl": "KL", "elbo": "ELBO",
             "mutual_information": "index-code MI", "total_correlation": "TC",
             "dimensionwise_kl": "dim-wise KL", "active_units": "active units"}
    lines = ["# Disentanglement on dSprites (indicative)", "",
             summary["note"] + ".", "",
             f"Data: {summary['data']}. Model: {summary['model']['network']} VAE "
             f"{summary['model']}; Adam 1e-3, batch "
             f"{summary['batch_size']}, {summary['epochs']} epochs ({summary['steps']} steps). "
             "Cells: mean +- sample standard deviation over seeds (values per seed in "
             "the .json of the same name). Metrics on the guide means of the test images; nats for "
             "the ELBO terms (per image, test split; MI / TC / dimension-wise KL on the first "
             "1000 test images, MI at most log 1000 = 6.91).", ""]
    for keys, digits in ((METRICS, 3), (TERMS, 2)):
        lines.append("| method | seeds | " + " | ".join(names[k] for k in keys) + " |")
        lines.append("|---|---|" + "---|" * len(keys))
        for method, row in summary["methods"].items():
            lines.append(f"| {row['label']} | {len(row['seeds'])} | "
                         + " | ".join(_cell(row[k], digits) for k in keys) + " |")
        lines.append("")
    path.write_text("\n".join(lines))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--num-train-images", type=int, default=None,
                   help="train on the first N training images (default: all 41472)")
    p.add_argument("--metric-train", type=int, default=1000)
    p.add_argument("--metric-test", type=int, default=500)
    p.add_argument("--out", default="benchmarks/results",
                   help="results folder (runs in OUT/disent_runs/)")
    p.add_argument("--figures", default="docs/figures")
    p.add_argument("--jobs", type=int, default=1,
                   help="runs in parallel worker processes (one torch thread each; the "
                        "results do not depend on it)")
    p.add_argument("--redraw-figures", action="store_true",
                   help="only retrain the first seed of each method (reproducing its recorded "
                        "MIG exactly) and draw its traversal figure again")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: 1 seed, 1 epoch of 2000 images, metrics 200 / 100; needs "
                        "--out and --figures outside the committed results")
    a = p.parse_args(argv)
    if a.quick:
        if a.out == "benchmarks/results" or a.figures == "docs/figures":
            p.error("--quick writes smoke results: give --out and --figures elsewhere")
        a.seeds, a.epochs, a.num_train_images = a.seeds[:1], 1, 2000
        a.metric_train, a.metric_test = 200, 100
    out, figures = Path(a.out), Path(a.figures)
    runs = out / "disent_runs"
    if a.redraw_figures:
        for m in a.methods:
            redraw_figure(m, a, runs, figures)
        return 0
    grid = [(m, s) for s in a.seeds for m in a.methods]  # seeds outer
    if a.jobs == 1:
        recs = [run_one(m, s, a, runs, figures) for m, s in grid]
    else:  # independent runs in worker processes, one torch thread each
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(a.jobs, mp_context=multiprocessing.get_context("spawn")) as ex:
            recs = list(ex.map(run_one, *zip(*grid), *([x] * len(grid) for x in
                                                         (a, runs, figures))))
    summary = summarize(recs, a)
    out.mkdir(parents=True, exist_ok=True)
    (out / "disent_results.json").write_text(json.dumps(summary, indent=2))
    write_markdown(summary, out / "disent_results.md")
    print(f"written {out / 'disent_results.json'} and {out / 'disent_results.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
