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
    marks = []  # (wall, this process's CPU seconds) at the end of every epoch

    def mark(trainer, metrics):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        marks.append((time.perf_counter(), time.process_time()))

    t = Trainer(model, guide, Trace_ELBO(), batch_size=batch_size, progress=False,
                divergence_tolerance=None, distributed=ctx, callbacks=[mark])
    t.fit(x, epochs)
    seconds = [h["seconds"] for h in t.history[1:]] or [t.history[0]["seconds"]]
    cpu = marks[-1][1] - marks[0][1] if len(marks) > 1 else float("nan")
    n_params = sum(p.numel() for g in t.optimizer.param_groups for p in g["params"])
    pure = None
    if ctx.enabled:  # the all-reduce alone, ranks lined up by a barrier first
        import torch.distributed as dist
        buf = torch.zeros(n_params, device=device)
        times = []
        for _ in range(20):
            ctx.barrier()
            t0 = time.perf_counter()
            dist.all_reduce(buf)
            times.append(time.perf_counter() - t0)
        pure = sorted(times)[len(times) // 2]
    steps = math.ceil(len(x) / batch_size)
    return {"rank": ctx.rank, "epoch_seconds": seconds, "rows": len(x), "steps_per_epoch": steps,
            "images_per_s": len(x) * len(seconds) / sum(seconds),
            "cpu_s_per_image": cpu / (len(x) * (len(marks) - 1)) if len(marks) > 1 else None,
            "allreduce_s_per_step": (ctx.allreduce_seconds / ctx.allreduce_calls
                                     if ctx.allreduce_calls else 0.0),
            "allreduce_bytes": ctx.allreduce_bytes, "num_parameters": n_params,
            "allreduce_alone_s_median": pure,
            "loss": t.history[-1]["loss"]}


def scaling_model(t_image: float, t_fixed: float, grad_bytes: int, batch: int,
                  workers: list[int], bandwidth: float, latency: float) -> list[dict]:
    """MODEL (not a measurement): step time on W machines with one process each,

        T(W) = t_fixed + t_image * B / W + T_ar(W),
        T_ar(W) = 2 (W - 1) latency + 2 (W - 1) / W * S / bandwidth   (ring all-reduce)

    (strong scaling: the global batch B fixed) and, with B rows per machine (weak scaling),
    T_weak(W) = t_fixed + t_image * B + T_ar(W) for W * B images; t_image the measured
    compute seconds per image, t_fixed the measured per-step overhead, S the gradient bytes per step (measured), and the network's ``bandwidth``
    (bytes/s) and ``latency`` (s per message) assumed."""
    rows = []
    for w in workers:
        t_ar = 2 * (w - 1) * latency + 2 * (w - 1) / w * grad_bytes / bandwidth if w > 1 else 0.0
        step = t_fixed + t_image * batch / w + t_ar
        weak = t_fixed + t_image * batch + t_ar  # batch rows per worker, W * batch per step
        rows.append({"workers": w, "step_s": step, "allreduce_s": t_ar,
                     "images_per_s": batch / step, "weak_step_s": weak,
                     "weak_images_per_s": w * batch / weak})
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--procs", type=int, nargs="+", default=[1, 2])
    p.add_argument("--data", default="fashion-mnist")
    p.add_argument("--rows", type=int, default=6000)
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--repeats", type=int, default=1,
                   help="alternate the process counts this many times (a loaded machine)")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    p.add_argument("--report-only", metavar="JSON",
                   help="rewrite the tables (and the scaling model) from a result file")
    a = p.parse_args()
    if a.report_only:
        _write_report(json.loads(Path(a.report_only).read_text()), Path(a.out))
        return
    runs, repeats = {}, {}
    for w in [w for _ in range(a.repeats) for w in a.procs]:
        t0 = time.perf_counter()
        res = launch_local(worker, w, a.data, a.rows, a.batch_size, a.epochs, a.device,
                           timeout=600.0, device=a.device)
        bad = [v for s, v in res if s != "ok"]
        if bad:
            raise SystemExit(f"{w} processes failed: {bad}")
        repeats.setdefault(w, []).append([v for _, v in res])
        # the median repeat by rank 0's throughput
        ordered = sorted(repeats[w], key=lambda r: r[0]["images_per_s"])
        runs[w] = ordered[len(ordered) // 2]
        r0 = res[0][1]
        print(f"{w} process(es): {r0['images_per_s']:.0f} images/s, "
              f"{1e3 * r0['cpu_s_per_image']:.3f} CPU ms/image on rank 0, all-reduce "
              f"{1e3 * r0['allreduce_s_per_step']:.2f} ms/step of {r0['allreduce_bytes'] / 1e6:.2f} MB "
              f"({time.perf_counter() - t0:.0f} s with start-up)", flush=True)
    # calibration: one process at half the batch separates the per-step overhead from the
    # per-image compute (CPU seconds per step = t_fixed + t_image * batch)
    half = max(1, a.batch_size // 2)
    cal = launch_local(worker, 1, a.data, a.rows, half, a.epochs, a.device, timeout=600.0,
                       device=a.device)
    if cal[0][0] != "ok":
        raise SystemExit(f"calibration failed: {cal}")
    step_full = runs[min(runs)][0]["cpu_s_per_image"] * a.batch_size
    step_half = cal[0][1]["cpu_s_per_image"] * half
    t_image = max(0.0, (step_full - step_half) / (a.batch_size - half))
    t_fixed = max(0.0, step_full - t_image * a.batch_size)
    uptime = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    one = runs[min(runs)][0]
    grad_bytes = max(r[0]["allreduce_bytes"] for r in runs.values())
    model_rows = {
        "assumptions": f"one process per machine, each as fast as one process here with a "
                       f"core to itself: step = t_fixed + t_image * B / W (strong scaling; "
                       f"weak scaling: t_fixed + t_image * B with B rows per machine) with t_fixed = "
                       f"{1e3 * t_fixed:.2f} ms and t_image = {1e6 * t_image:.1f} us from the CPU "
                       f"time of 1 process at batch {a.batch_size} and {half} (not its wall "
                       f"time on this loaded machine); plus a ring all-reduce of the "
                       "measured gradient bytes; network 10 Gbit/s (1.25e9 B/s), 50 us per "
                       "message (assumed, not measured)",
        "calibration": {"t_fixed_s": t_fixed, "t_image_s": t_image,
                        "cpu_s_per_step_batch_full": step_full, "cpu_s_per_step_batch_half": step_half},
        "rows": []}  # filled by _write_report
    result = {"device": a.device, "data": a.data, "rows": one["rows"], "batch_size": a.batch_size,
              "epochs": a.epochs, "threads_per_process": 1, "uptime": uptime,
              "machine": platform.platform(), "cpu_count": __import__("os").cpu_count(),
              "torch": torch.__version__,
              "measured": {str(w): r for w, r in runs.items()},
              "repeats": {str(w): [[x["images_per_s"] for x in r] for r in rs]
                          for w, rs in repeats.items()},
              "scaling_MODEL_not_measured": model_rows}
    _write_report(result, Path(a.out))


def _write_report(result: dict, out: Path) -> None:
    """``ddp_<device>.json`` and ``.md`` from a result dict (the scaling model recomputed
    from its calibration, so ``--report-only`` can redo the tables)."""
    model_rows = result["scaling_MODEL_not_measured"]
    cal = model_rows["calibration"]
    runs = {int(w): r for w, r in result["measured"].items()}
    grad_bytes = max(r[0]["allreduce_bytes"] for r in runs.values())
    model_rows["rows"] = scaling_model(cal["t_image_s"], cal["t_fixed_s"], grad_bytes,
                                       result["batch_size"], [1, 2, 4, 8, 16, 32], 1.25e9, 50e-6)
    out.mkdir(parents=True, exist_ok=True)
    tag = result["device"].split(":")[0]
    (out / f"ddp_{tag}.json").write_text(json.dumps(result, indent=2))
    repeats = result["repeats"]
    lines = [f"# Data-parallel throughput ({result['device']}, {result['data']}, {result['rows']} "
             f"rows, global batch {result['batch_size']}, 1 thread per process)", "",
             f"`uptime`: {result['uptime']}", "",
             f"Median of {len(next(iter(repeats.values())))} alternating repeat(s); images/s is "
             "wall-clock throughput of the whole job (rank 0's epochs 2+); CPU ms/image is "
             "one rank's CPU time per image it trained on, per rank; the all-reduce time "
             "includes waiting for the slower rank; 'alone' is the same all-reduce after a "
             "barrier (median of 20).", "",
             "| processes | images/s | all repeats | CPU ms/image (per rank) | all-reduce ms/step "
             "| all-reduce alone ms | all-reduce MB/step |",
             "|---|---|---|---|---|---|---|"]
    for w, r in runs.items():
        per_rank = ", ".join(f"{1e3 * x['cpu_s_per_image'] * w:.3f}" for x in r)
        every = ", ".join(f"{x[0]:.0f}" for x in repeats[str(w)])
        alone = r[0]["allreduce_alone_s_median"]
        alone_ms = "-" if alone is None else f"{1e3 * alone:.2f}"
        lines.append(f"| {w} | {r[0]['images_per_s']:.0f} | {every} | {per_rank} | "
                     f"{1e3 * r[0]['allreduce_s_per_step']:.2f} | {alone_ms} | "
                     f"{r[0]['allreduce_bytes'] / 1e6:.3f} |")
    lines += ["", "## Scaling MODEL (computed from the measurements above, not measured)", "",
              model_rows["assumptions"], "",
              f"| machines | strong: step s (B = {result['batch_size']} in all) | modelled "
              f"all-reduce s | strong: images/s | weak: step s (B per machine) | weak: images/s |",
              "|---|---|---|---|---|---|"]
    for r in model_rows["rows"]:
        lines.append(f"| {r['workers']} | {r['step_s']:.4f} | {r['allreduce_s']:.5f} | "
                     f"{r['images_per_s']:.0f} | {r['weak_step_s']:.4f} | "
                     f"{r['weak_images_per_s']:.0f} |")
    (out / f"ddp_{tag}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
