"""Data-parallel training throughput: 1 vs N processes, the gradient all-reduce's time per
step and size, and a *model* of scaling to more machines built from those measurements.

    python benchmarks/bench_ddp.py                        # CPU, 1 and 2 processes, gloo
    python benchmarks/bench_ddp.py --device cuda --procs 1 2 4   # 1 GPU x N processes

Each process runs one torch thread and trains the default VAE (``lvm-pyro fit``'s
``vae``: MLP, z_dim 32) with Trace_ELBO on ``--rows`` rows of Fashion-MNIST (the bundled
digits when it is absent) with a global batch of ``--batch-size``; throughput is rows per
second of the epochs after the first (which pays for start-up), measured by rank 0.

Writes ``benchmarks/results/ddp_<device>.json`` and ``.md`` (with ``uptime``: the machine
may be shared).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lvm_pyro.training.distributed import launch_local  # noqa: E402


def _data(name: str, rows: int) -> torch.Tensor:
    from lvm_pyro.data import DatasetNotFoundError, load_dataset
    try:
        return load_dataset(name, "train").images[:rows]
    except DatasetNotFoundError:
        return load_dataset("digits", "train").images[:rows]


def worker(ctx, data: str, rows: int, batch_size: int, epochs: int, device: str) -> dict:
    """Train the default VAE for ``epochs`` epochs; timings of rank ``ctx.rank``."""
    import pyro
    from pyro.infer import Trace_ELBO

    from lvm_pyro.training import Trainer
    from lvm_pyro.training.builders import build_model

    if device.startswith("cuda"):
        device = f"cuda:{torch.cuda.current_device()}"
    x = _data(data, rows).to(device)
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    model, guide = build_model({"model": "vae"}, x.shape[1:])
    model.to(device), guide.to(device)
    t = Trainer(model, guide, Trace_ELBO(), batch_size=batch_size, progress=False,
                divergence_tolerance=None, distributed=ctx)
    t.fit(x, epochs)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    seconds = [h["seconds"] for h in t.history[1:]] or [t.history[0]["seconds"]]
    n_params = sum(p.numel() for g in t.optimizer.param_groups for p in g["params"])
    steps = math.ceil(len(x) / batch_size)
    return {"rank": ctx.rank, "epoch_seconds": seconds, "rows": len(x), "steps_per_epoch": steps,
            "images_per_s": len(x) * len(seconds) / sum(seconds),
            "allreduce_s_per_step": (ctx.allreduce_seconds / ctx.allreduce_calls
                                     if ctx.allreduce_calls else 0.0),
            "allreduce_bytes": ctx.allreduce_bytes, "num_parameters": n_params,
            "loss": t.history[-1]["loss"]}


def scaling_model(t_image: float, t_fixed: float, grad_bytes: int, batch: int,
                  workers: list[int], bandwidth: float, latency: float) -> list[dict]:
    """MODEL (not a measurement): step time on W machines with one process each,

        T(W) = t_fixed + t_image * B / W + T_ar(W),
        T_ar(W) = 2 (W - 1) latency + 2 (W - 1) / W * S / bandwidth   (ring all-reduce)

    with t_image the measured compute seconds per image, t_fixed the measured per-step
    overhead, S the gradient bytes per step (measured), and the network's ``bandwidth``
    (bytes/s) and ``latency`` (s per message) assumed."""
    rows = []
    for w in workers:
        t_ar = 2 * (w - 1) * latency + 2 * (w - 1) / w * grad_bytes / bandwidth if w > 1 else 0.0
        step = t_fixed + t_image * batch / w + t_ar
        rows.append({"workers": w, "step_s": step, "allreduce_s": t_ar,
                     "images_per_s": batch / step})
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--procs", type=int, nargs="+", default=[1, 2])
    p.add_argument("--data", default="fashion-mnist")
    p.add_argument("--rows", type=int, default=6000)
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    a = p.parse_args()
    runs = {}
    for w in a.procs:
        t0 = time.perf_counter()
        res = launch_local(worker, w, a.data, a.rows, a.batch_size, a.epochs, a.device,
                           timeout=600.0, device=a.device)
        bad = [v for s, v in res if s != "ok"]
        if bad:
            raise SystemExit(f"{w} processes failed: {bad}")
        runs[w] = [v for _, v in res]
        r0 = runs[w][0]
        print(f"{w} process(es): {r0['images_per_s']:.0f} images/s, all-reduce "
              f"{1e3 * r0['allreduce_s_per_step']:.2f} ms/step of {r0['allreduce_bytes'] / 1e6:.2f} MB "
              f"({time.perf_counter() - t0:.0f} s with start-up)", flush=True)
    uptime = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    one = runs[min(runs)][0]
    t_image = 1.0 / one["images_per_s"]  # one process: compute only
    grad_bytes = max(r[0]["allreduce_bytes"] for r in runs.values())
    model_rows = {
        "assumptions": "one process per machine; the single-process compute time per image "
                       "measured here, no per-step overhead beyond it; ring all-reduce of the "
                       "measured gradient bytes; network 10 Gbit/s (1.25e9 B/s), 50 us per "
                       "message (assumed, not measured)",
        "rows": scaling_model(t_image, 0.0, grad_bytes, a.batch_size, [1, 2, 4, 8, 16, 32],
                              1.25e9, 50e-6)}
    result = {"device": a.device, "data": a.data, "rows": one["rows"], "batch_size": a.batch_size,
              "epochs": a.epochs, "threads_per_process": 1, "uptime": uptime,
              "machine": platform.platform(), "cpu_count": __import__("os").cpu_count(),
              "torch": torch.__version__,
              "measured": {str(w): r for w, r in runs.items()},
              "scaling_MODEL_not_measured": model_rows}
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    tag = a.device.split(":")[0]
    (out / f"ddp_{tag}.json").write_text(json.dumps(result, indent=2))
    lines = [f"# Data-parallel throughput ({a.device}, {a.data}, {one['rows']} rows, global batch "
             f"{a.batch_size}, 1 thread per process)", "", f"`uptime`: {uptime}", "",
             "| processes | images/s (rank 0, epochs 2+) | all-reduce ms/step | all-reduce MB/step |",
             "|---|---|---|---|"]
    for w, r in runs.items():
        lines.append(f"| {w} | {r[0]['images_per_s']:.0f} | {1e3 * r[0]['allreduce_s_per_step']:.2f} | "
                     f"{r[0]['allreduce_bytes'] / 1e6:.3f} |")
    lines += ["", "## Scaling MODEL (computed from the measurements above, not measured)", "",
              model_rows["assumptions"], "",
              "| machines | modelled step s | modelled all-reduce s | modelled images/s |",
              "|---|---|---|---|"]
    for r in model_rows["rows"]:
        lines.append(f"| {r['workers']} | {r['step_s']:.4f} | {r['allreduce_s']:.5f} | "
                     f"{r['images_per_s']:.0f} |")
    (out / f"ddp_{tag}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
