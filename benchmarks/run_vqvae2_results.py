"""Fashion-MNIST results for VQ-VAE-2 (Razavi et al. 2019): one level vs two levels at
equal code bits, the two-stage bound and the priors' bits/code, and classifier-based
rejection sampling's quality / diversity trade-off. One command:

    PYTHONPATH=$PWD nice -n 5 .venv/bin/python benchmarks/run_vqvae2_results.py

writes ``benchmarks/results/vqvae2_results.{json,md}`` and
``docs/figures/vqvae2_rejection_samples.png``; the run directory (checkpoints) goes to
``--work`` (default ``runs/vqvae2_fmnist``). Each stage is skipped when its output
exists there (``--fresh`` starts again), so an interrupted run continues.

Setting (a small CPU budget, one thread): the first ``--num-train`` training images,
28x28 read as 32x32 by the encoder (zero padding 2, so the likelihood is over the 784 real
pixels), discretised logistic over 256 levels.

* two levels (``lvm-pyro fit --model vqvae2`` through the library): top 8x8 codes,
  K_t = 256 (512 bits), bottom 16x16, K_b = 128 (1792 bits): 2304 bits per image;
* one level at the same 2304 bits: the bottom 16x16 grid alone with K = 512
  (:class:`lvm_pyro.nn.SingleLevelEncoder` / ``SingleLevelDecoder``: the same encoder
  and decoder stacks without the top level, in a :class:`lvm_pyro.models.VQVAEModel`);
* the priors (``lvm-pyro fit-prior``): class-conditional attention PixelCNN over the top
  codes, class-conditional gated PixelCNN over the bottom codes given the top codes; the
  bound uses their mixture over the 10 classes, so it bounds log p(x);
* the classifiers (``lvm-pyro fit-classifier``): rejection (architecture a, seed 0) and
  evaluation (architecture b, seed 1), on the same training images;
* the sweep: ``--num-samples`` class-conditional samples (equal numbers per class), kept
  when the rejection classifier's probability of the intended class is >= each threshold;
  for each: acceptance rate, the evaluation classifier's accuracy on the kept samples,
  precision / recall (Kynkaanniemi et al. 2019, k = 3) against held-out real test images
  in the evaluation classifier's 64-d feature space, on all kept samples and on a
  size-matched random subset (both sets of the same size at every threshold), and
  per-class coverage.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import shutil
import sys
import time
from pathlib import Path

import torch

torch.set_num_threads(1)

import pyro  # noqa: E402

from lvm_pyro.data import Binarizer  # noqa: E402
from lvm_pyro.data.datasets import DATASET_LEVELS  # noqa: E402
from lvm_pyro.diagnostics import class_coverage, classifier_rejection, precision_recall  # noqa: E402
from lvm_pyro.guides import VQEncoderGuide  # noqa: E402
from lvm_pyro.inference.evaluation import nll_report  # noqa: E402
from lvm_pyro.models import VQVAEModel, make_likelihood  # noqa: E402
from lvm_pyro.nn import SingleLevelDecoder, SingleLevelEncoder, VectorQuantizer  # noqa: E402
from lvm_pyro.training import Trainer  # noqa: E402
from lvm_pyro.training.builders import build_callbacks, build_metrics, build_model, build_objective  # noqa: E402
from lvm_pyro.training.classifiers import fit_run_classifiers, load_classifier  # noqa: E402
from lvm_pyro.training.config import ClassifierConfig, PriorConfig, RunConfig  # noqa: E402
from lvm_pyro.training.prior_stage import fit_prior  # noqa: E402
from lvm_pyro.training.prior_stage2 import load_vqvae2_priors  # noqa: E402
from lvm_pyro.training.rejection_sampling import class_conditional_samples  # noqa: E402
from lvm_pyro.training.run import load_run, prepare_data, test_bits_offset  # noqa: E402
from lvm_pyro.training.rundir import write_json  # noqa: E402

RESULTS = Path("benchmarks/results")
FIGURES = Path("docs/figures")
THRESHOLDS = (0.0, 0.3, 0.5, 0.7, 0.9, 0.95, 0.99)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def run_config(a) -> RunConfig:
    return RunConfig.from_dict({
        "model": "vqvae2", "data": a.data, "pad": 2, "bottom_downsample": 1,
        "channels": a.channels, "num_res_blocks": 1, "embedding_dim": 16,
        "codebook_size_top": 256, "codebook_size_bottom": 128, "epochs": a.epochs,
        "batch_size": 128, "lr": a.lr, "seed": 0})


def train_two_level(a, cfg: RunConfig, run_dir: Path) -> dict:
    """The library's fit, on the first num_train images, into a run directory that
    ``fit-prior`` / ``fit-classifier`` / ``sample`` read."""
    x = prepare_data(cfg, "train")[:a.num_train]
    pyro.clear_param_store()
    pyro.set_rng_seed(cfg.train.seed)
    model, guide = build_model(cfg, x.shape[1:])
    flat = cfg.to_dict()
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json(run_dir / "config.json", {**flat, "data_source": cfg.data.data})
    trainer = Trainer(model, guide, build_objective(cfg, num_data=len(x)), lr=cfg.train.lr,
                      batch_size=cfg.train.batch_size, seed=cfg.train.seed,
                      binarization=Binarizer(cfg.data.binarization, cfg.train.seed + 1,
                                             DATASET_LEVELS[cfg.data.data]),
                      checkpoint_path=run_dir / "checkpoint.pt",
                      config={k: v for k, v in flat.items() if k not in ("epochs", "data_root")},
                      progress=False, callbacks=build_callbacks(cfg, model, guide))
    t0 = time.process_time()
    history = trainer.fit(x, cfg.train.epochs)
    seconds = time.process_time() - t0
    model.eval(), guide.eval()
    xt = prepare_data(cfg, "test")[:a.num_test]
    m = build_metrics(cfg, model, guide, xt)
    return {**m, "train_curve": history, "cpu_seconds": seconds, "num_train": len(x),
            "num_test": len(xt)}


def train_one_level(a, cfg: RunConfig) -> dict:
    """One level on the bottom grid (16x16, K = 512: 2304 bits), same stacks and training."""
    x = prepare_data(cfg, "train")[:a.num_train]
    pyro.clear_param_store()
    pyro.set_rng_seed(cfg.train.seed)
    levels = cfg.model.num_levels
    lik = make_likelihood("discretized_logistic", num_mixtures=1, num_levels=levels)
    ch = a.channels
    nets = {"channels": ch, "res_channels": ch // 2, "num_res_blocks": 1, "bottom_downsample": 1,
            "pad": 2}
    c, h, w = x.shape[1:]
    grid = ((h + 4) // 2, (w + 4) // 2)  # the two-level model's bottom grid
    q = VectorQuantizer(512, 16, commitment_weight=0.25, decay=0.99, dead_code_threshold=1.0)
    model = VQVAEModel(SingleLevelDecoder(16, (lik.num_params, c, h, w), **nets), q, grid,
                       (c, h, w), lik)
    guide = VQEncoderGuide(SingleLevelEncoder(c, 16, **nets), q)
    trainer = Trainer(model, guide, build_objective(cfg, num_data=len(x)), lr=cfg.train.lr,
                      batch_size=cfg.train.batch_size, seed=cfg.train.seed,
                      binarization=Binarizer(cfg.data.binarization, cfg.train.seed + 1,
                                             DATASET_LEVELS[cfg.data.data]),
                      progress=False)
    t0 = time.process_time()
    history = trainer.fit(x, cfg.train.epochs)
    seconds = time.process_time() - t0
    model.eval(), guide.eval()
    xt = prepare_data(cfg, "test")[:a.num_test]
    rec, codes = [], []
    with torch.no_grad():
        for s in range(0, len(xt), 100):
            out = guide.encode(xt[s:s + 100])
            rec.append(model.reconstruction_log_prob(xt[s:s + 100], out.quantized))
            codes.append(out.indices)
    r = nll_report(torch.cat(rec), test_bits_offset(cfg, xt))
    from lvm_pyro.nn import codebook_usage

    usage = codebook_usage(torch.cat(codes), 512)
    return {"test_reconstruction_nll": r.nll, "test_reconstruction_nll_se": r.nll_se,
            "test_reconstruction_bits_per_dim": r.bits_per_dim,
            "code_bits": math.prod(grid) * math.log2(512), "code_grid": list(grid),
            "codebook_size": 512, "test_perplexity": usage.perplexity,
            "test_dead_codes": usage.dead_codes, "train_curve": history, "cpu_seconds": seconds,
            "num_train": len(x), "num_test": len(xt)}


def sweep(a, run_dir: Path) -> tuple[dict, dict]:
    """Class-conditional samples, rejection at each threshold, quality and diversity."""
    model, _, config, _ = load_run(run_dir)
    model.eval()
    top, bottom = load_vqvae2_priors(run_dir)
    rej, ev = load_classifier(run_dir, "rejection"), load_classifier(run_dir, "evaluation")
    num_classes = top.num_classes
    y = torch.arange(a.num_samples) % num_classes
    t0 = time.process_time()
    images = class_conditional_samples(model, top, bottom, y,
                                       generator=torch.Generator().manual_seed(0))
    sample_seconds = time.process_time() - t0
    cfg = RunConfig.from_dict(config, strict=False)
    real = prepare_data(cfg, "test")[-a.num_real:]  # held out: the last test images
    with torch.no_grad():
        real_f = torch.cat([ev.features(real[s:s + 500]) for s in range(0, len(real), 500)])
        fake_f = torch.cat([ev.features(images[s:s + 500]) for s in range(0, len(images), 500)])
        pred = torch.cat([ev(images[s:s + 500]).argmax(-1) for s in range(0, len(images), 500)])
    rows = []
    results = {}
    for t in sorted(set(THRESHOLDS) | {a.figure_threshold}):
        results[t] = classifier_rejection(images, y, rej, threshold=t)
    counts = [int(results[t].keep.sum()) for t in THRESHOLDS]
    big = [c for c in counts if c >= a.min_match]
    n_common = min(big) if big else None  # one set size for every row's matched numbers
    gen = torch.Generator().manual_seed(1)
    real_common = None if n_common is None else torch.randperm(len(real_f), generator=gen)[:n_common]
    for t in THRESHOLDS:
        keep = results[t].keep
        kept = keep.nonzero().squeeze(-1)
        row = {"threshold": t, "num_kept": len(kept), "acceptance_rate": results[t].acceptance_rate,
               "acceptance_rate_per_class": [float(keep[y == c].double().mean())
                                             for c in range(num_classes)]}
        if len(kept) > 3:
            row["eval_accuracy"] = float((pred[kept] == y[kept]).double().mean())
            # precision against the whole held-out real set: its radii do not depend on
            # how many samples were kept, so it compares across thresholds
            row["precision"] = precision_recall(real_f, fake_f[kept], k=3).precision
            cov = class_coverage(pred[kept], y[kept], num_classes)
            row["coverage_per_class"] = [None if math.isnan(v) else float(v) for v in cov.tolist()]
            row["classes_with_samples"] = int(sum(bool((y[kept] == c).any())
                                                  for c in range(num_classes)))
        if n_common is not None and len(kept) >= a.min_match:
            # recall depends on the generated set's size (its k-NN radii): every row uses
            # n_common kept samples and n_common real images
            sub = kept[torch.randperm(len(kept), generator=gen)[:n_common]]
            pr_m = precision_recall(real_f[real_common], fake_f[sub], k=3)
            row["precision_matched"], row["recall_matched"] = pr_m.precision, pr_m.recall
            row["matched_size"] = n_common
        rows.append(row)
    # real images through the same measurements: the ceiling of each number
    with torch.no_grad():
        real_pred = torch.cat([ev(real[s:s + 500]).argmax(-1) for s in range(0, len(real), 500)])
    real_labels = torch.as_tensor(prepare_data_labels(cfg))[-a.num_real:]
    half = len(real_f) // 2
    pr_real = precision_recall(real_f[:half], real_f[half:], k=3)
    reference = {"eval_accuracy_real": float((real_pred == real_labels).double().mean()),
                 "precision_real_vs_real": pr_real.precision, "recall_real_vs_real": pr_real.recall,
                 "real_halves_size": half}
    if n_common is not None and 2 * n_common <= len(real_f):  # real vs real at the matched size
        perm = torch.randperm(len(real_f), generator=gen)
        pr_m = precision_recall(real_f[perm[:n_common]], real_f[perm[n_common:2 * n_common]], k=3)
        reference.update(precision_real_vs_real_matched=pr_m.precision,
                         recall_real_vs_real_matched=pr_m.recall)
    figure(images, y, results, num_classes, a.figure_threshold, Path(a.figures))
    return {"rows": rows, "reference": reference, "num_samples": a.num_samples,
            "num_real": len(real), "sample_cpu_seconds": sample_seconds}, {}


def prepare_data_labels(cfg: RunConfig) -> torch.Tensor:
    from lvm_pyro.training.run import load_run_data

    return torch.as_tensor(load_run_data(cfg, "test").labels).long()


def figure(images, y, results, num_classes: int, threshold: float, figures: Path,
           per_class: int = 8) -> Path:
    """Left: the first draws of each class (no rejection); right: the first kept draws of
    each class at ``threshold`` (blank where fewer were kept). One row per class."""
    from torchvision.utils import make_grid, save_image

    keep = results[threshold].keep
    blank = torch.full_like(images[:1], 1.0)
    left, right = [], []
    for c in range(num_classes):
        idx = (y == c).nonzero().squeeze(-1)
        left += [images[i:i + 1] for i in idx[:per_class]]
        k = idx[keep[idx]][:per_class]
        right += [images[i:i + 1] for i in k] + [blank] * (per_class - len(k))
    grid = lambda t: make_grid(torch.cat(t).clamp(0, 1), nrow=per_class, padding=2, pad_value=0.5)  # noqa: E731
    lg, rg = grid(left), grid(right)
    gap = torch.ones(3, lg.shape[1], 12)
    figures.mkdir(parents=True, exist_ok=True)
    path = figures / "vqvae2_rejection_samples.png"
    save_image(torch.cat([lg, gap, rg], 2), path)
    return path


def stage(path: Path, fn, fresh: bool):
    if path.exists() and not fresh:
        log(f"skip (exists): {path}")
        return json.loads(path.read_text())
    t0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    out["stage_wall_seconds"] = time.perf_counter() - t0
    out["stage_cpu_seconds"] = time.process_time() - c0
    path.write_text(json.dumps(out, indent=1, default=str))
    log(f"done {path.name}: {out['stage_cpu_seconds']:.0f} s CPU")
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", default="runs/vqvae2_fmnist")
    p.add_argument("--data", default="fashion-mnist", help="fashion-mnist (results) or digits "
                                                           "(a smoke test of the script)")
    p.add_argument("--results", default=str(RESULTS), help="folder of the json / md")
    p.add_argument("--figures", default=str(FIGURES), help="folder of the figures")
    p.add_argument("--num-train", type=int, default=6000)
    p.add_argument("--num-test", type=int, default=500, help="test images for reconstruction")
    p.add_argument("--num-bound", type=int, default=300, help="test images for the bound")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--channels", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--prior-channels", type=int, default=32)
    p.add_argument("--prior-layers", type=int, default=3)
    p.add_argument("--prior-epochs", type=int, default=1)
    p.add_argument("--classifier-epochs", type=int, default=4)
    p.add_argument("--classifier-lr", type=float, default=2e-3)
    p.add_argument("--prior-lr", type=float, default=1e-3)
    p.add_argument("--num-samples", type=int, default=1000)
    p.add_argument("--num-real", type=int, default=1000)
    p.add_argument("--min-match", type=int, default=50,
                   help="fewest kept samples for the size-matched precision / recall")
    p.add_argument("--figure-threshold", type=float, default=0.9)
    p.add_argument("--fresh", action="store_true")
    a = p.parse_args(argv)
    work = Path(a.work)
    if a.fresh and work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    run_dir = work / "two_level"
    cfg = run_config(a)
    t_start = time.process_time()
    log("stage 1: two-level VQ-VAE-2")
    two = stage(work / "two_level.json", lambda: train_two_level(a, cfg, run_dir), a.fresh)
    log("stage 2: one level at equal code bits")
    one = stage(work / "one_level.json", lambda: train_one_level(a, cfg), a.fresh)
    log("stage 3: priors (fit-prior)")
    pc = PriorConfig(channels=a.prior_channels, num_layers=a.prior_layers, epochs=a.prior_epochs,
                     batch_size=128, lr=a.prior_lr, seed=0)
    priors = stage(work / "priors.json", lambda: fit_prior(
        run_dir, pc, num_train=a.num_train, num_test=a.num_bound, num_pictures=100,
        progress=False, force=True), a.fresh)
    log("stage 4: classifiers (fit-classifier)")
    clf = stage(work / "classifiers.json", lambda: fit_run_classifiers(
        run_dir, ClassifierConfig(epochs=a.classifier_epochs, lr=a.classifier_lr),
        num_train=a.num_train,
        force=True), a.fresh)
    log("stage 5: rejection sweep")
    sw = stage(work / "sweep.json", lambda: sweep(a, run_dir)[0], a.fresh)
    total_cpu = sum(d.get("stage_cpu_seconds", 0.0) for d in (two, one, priors, clf, sw))
    keep_prior = {k: v for k, v in priors.items() if k not in ("train_curve", "run_config",
                                                               "versions")}
    out = {"setting": {"data": a.data, "num_train": a.num_train, "pad": 2,
                       "image": "images zero-padded by 2 on each side by the encoder (28x28 read "
                                "as 32x32); likelihood over the unpadded pixels, discretised "
                                "logistic over the data set's levels",
                       "epochs": a.epochs, "channels": a.channels, "lr": a.lr,
                       "prior": {"channels": a.prior_channels, "num_layers": a.prior_layers,
                                 "epochs": a.prior_epochs, "lr": a.prior_lr},
                       "classifier_epochs": a.classifier_epochs,
                       "classifier_lr": a.classifier_lr, "threads": 1},
           "two_level": {k: v for k, v in two.items() if k != "train_curve"},
           "two_level_train_curve": two.get("train_curve"),
           "one_level": {k: v for k, v in one.items() if k != "train_curve"},
           "one_level_train_curve": one.get("train_curve"),
           "priors": keep_prior, "priors_train_curve": priors.get("train_curve"),
           "classifiers": clf, "sweep": sw, "total_cpu_seconds": total_cpu,
           "this_invocation_cpu_seconds": time.process_time() - t_start,
           "versions": {"torch": torch.__version__, "pyro": pyro.__version__,
                        "python": platform.python_version()}}
    results, figures = Path(a.results), Path(a.figures)
    results.mkdir(parents=True, exist_ok=True)
    (results / "vqvae2_results.json").write_text(json.dumps(out, indent=1, default=str))
    (results / "vqvae2_results.md").write_text(markdown(out))
    shutil.copy(run_dir / "prior_samples.png", figures / "vqvae2_prior_samples.png")
    log(f"wrote {results / 'vqvae2_results.json'}, {results / 'vqvae2_results.md'}; "
        f"total {total_cpu:.0f} s CPU")
    return 0


def _f(v, fmt=".3f") -> str:
    return "-" if v is None else format(v, fmt)


def markdown(o: dict) -> str:
    s, two, one, pr, clf, sw = (o["setting"], o["two_level"], o["one_level"], o["priors"],
                                o["classifiers"], o["sweep"])
    lines = [
        f"# VQ-VAE-2 on {s['data']} (generated by benchmarks/run_vqvae2_results.py)", "",
        f"{s['num_train']} training images, {s['epochs']} epochs, channels {s['channels']}, "
        f"one CPU thread; {s['image']}. Total {o['total_cpu_seconds'] / 60:.1f} min CPU.", "",
        "## One level vs two levels at equal code bits", "",
        "| model | grids (K) | code bits | test reconstruction bits/dim | perplexity |",
        "|---|---|---|---|---|",
        f"| one level | 16x16 (512) | {one['code_bits']:.0f} | "
        f"{one['test_reconstruction_bits_per_dim']:.4f} | {one['test_perplexity']:.1f} |",
        f"| two levels | top 8x8 ({two['codebook_size_top']}) + bottom 16x16 "
        f"({two['codebook_size_bottom']}) | {two['code_bits']:.0f} | "
        f"{two['test_reconstruction_bits_per_dim']:.4f} | top {two['test_perplexity_top']:.1f}, "
        f"bottom {two['test_perplexity_bottom']:.1f} |", "",
        f"({one['num_test']} test images; standard errors {one['test_reconstruction_nll_se']:.2f} "
        f"and {two['test_reconstruction_nll_se']:.2f} nats per image.)", "",
        "## Priors and the two-stage bound", "",
        "| quantity | value |", "|---|---|",
        f"| top prior, bits/code (uniform {pr['uniform_bits_per_code_top']:.1f}) | "
        f"{pr['prior_bits_per_code_top']:.4f} +- {pr['prior_bits_per_code_top_se']:.4f} |",
        f"| bottom prior given top, bits/code (uniform {pr['uniform_bits_per_code_bottom']:.1f}) | "
        f"{pr['prior_bits_per_code_bottom']:.4f} +- {pr['prior_bits_per_code_bottom_se']:.4f} |",
        f"| top / bottom bits/code given the true class | {pr['conditional_bits_per_code_top']:.4f}"
        f" / {pr['conditional_bits_per_code_bottom']:.4f} |",
        f"| two-stage bound, bits/dim (mixture prior; bounds -log p(x)) | "
        f"{_f(pr['two_stage_bits_per_dim'], '.4f')} +- {_f(pr['two_stage_bits_per_dim_se'], '.4f')} |",
        f"| the same with uniform code priors | {_f(pr['uniform_prior_bits_per_dim'], '.4f')} |",
        f"| reconstruction term alone | {_f(pr['reconstruction_bits_per_dim'], '.4f')} |",
        f"| bound on -log p(x given y), bits/dim | {_f(pr['conditional_two_stage_bits_per_dim'], '.4f')} |",
        "", f"({pr['num_test_points']} test images.)", "",
        "## Classifiers (trained on the same real training images)", "",
        "| role | architecture | seed | test accuracy |", "|---|---|---|---|"]
    for r, e in clf.items():
        if isinstance(e, dict) and "test_accuracy" in e:
            lines.append(f"| {r} | {e['arch']} | {e['seed']} | {e['test_accuracy']:.4f} "
                         f"({e['num_test']} images) |")
    ref = sw["reference"]
    lines += ["", "## Rejection sweep", "",
              f"{sw['num_samples']} class-conditional samples ({sw['num_samples'] // 10} per "
              f"class). Precision (k = 3) of the kept samples against {sw['num_real']} held-out "
              "real test images in the evaluation classifier's feature space; recall depends on "
              "the generated set's size, so precision / recall 'matched' use the same number "
              "of kept samples and of real images at every threshold (the smallest kept set "
              "of at least --min-match; '-' where fewer were kept).", "",
              "| threshold | kept | acceptance | eval. accuracy | precision | precision (matched) "
              "| recall (matched) | min / max class acceptance | min class coverage |",
              "|---|---|---|---|---|---|---|---|---|"]
    for row in sw["rows"]:
        acc = row["acceptance_rate_per_class"]
        cov = [c for c in row.get("coverage_per_class", []) if c is not None]
        lines.append(
            f"| {'none' if row['threshold'] == 0 else row['threshold']} | {row['num_kept']} | "
            f"{row['acceptance_rate']:.3f} | {_f(row.get('eval_accuracy'))} | "
            f"{_f(row.get('precision'))} | {_f(row.get('precision_matched'))} | "
            f"{_f(row.get('recall_matched'))} | {min(acc):.2f} / {max(acc):.2f} | "
            f"{_f(min(cov) if cov else None, '.2f')} |")
    n_m = next((r["matched_size"] for r in sw["rows"] if "matched_size" in r), None)
    lines += ["", f"Matched set size: {n_m}."]
    lines += ["", f"Real images through the same measurements: evaluation accuracy "
                  f"{ref['eval_accuracy_real']:.3f}; precision / recall of one half of the real "
                  f"images against the other ({ref['real_halves_size']} each): "
                  f"{ref['precision_real_vs_real']:.3f} / {ref['recall_real_vs_real']:.3f}; at the "
                  f"matched size: {_f(ref.get('precision_real_vs_real_matched'))} / "
                  f"{_f(ref.get('recall_real_vs_real_matched'))}.", "",
              "Figure: docs/figures/vqvae2_rejection_samples.png (left: draws per class without "
              "rejection; right: kept draws at the figure's threshold).", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
