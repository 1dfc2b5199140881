"""The disentanglement study on the full 64 x 64 dSprites set, on a CUDA GPU (not run in CI).

Same methods, evaluation and record as ``benchmarks/run_disentanglement_results.py`` (its
``train_and_score``): beta-VAE with beta = 1, 4, 16 and beta-TCVAE (alpha 1, beta 6,
gamma 1, mss), several seeds; the seven metrics of
:func:`lvm_pyro.diagnostics.disentanglement_metrics` on the guide means of the test split,
at disentanglement_lib's sizes by default (``--metric-train 10000 --metric-test 5000``),
the reconstruction term and KL, the TC decomposition and active units; a traversal figure
per method (seed 0). Differences to the CPU study:

* data: the real ``dsprites_ndarray_co1sh3sc6or40x32y32_64x64.npz`` under ``--data-root``
  when given, else the procedural ``"full"`` variant (64 x 64, 40 orientations, 32 x 32
  positions: 737280 images; 663552 training / 73728 test, about 11 GB as float32 on the
  GPU);
* model: the library's conv VAE (``network="conv"``: two stride-2 4 x 4 convolutions with
  32 channels, a 256-unit linear layer; the mirror image in the decoder), z_dim 10,
  Bernoulli pixels; Adam 1e-3, batch ``--batch-size`` (256), ``--epochs`` (default 5).

Cost: training is bound by Pyro's per-step Python overhead (2592 steps an epoch at batch
256); DCI at 10000 / 5000 rows fits one scikit-learn gradient-boosted classifier per factor
on the CPU (113 factor classes on the full grid) and dominates the evaluation.

    .venv/bin/python benchmarks/gpu_disentanglement.py --device cuda [--data-root DIR]
    # the check that it runs, on a CPU at a tiny size:
    .venv/bin/python benchmarks/gpu_disentanglement.py --device cpu --variant cpu \\
        --num-images 2000 --num-test-images 500 --epochs 1 --methods beta4 --seeds 0 \\
        --metric-train 200 --metric-test 100 --out /tmp/disent_gpu_check

Writes ``OUT/disent_gpu_runs/<method>_seed<s>.json`` (skipped when present),
``OUT/disent_gpu_results.{json,md}`` and ``OUT/disent_gpu_traversal_<method>.png``
(``--out`` default ``benchmarks/results``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from lvm_pyro.data.dsprites import load_dsprites  # noqa: E402
from run_disentanglement_results import (METHODS, MODEL, summarize,  # noqa: E402
                                         train_and_score, write_markdown)

GPU_MODEL = {**MODEL, "network": "conv", "hidden_dim": 256}


def _subset(ds, n):
    """The first ``n`` rows of a FactorImageDataset (all when ``n`` is None)."""
    if n is None or n >= len(ds.images):
        return ds
    return ds._replace(images=ds.images[:n], factors=ds.factors[:n], labels=ds.labels[:n])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda", help="torch device (cuda; cpu for the check)")
    p.add_argument("--variant", default="full", choices=("full", "cpu"),
                   help="procedural variant when no --data-root (default: full, 64 x 64)")
    p.add_argument("--data-root", default=None,
                   help="folder holding the real dSprites .npz (default: procedural)")
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--num-images", type=int, default=None,
                   help="train on the first N training images (default: all)")
    p.add_argument("--num-test-images", type=int, default=None,
                   help="score on the first N test images (default: all)")
    p.add_argument("--metric-train", type=int, default=10000)
    p.add_argument("--metric-test", type=int, default=5000)
    p.add_argument("--threads", type=int, default=4, help="torch CPU threads")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    if a.device.startswith("cuda") and not torch.cuda.is_available():
        p.error(f"--device {a.device}: torch finds no CUDA device here (use --device cpu for "
                "the small check)")
    source = "real dSprites .npz" if a.data_root else f"procedural dSprites {a.variant} variant"
    train = load_dsprites("train", a.data_root, variant=a.variant)
    test = _subset(load_dsprites("test", a.data_root, variant=a.variant), a.num_test_images)
    x_train = train.images[:a.num_images] if a.num_images else train.images
    out = Path(a.out)
    runs = out / "disent_gpu_runs"
    runs.mkdir(parents=True, exist_ok=True)
    recs = []
    for seed in a.seeds:
        for method in a.methods:
            path = runs / f"{method}_seed{seed}.json"
            if path.exists():
                print(f"{path} exists; skipping", flush=True)
                recs.append(json.loads(path.read_text()))
                continue
            figure = out / f"disent_gpu_traversal_{method}.png" if seed == a.seeds[0] else None
            rec = train_and_score(method, seed, x_train, test, a, figure=figure,
                                  device=a.device, model_config=GPU_MODEL)
            rec["data_source"] = source
            if a.device.startswith("cuda"):
                rec["gpu"] = torch.cuda.get_device_name()
            path.write_text(json.dumps(rec, indent=2))
            recs.append(rec)
    summary = summarize(recs, a, data=source, budget=f"{a.epochs} epochs on {a.device}")
    (out / "disent_gpu_results.json").write_text(json.dumps(summary, indent=2))
    write_markdown(summary, out / "disent_gpu_results.md")
    print(f"written {out / 'disent_gpu_results.json'} and {out / 'disent_gpu_results.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
