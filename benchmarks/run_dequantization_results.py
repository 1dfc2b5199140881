"""Dequantisation on 8-bit Fashion-MNIST: test bits/dim bounds of a pixel flow and a VAE
under uniform and variational (Flow++) dequantisation, the discretised likelihood of the
VAE's trained density, and a discretised-logistic VAE as reference. Writes
benchmarks/results/dequant_results.json and dequant_results.md.

    nice -n 5 .venv/bin/python benchmarks/run_dequantization_results.py   # ~2.5 min CPU, 1 thread
    .venv/bin/python benchmarks/run_dequantization_results.py --num-train 500 --num-test 20 \
        --num-samples 4 --rows flow_uniform --out /tmp/dq_quick                # quick look

Every bound is on the discrete log P(k) of the 8-bit test images (nats; bits/dim =
-bound / (D ln 2), D = 784, no further offset): the dequantised models' log weights hold
the -D log 256 change of variables, the discretised-logistic VAE is a probability mass
function, and the discretised bound integrates the Gaussian decoder over each pixel's bin.
Each bound is importance-sampled with K samples per test point (Burda et al. 2015,
eq. 8; over (u, z) jointly for the dequantised VAE, over z for the discretised one),
so at equal K: discretised >= variational >= uniform for one trained density (the last
step in expectation, when q(u | k) has learned anything).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import pyro
import torch
from pyro.infer import Trace_ELBO

from lvm_pyro.data import load_dataset
from lvm_pyro.guides import CompositeGuide, UniformDequantizer
from lvm_pyro.inference import log_marginal_likelihood
from lvm_pyro.inference.discretized import discretized_log_likelihood
from lvm_pyro.models import DequantizedModel
from lvm_pyro.training import Trainer
from lvm_pyro.training.builders import build_model

RESULTS = Path(__file__).resolve().parent / "results"
ROWS = {  # name: (model config, description)
    "flow_uniform": ({"model": "flow", "dequantization": "uniform"}, ("flow", "uniform")),
    "flow_variational": ({"model": "flow", "dequantization": "variational"},
                         ("flow", "variational")),
    "vae_uniform": ({"model": "vae", "likelihood": "gaussian", "dequantization": "uniform"},
                    ("VAE (Gaussian decoder)", "uniform")),
    "vae_variational": ({"model": "vae", "likelihood": "gaussian",
                         "dequantization": "variational"},
                        ("VAE (Gaussian decoder)", "variational")),
    "vae_dlogistic": ({"model": "vae", "likelihood": "discretized_logistic"},
                      ("VAE (discretised logistic, reference)", "none (discrete likelihood)")),
}
LEVELS = 256


def _bound(fn, x: torch.Tensor, batch: int) -> torch.Tensor:
    """Per-test-point bound (n,), nats, evaluated in batches."""
    return torch.cat([fn(x[s:s + batch]) for s in range(0, len(x), batch)])


def _summary(log_p: torch.Tensor, num_dims: int) -> dict:
    lp = log_p.double()
    scale = num_dims * math.log(2.0)
    nll = float(-lp.mean())
    se = float(lp.std() / math.sqrt(len(lp)))
    return {"nll_nats": nll, "nll_se_nats": se, "bits_per_dim": nll / scale,
            "bits_per_dim_se": se / scale}


def run_row(name: str, a, x_train: torch.Tensor, x_test: torch.Tensor) -> dict:
    config, _ = ROWS[name]
    cfg = {**config, "data": "fashion-mnist", "binarization": "none", "seed": a.seed,
           "batch_size": a.batch_size, "lr": a.lr, "epochs": a.epochs}
    if config["model"] == "flow":
        cfg.update({"num_scales": a.num_scales, "num_couplings": a.num_couplings,
                    "hidden_channels": a.hidden_channels})
    else:
        cfg.update({"z_dim": a.z_dim, "hidden_dim": a.hidden_dim})
    pyro.clear_param_store()
    pyro.set_rng_seed(a.seed)
    model, guide = build_model(cfg, x_train.shape[1:])
    trainer = Trainer(model, guide, Trace_ELBO(), lr=a.lr, batch_size=a.batch_size, seed=a.seed,
                      binarization="none", progress=False)
    t0, c0 = time.perf_counter(), time.process_time()
    history = trainer.fit(x_train, a.epochs)
    train_seconds, train_cpu = time.perf_counter() - t0, time.process_time() - c0
    num_dims = int(math.prod(x_test.shape[1:]))
    K, chunk = a.num_samples, a.chunk_size
    out = {"config": cfg, "train_seconds": train_seconds, "train_cpu_seconds": train_cpu,
           "train_loss_per_epoch": [h["loss"] for h in history]}
    t0, c0 = time.perf_counter(), time.process_time()
    pyro.set_rng_seed(a.eval_seed)
    bounds = {}
    with torch.no_grad():
        bounds["model"] = _bound(lambda xb: log_marginal_likelihood(
            model, guide, xb, K, chunk_size=chunk), x_test, a.eval_batch)
        if config.get("dequantization") == "variational":  # the same density, q(u | k) = U
            if config["model"] == "flow":
                uniform_guide = UniformDequantizer()
            else:
                uniform_guide = CompositeGuide(UniformDequantizer(), guide._programs[1])
            bounds["same_density_uniform"] = _bound(lambda xb: log_marginal_likelihood(
                model, uniform_guide, xb, K, chunk_size=chunk), x_test, a.eval_batch)
        if isinstance(model, DequantizedModel) and config["model"] == "vae":
            encoder = guide._programs[1]  # q(z | k) of the CompositeGuide (q(u | k), q(z | k))
            bounds["discretized"] = _bound(lambda xb: discretized_log_likelihood(
                model.density_model, encoder, xb, LEVELS, K, chunk_size=chunk),
                x_test, a.eval_batch)
    out["eval_seconds"] = time.perf_counter() - t0
    out["eval_cpu_seconds"] = time.process_time() - c0
    out["bounds"] = {k: _summary(v, num_dims) for k, v in bounds.items()}
    if "discretized" in bounds:  # per-point ordering of the same density's bounds
        ref = bounds["discretized"]
        out["fraction_discretized_ge"] = {
            k: float((ref >= v).double().mean()) for k, v in bounds.items() if k != "discretized"}
    return out


def _fmt(b: dict | None) -> str:
    return "" if b is None else f"{b['bits_per_dim']:.3f} +- {b['bits_per_dim_se']:.3f}"


def write_markdown(summary: dict, path: Path) -> None:
    s = summary["settings"]
    lines = [
        "# Dequantisation on 8-bit Fashion-MNIST (benchmarks/run_dequantization_results.py)",
        "",
        f"Training: the first {s['num_train']} training images (8-bit levels), {s['epochs']} "
        f"epoch(s), batch {s['batch_size']}, Adam lr {s['lr']}, Trace_ELBO (one sample), seed "
        f"{s['seed']}, one CPU thread. Flow: {s['num_scales']} scales x {s['num_couplings']} "
        f"affine couplings, {s['hidden_channels']} hidden channels. VAE: MLP 2 x "
        f"{s['hidden_dim']} tanh, z_dim {s['z_dim']}. Variational dequantiser: the CLI's "
        "(`VariationalDequantizer`, CNN context, one affine autoregressive layer). "
        f"Test: importance-sampled bound with K = {s['num_samples']} on the first "
        f"{s['num_test']} test images; bits/dim of the discrete 8-bit data (offset D log 256 "
        "inside the bound), +- one standard error over test points. A short CPU budget: "
        "far from converged; the numbers compare bounds, not the models' best likelihoods.",
        "",
        "| model | dequantisation | test bits/dim (bound) | same density, uniform q | "
        "same density, discretised | train CPU s | eval CPU s |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, row in summary["rows"].items():
        model, deq = ROWS[name][1]
        b = row["bounds"]
        lines.append(f"| {model} | {deq} | {_fmt(b['model'])} | "
                     f"{_fmt(b.get('same_density_uniform'))} | {_fmt(b.get('discretized'))} | "
                     f"{row['train_cpu_seconds']:.0f} | {row['eval_cpu_seconds']:.0f} |")
    lines += [
        "",
        "Columns: *test bits/dim (bound)*: the trained model with its own guide (for the "
        "dequantised models q(u | k), with the VAE's encoder); *same density, uniform q*: the "
        "same trained density with q(u | k) = U[0, 1)^D (the uniform dequantisation bound); "
        "*same density, discretised*: the VAE's Gaussian decoder integrated over each "
        "pixel's bin (`lvm_pyro.inference.discretized_log_likelihood`, exact given z, "
        "importance sampling over z). Lower bits/dim = tighter bound.",
        "",
        f"Total {summary['total_cpu_seconds']:.0f} s of CPU time ({summary['total_seconds']:.0f} s "
        "wall on the shared machine).",
    ]
    path.write_text("\n".join(lines) + "\n")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS))
    p.add_argument("--num-train", type=int, default=10000)
    p.add_argument("--num-test", type=int, default=300)
    p.add_argument("--num-samples", type=int, default=16, help="importance samples K")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num-scales", type=int, default=2)
    p.add_argument("--num-couplings", type=int, default=2)
    p.add_argument("--hidden-channels", type=int, default=32)
    p.add_argument("--z-dim", type=int, default=32)
    p.add_argument("--hidden-dim", type=int, default=200)
    p.add_argument("--eval-seed", type=int, default=1, help="seed of the importance samples")
    p.add_argument("--eval-batch", type=int, default=50)
    p.add_argument("--chunk-size", type=int, default=8, help="particles per evaluation pass")
    p.add_argument("--out", default=str(RESULTS), help="folder for dequant_results.{json,md}")
    a = p.parse_args()
    torch.set_num_threads(1)
    t_all, c_all = time.perf_counter(), time.process_time()
    x_train = load_dataset("fashion-mnist", "train").images[:a.num_train]
    x_test = load_dataset("fashion-mnist", "test").images[:a.num_test]
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    settings = {k: v for k, v in vars(a).items() if k not in ("out", "rows")}
    summary = {"settings": settings, "rows": {}}
    previous = out / "dequant_results.json"
    if previous.exists():  # keep the rows not rerun from a run with the same settings
        old = json.loads(previous.read_text())
        if old.get("settings") == settings:
            summary["rows"] = {k: v for k, v in old["rows"].items() if k not in a.rows}
            c_all -= old.get("total_cpu_seconds", 0.0)  # the kept rows' time counts
            t_all -= old.get("total_seconds", 0.0)
    for name in a.rows:
        row = run_row(name, a, x_train, x_test)
        summary["rows"][name] = row
        summary["rows"] = {k: summary["rows"][k] for k in ROWS if k in summary["rows"]}
        bits = {k: round(v["bits_per_dim"], 4) for k, v in row["bounds"].items()}
        print(f"{name}: bits/dim {bits}, train {row['train_seconds']:.0f} s, "
              f"eval {row['eval_seconds']:.0f} s", flush=True)
        summary["total_seconds"] = time.perf_counter() - t_all
        summary["total_cpu_seconds"] = time.process_time() - c_all
        (out / "dequant_results.json").write_text(json.dumps(summary, indent=2))
        write_markdown(summary, out / "dequant_results.md")
    summary["versions"] = {"torch": torch.__version__, "pyro": pyro.__version__}
    (out / "dequant_results.json").write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
