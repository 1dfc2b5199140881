"""Posterior collapse on binarised Fashion-MNIST: PixelCNN decoders, remedies, VLAE.

One command reproduces the table, the receptive-field figure and the samples figure
(``docs/posterior_collapse.md``, "Results on Fashion-MNIST")::

    PYTHONPATH=$PWD nice -n 5 .venv/bin/python benchmarks/run_collapse_results.py

It trains every row that has no result file yet (``benchmarks/results/collapse_runs/
<row>.json``; ``--force`` retrains), then writes ``benchmarks/results/collapse_results.json``
and ``collapse_results.md`` and the figures ``docs/figures/collapse_receptive_field.png``
and ``docs/figures/collapse_samples.png``. ``--rows a,b`` trains only those rows (to split
the grid over sessions); ``--summarize`` only rebuilds the table and figures.

Setup (the same for every row; one CPU thread):

* data: Fashion-MNIST, downsampled to 14 x 14 by 2 x 2 average pooling
  (``torch.nn.functional.avg_pool2d``) so that a 5-layer PixelCNN decoder's importance-
  sampled NLL fits the CPU budget; training on the first ``--num-train`` (10 000) training
  images, binarised afresh every epoch (dynamic binarisation, seed + 1); the aggressive
  mode's held-out I_q(x; z) on 500 training images outside that subset (indices
  50 000-50 499), binarised once; test images binarised once with seed 0.
* networks: z_dim 32, MLP encoder 196-200-200-2x32 tanh
  (:class:`~lvm_pyro.guides.AmortizedNormalGuide`); decoders: the IWAE-paper MLP
  (32-200-200-196 tanh, Bernoulli) or :class:`~lvm_pyro.models.PixelCNNDecoderVAE`
  (gated PixelCNN, 32 channels, z added to every layer; Bernoulli pixels).
* objective: the ELBO with the KL in closed form (``TraceMeanField_ELBO``, ``--elbo
  meanfield``), Adam lr 1e-3, batch 100, 2 epochs (200 optimiser steps), seed 0; the
  remedies are the CLI's: ``--kl-warmup 100`` (linear, Bowman et al. 2015),
  ``--free-bits 0.25`` (nats per dimension, Kingma et al. 2016 eq. 15), ``--kl-schedule
  cyclical`` (4 cycles, ramp 0.5, Fu et al. 2019) and aggressive encoder training (He et
  al. 2019, Algorithm 1) with at most 3 encoder-only steps per step (the paper: 100),
  windows of 2 steps.
* evaluation: test NLL = -log p(x) by importance sampling with the guide as proposal,
  K = ``--num-samples`` (100), on the first ``--num-test`` (200) test images; test ELBO,
  KL = E_x KL(q(z | x) || p(z)) (closed form), I_q(x; z) (the minibatch estimator of He et
  al. 2019 eq. 4 over M = ``--num-info`` test points, at most log M; with its
  leave-one-out upper bound) and active units (Burda et al. 2015: Cov_x E_q[z_d] > 0.01)
  on the first ``--num-info`` (2000) test images.

The command-line equivalent of a row (on 28 x 28 images; this script adds the
downsampling) is e.g. ``lvm-pyro fit --data fashion-mnist --model pixelvae
--decoder-layers 5 --decoder-kernel 3 --channels 32 --z-dim 32 --elbo meanfield
--epochs 2 --free-bits 0.25``.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time
from pathlib import Path

import torch

torch.set_num_threads(1)

import pyro  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from lvm_pyro.data import Binarizer, binarize_test, load_dataset  # noqa: E402
from lvm_pyro.diagnostics import kl_decomposition  # noqa: E402
from lvm_pyro.inference import elbo_parts, log_marginal_likelihood  # noqa: E402
from lvm_pyro.training import Trainer  # noqa: E402
from lvm_pyro.training.aggressive import AggressiveEncoder  # noqa: E402
from lvm_pyro.training.builders import build_model, build_objective  # noqa: E402
from lvm_pyro.training.config import RunConfig  # noqa: E402
from lvm_pyro.training.pictures import prior_draws  # noqa: E402
from lvm_pyro.training.run import latent_metrics  # noqa: E402

RESULTS = Path("benchmarks/results")
RUNS = RESULTS / "collapse_runs"
FIGURES = Path("docs/figures")
HELDOUT = slice(50_000, 50_500)
MAX_INNER_STEPS, CHECK_EVERY = 3, 2

COMMON = {"data": "fashion-mnist", "z_dim": 32, "hidden_dim": 200, "num_hidden": 2,
          "elbo": "meanfield", "epochs": 2, "batch_size": 100, "lr": 1e-3}
PIXEL = {"model": "pixelvae", "channels": 32, "decoder_layers": 5, "decoder_kernel": 3}

#: row name -> (decoder label, objective label, flat RunConfig fields)
ROWS: dict[str, tuple[str, str, dict]] = {
    "mlp_vae": ("MLP (IWAE paper)", "ELBO", {"model": "vae", "network": "mlp",
                                             "activation": "tanh"}),
    "pixel5": ("PixelCNN 5 x k3", "ELBO", PIXEL),
    "pixel5_warmup": ("PixelCNN 5 x k3", "ELBO, KL warm-up 100 steps",
                      {**PIXEL, "kl_warmup": 100}),
    "pixel5_freebits": ("PixelCNN 5 x k3", "ELBO, free bits 0.25 nats/dim",
                        {**PIXEL, "free_bits": 0.25}),
    "pixel5_cyclical": ("PixelCNN 5 x k3", "ELBO, cyclical (4 cycles)",
                        {**PIXEL, "kl_schedule": "cyclical", "kl_cycles": 4}),
    "pixel5_aggressive": ("PixelCNN 5 x k3", f"ELBO, aggressive encoder (cap {MAX_INNER_STEPS})",
                          {**PIXEL, "aggressive_encoder": True,
                           "aggressive_max_inner_steps": MAX_INNER_STEPS}),
    "vlae1": ("VLAE local: PixelCNN 1 x k3", "ELBO", {**PIXEL, "decoder_layers": 1}),
    # receptive-field sweep (with vlae1 and pixel5)
    "pixel2": ("PixelCNN 2 x k3", "ELBO", {**PIXEL, "decoder_layers": 2}),
    "pixel5_k7": ("PixelCNN 5 x k7 (whole image)", "ELBO", {**PIXEL, "decoder_kernel": 7}),
}
TABLE_ROWS = ["mlp_vae", "pixel5", "pixel5_warmup", "pixel5_freebits", "pixel5_cyclical",
              "pixel5_aggressive", "vlae1", "pixel2", "pixel5_k7"]
#: training order of a full run (the table's key rows first)
RUN_ORDER = ["pixel5", "vlae1", "mlp_vae", "pixel5_aggressive", "pixel5_warmup",
             "pixel5_freebits", "pixel5_cyclical", "pixel5_k7", "pixel2"]
SWEEP_ROWS = ["vlae1", "pixel2", "pixel5", "pixel5_k7"]
SAMPLE_ROWS = ["mlp_vae", "pixel5", "vlae1"]


def downsample(x: torch.Tensor) -> torch.Tensor:
    """(N, 1, 28, 28) intensities in [0, 1] -> (N, 1, 14, 14), 2 x 2 average pooling."""
    return F.avg_pool2d(x.float(), 2)


def load_data(num_train: int) -> dict:
    """Training intensities, held-out and test images (binarised once), all 14 x 14."""
    train = load_dataset("fashion-mnist", "train").images
    test = load_dataset("fashion-mnist", "test").images
    if num_train > HELDOUT.start:
        raise ValueError(f"--num-train must be <= {HELDOUT.start} (the aggressive mode's "
                         f"held-out images start there), got {num_train}")
    return {"train": downsample(train[:num_train]),
            "heldout": binarize_test(downsample(train[HELDOUT]), seed=1),
            "test": binarize_test(downsample(test), seed=0)}


def _bits(x: torch.Tensor) -> list[str]:
    """Binary images (N, 1, H, W) as strings of '0'/'1' in raster order (for the JSON)."""
    return ["".join("1" if v > 0.5 else "0" for v in img.flatten().tolist()) for img in x]


def _unbits(rows: list[str], side: int) -> torch.Tensor:
    return torch.tensor([[float(c) for c in r] for r in rows]).reshape(-1, 1, side, side)


@torch.no_grad()
def draw_samples(model, x_like: torch.Tensor, seed: int, num_z: int = 4, per_z: int = 8) -> dict:
    """Prior draws, and for a PixelCNN decoder ``per_z`` draws x ~ p(x | z) for each of
    ``num_z`` fixed z ~ p(z) (the same z in a row)."""
    pyro.set_rng_seed(seed)
    out = {"prior": _bits(prior_draws(model, x_like[:32]))}
    if hasattr(model, "sample_x"):
        g = torch.Generator().manual_seed(seed)
        z = torch.randn(num_z, model.z_dim, generator=g).repeat_interleave(per_z, 0)
        out["same_z"] = _bits(model.sample_x(z, generator=g))
        out["same_z_shape"] = [num_z, per_z]
    return out


def run_row(name: str, data: dict, a) -> dict:
    decoder, objective, fields = ROWS[name]
    cfg = RunConfig.from_dict({**COMMON, **fields, "seed": a.seed, "epochs": a.epochs})
    x_train, x_test = data["train"], data["test"]
    pyro.clear_param_store()
    pyro.enable_validation(False)
    pyro.set_rng_seed(a.seed)
    model, guide = build_model(cfg, x_train.shape[1:])
    elbo = build_objective(cfg, num_data=len(x_train))
    aggressive = (AggressiveEncoder(data["heldout"], max_inner_steps=MAX_INNER_STEPS,
                                    check_every=CHECK_EVERY)
                  if cfg.train.aggressive_encoder else None)
    trainer = Trainer(model, guide, elbo, lr=cfg.train.lr, batch_size=cfg.train.batch_size,
                      seed=a.seed, binarization=Binarizer("dynamic", a.seed + 1, 256),
                      progress=False, aggressive=aggressive)
    c0, t0 = time.process_time(), time.perf_counter()
    history = [h if isinstance(h, dict) else h.as_dict() for h in trainer.fit(x_train, a.epochs)]
    train_cpu, train_wall = time.process_time() - c0, time.perf_counter() - t0

    c0 = time.process_time()
    x_is, x_info = x_test[:a.num_test], x_test[:a.num_info]
    with torch.no_grad():
        pyro.set_rng_seed(1000)
        log_px = torch.cat([log_marginal_likelihood(model, guide, x_is[i:i + 50],
                                                    num_samples=a.num_samples)
                            for i in range(0, len(x_is), 50)])
        is_cpu = time.process_time() - c0
        pyro.set_rng_seed(1001)
        parts = [elbo_parts(model, guide, x_info[i:i + 100]) for i in range(0, len(x_info), 100)]
        elbo_i = torch.cat([p.elbo for p in parts])
        kl_i = torch.cat([p.kl for p in parts])
        latent = latent_metrics(model, guide, x_info)
        pyro.set_rng_seed(1002)
        dec = kl_decomposition(model, guide, x_info, num_samples=10)
    eval_cpu = time.process_time() - c0
    c0 = time.process_time()
    samples = (draw_samples(model, x_test, seed=2000 + a.seed)
               if name in SAMPLE_ROWS else {})
    sample_cpu = time.process_time() - c0
    nll = -log_px.double()
    rec = {
        "row": name, "decoder": decoder, "objective": objective, "config": cfg.to_dict(),
        "image_size": 14, "num_train": len(x_train), "epochs": a.epochs, "seed": a.seed,
        "steps": trainer.step,
        "receptive_radius": getattr(model, "receptive_radius", None),
        "receptive_field": getattr(model, "receptive_field", None),
        "covers_image": getattr(model, "covers_image", None),
        "test_nll": float(nll.mean()), "test_nll_se": float(nll.std() / math.sqrt(len(nll))),
        "test_nll_per_point": nll.tolist(),
        "num_test": len(x_is), "num_importance_samples": a.num_samples,
        "test_elbo": float(elbo_i.mean()), "test_kl": float(kl_i.mean()),
        "test_kl_se": float(kl_i.std() / math.sqrt(len(kl_i))),
        "mutual_information": dec.mutual_information,
        "mutual_information_upper": dec.mutual_information_upper,
        "mutual_information_se": dec.mutual_information_se,
        "marginal_kl": dec.marginal_kl,
        "active_units": latent["active_units"], "latent_dims": latent["latent_dims"],
        "num_info": len(x_info), "log_num_info": math.log(len(x_info)),
        "train_curve": history,
        "train_cpu_seconds": train_cpu, "train_wall_seconds": train_wall,
        "is_cpu_seconds": is_cpu, "is_cpu_seconds_per_image": is_cpu / len(x_is),
        "eval_cpu_seconds": eval_cpu, "sample_cpu_seconds": sample_cpu,
        "samples": samples,
        "versions": {"torch": torch.__version__, "pyro": pyro.__version__,
                     "python": platform.python_version()},
    }
    print(f"{name}: NLL {rec['test_nll']:.2f} +- {rec['test_nll_se']:.2f}, ELBO "
          f"{rec['test_elbo']:.2f}, KL {rec['test_kl']:.3f}, I {rec['mutual_information']:.3f}, "
          f"AU {rec['active_units']}, train {train_cpu:.0f} CPU s, eval {eval_cpu:.0f} CPU s "
          f"(IS {rec['is_cpu_seconds_per_image']:.3f} s / image)", flush=True)
    return rec


# -- table and figures -----------------------------------------------------------------

def _paired(rec: dict, ref: dict) -> tuple[float, float]:
    """Mean and standard error of the per-test-point NLL difference rec - ref."""
    d = torch.tensor(rec["test_nll_per_point"]) - torch.tensor(ref["test_nll_per_point"])
    return float(d.mean()), float(d.std() / math.sqrt(len(d)))


def summarize() -> int:
    recs = {p.stem: json.loads(p.read_text()) for p in sorted(RUNS.glob("*.json"))}
    if not recs:
        print(f"no runs in {RUNS}")
        return 1
    ref = recs.get("pixel5")
    lines = ["| decoder | objective | test NLL (IS), nats | NLL - plain PixelCNN (paired) | "
             "test ELBO | KL | I(x;z) [upper] | active units |",
             "|---|---|---|---|---|---|---|---|"]
    rows = []
    for name in TABLE_ROWS:
        r = recs.get(name)
        if r is None:
            continue
        diff = _paired(r, ref) if ref is not None and name != "pixel5" else None
        rows.append({k: r[k] for k in ("row", "decoder", "objective", "receptive_radius",
                                       "receptive_field", "covers_image", "test_nll",
                                       "test_nll_se", "test_elbo", "test_kl", "test_kl_se",
                                       "mutual_information", "mutual_information_upper",
                                       "marginal_kl", "active_units", "latent_dims", "steps",
                                       "train_cpu_seconds", "eval_cpu_seconds",
                                       "is_cpu_seconds_per_image")}
                    | {"nll_minus_plain_pixelcnn": diff})
        lines.append(
            f"| {r['decoder']} | {r['objective']} | {r['test_nll']:.2f} +- {r['test_nll_se']:.2f} | "
            + (f"{diff[0]:+.2f} +- {diff[1]:.2f}" if diff else "0") + " | "
            f"{r['test_elbo']:.2f} | {r['test_kl']:.3f} | {r['mutual_information']:.3f} "
            f"[{r['mutual_information_upper']:.3f}] | {r['active_units']} / {r['latent_dims']} |")
    any_r = next(iter(recs.values()))
    setup = {
        "data": "Fashion-MNIST, 2x2 average pooling to 14x14; training: first "
                f"{any_r['num_train']} training images, dynamic binarisation; test: binarised "
                "once (seed 0)",
        "epochs": any_r["epochs"], "steps_per_run": any_r["steps"], "batch_size": 100,
        "seed": any_r["seed"], "z_dim": 32,
        "test_nll": f"K = {any_r['num_importance_samples']} importance samples on the first "
                    f"{any_r['num_test']} test images",
        "kl_information_active_units": f"first {any_r['num_info']} test images; I(x;z) is at "
                                       f"most log M = {any_r['log_num_info']:.2f} nats",
        "total_cpu_seconds": sum(r["train_cpu_seconds"] + r["eval_cpu_seconds"]
                                 + r["sample_cpu_seconds"] for r in recs.values()),
    }
    (RESULTS / "collapse_results.json").write_text(json.dumps({"setup": setup, "rows": rows},
                                                              indent=2))
    text = "\n".join(lines)
    (RESULTS / "collapse_results.md").write_text(
        "# Posterior collapse on binarised Fashion-MNIST (14x14, CPU budget)\n\n"
        "Made by `benchmarks/run_collapse_results.py`.\n\n"
        + "\n".join(f"- {k}: {v}" for k, v in setup.items()) + "\n\n" + text + "\n")
    print(text)
    print(json.dumps(setup, indent=1))
    _figure_receptive_field(recs)
    _figure_samples(recs)
    return 0


def _figure_receptive_field(recs: dict) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = [recs[n] for n in SWEEP_ROWS if n in recs]
    if len(pts) < 2:
        return
    pts.sort(key=lambda r: r["receptive_radius"])
    pos = list(range(len(pts)))  # categorical axis: radii 1, 2, 5, 15 are far from even
    labels = [f"{r['config']['decoder_layers']} x k{r['config']['decoder_kernel']}\n"
              f"R={r['receptive_radius']}" + (" (all)" if r["covers_image"] else "")
              for r in pts]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.6))
    ax1.errorbar(pos, [r["test_kl"] for r in pts], yerr=[r["test_kl_se"] for r in pts],
                 marker="o", capsize=3, label="KL(q(z|x) || p(z))")
    ax1.plot(pos, [r["mutual_information"] for r in pts], marker="s", ls="--",
             label="I_q(x; z)")
    ax1.set_ylabel("nats")
    ax1.set_ylim(bottom=0)
    ax1.set_title("information in z (test)", fontsize=9)
    ax1.legend(fontsize=8)
    ax2.errorbar(pos, [r["test_nll"] for r in pts], yerr=[r["test_nll_se"] for r in pts],
                 marker="o", capsize=3, color="C3")
    ax2.set_ylabel("nats")
    ax2.set_title("test NLL, IS K=%d, %d images" % (pts[0]["num_importance_samples"],
                                                    pts[0]["num_test"]), fontsize=9)
    for ax in (ax1, ax2):
        ax.set_xticks(pos)
        ax.set_xticklabels(labels, fontsize=8)
        ax.set_xlabel("decoder layers x kernel; R = receptive radius, pixels (>= 13: all)",
                      fontsize=8)
    fig.suptitle("PixelCNN-decoder VAE on 14x14 binarised Fashion-MNIST: KL and NLL vs "
                 "receptive field", fontsize=9)
    fig.tight_layout()
    FIGURES.mkdir(parents=True, exist_ok=True)
    fig.savefig(FIGURES / "collapse_receptive_field.png", dpi=110)
    plt.close(fig)


def _figure_samples(recs: dict) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from torchvision.utils import make_grid

    panels = []
    for n in SAMPLE_ROWS:
        r = recs.get(n)
        if r is None or not r.get("samples"):
            continue
        panels.append((f"{r['decoder']}: prior samples x ~ p(x)",
                       _unbits(r["samples"]["prior"], 14), 8))
        if "same_z" in r["samples"]:
            nz, per = r["samples"]["same_z_shape"]
            panels.append((f"{r['decoder']}: each row one z ~ p(z), {per} draws x ~ p(x|z) "
                           f"(KL {r['test_kl']:.2f} nats)", _unbits(r["samples"]["same_z"], 14),
                           per))
    if not panels:
        return
    fig, axes = plt.subplots(len(panels), 1, figsize=(6, 2.2 * len(panels)))
    for ax, (title, imgs, nrow) in zip(axes, panels):
        grid = make_grid(imgs, nrow=nrow, padding=2, pad_value=0.5)[0]
        ax.imshow(grid.numpy(), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        ax.set_title(title, fontsize=8)
        ax.axis("off")
    fig.tight_layout()
    FIGURES.mkdir(parents=True, exist_ok=True)
    fig.savefig(FIGURES / "collapse_samples.png", dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    global RESULTS, RUNS, FIGURES
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", default=",".join(RUN_ORDER),
                    help=f"comma-separated rows to train (default: all: {', '.join(RUN_ORDER)})")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--num-train", type=int, default=10_000)
    ap.add_argument("--num-test", type=int, default=200, help="test images for the IS NLL")
    ap.add_argument("--num-samples", type=int, default=100, help="K of the IS NLL")
    ap.add_argument("--num-info", type=int, default=2000,
                    help="test images for ELBO, KL, I(x;z) and active units")
    ap.add_argument("--force", action="store_true", help="retrain rows that have results")
    ap.add_argument("--summarize", action="store_true", help="only rebuild table and figures")
    ap.add_argument("--results-dir", default=str(RESULTS))
    ap.add_argument("--figures-dir", default=str(FIGURES))
    a = ap.parse_args(argv)
    RESULTS, FIGURES = Path(a.results_dir), Path(a.figures_dir)
    RUNS = RESULTS / "collapse_runs"
    if not a.summarize:
        names = [n for n in a.rows.split(",") if n]
        unknown = [n for n in names if n not in ROWS]
        if unknown:
            ap.error(f"unknown rows {unknown}; choose from {', '.join(ROWS)}")
        todo = [n for n in names if a.force or not (RUNS / f"{n}.json").exists()]
        if todo:
            data = load_data(a.num_train)
            RUNS.mkdir(parents=True, exist_ok=True)
            for n in todo:
                rec = run_row(n, data, a)
                (RUNS / f"{n}.json").write_text(json.dumps(rec, indent=1))
    return summarize()


if __name__ == "__main__":
    raise SystemExit(main())
