"""``lvm-pyro diagnose RUN_DIR``: posterior diagnostics of a trained run.

Loads the run (:func:`lvm_pyro.training.load_run`) and its test split
(:func:`lvm_pyro.training.run.prepare_data`), then runs :mod:`lvm_pyro.diagnostics`:

1. PSIS k-hat, importance ESS and log p(x) per test point (``--num-test`` points,
   ``--num-samples`` guide draws each);
2. KL per latent dimension, active units (whole test split), mutual information and the
   KL decomposition (``--num-mi-points`` points);
3. NUTS reference posteriors for ``--nuts-points`` test points (chosen to span the k-hat
   range, worst first) and the guide against them;
4. simulation-based calibration (``--sbc-simulations`` simulations).

Writes ``diagnostics.json`` and ``diag_khat.png``, ``diag_kl.png``, ``diag_nuts.png``,
``diag_sbc.png`` into the run directory (or ``--out``). A section that does not apply to
the model (e.g. NUTS on discrete codes) is recorded as ``{"skipped": reason}``.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np
import pyro
import torch

__all__ = ["diagnose_run", "add_arguments", "run", "DIAGNOSTICS_FILE"]

DIAGNOSTICS_FILE = "diagnostics.json"


def _clean(obj: Any) -> Any:
    """JSON-able copy: tensors/arrays to lists, non-finite floats to None."""
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, torch.Tensor):
        return _clean(obj.detach().cpu().tolist())
    if isinstance(obj, np.ndarray):
        return _clean(obj.tolist())
    if isinstance(obj, (np.floating, np.integer, np.bool_)):
        return _clean(obj.item())
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def _select_by_khat(khat: torch.Tensor, n: int) -> list[int]:
    """n indices spanning the k-hat range: the worst, evenly spaced quantiles, the best."""
    order = torch.argsort(torch.nan_to_num(khat, neginf=-1e9), descending=True)
    if n >= len(order):
        return order.tolist()
    pos = np.unique(np.linspace(0, len(order) - 1, n).round().astype(int))
    return [int(order[p]) for p in pos]


def diagnose_run(run_dir: str | Path, *, out: Optional[str | Path] = None, num_test: int = 1000,
                 num_samples: int = 1000, num_mi_points: int = 2000,
                 num_au_points: Optional[int] = None, nuts_points: int = 4,
                 nuts_chains: int = 4, nuts_warmup: int = 300, nuts_samples: int = 300,
                 sbc_simulations: int = 1000, sbc_draws: int = 99, seed: int = 0,
                 latent: str = "z", log=print) -> dict:
    """Run every diagnostic on a run directory and write ``diagnostics.json`` and figures.

    Args:
        run_dir: a directory made by ``lvm-pyro fit``.
        out: where to write (default ``run_dir``).
        num_test: test points for k-hat / ESS / log p(x) and the KL per dimension.
        num_samples: guide draws per test point for the importance diagnostics (>= 25).
        num_mi_points: test points M of the aggregate posterior (MI capped at log M).
        num_au_points: test points for active units (default: the whole test split).
        nuts_points: test points with a NUTS reference (0: skip).
        nuts_chains, nuts_warmup, nuts_samples: NUTS chains (sequential), warmup and kept
            draws per chain.
        sbc_simulations: simulations of SBC (0: skip); sbc_draws: guide draws each
            (sbc_draws + 1 divisible by 10).
        seed: seeds Pyro's RNGs once at the start.
        log: callable for progress lines (``None``: silent).

    Returns:
        the dict written to ``diagnostics.json`` (non-finite numbers as ``null``).

    Raises:
        CheckpointError: not a run directory (from :func:`load_run`).
    """
    from .. import diagnostics as D
    from ..diagnostics import plots
    from .run import _versions, load_run, prepare_data

    say = log or (lambda *a, **k: None)
    run_dir = Path(run_dir)
    out = Path(out) if out is not None else run_dir
    out.mkdir(parents=True, exist_ok=True)
    model, guide, config, _ = load_run(run_dir)
    x_all = prepare_data(config, "test", config["device"])
    pyro.set_rng_seed(seed)
    result: dict[str, Any] = {"run_dir": str(run_dir), "config": config, "seed": seed,
                              "versions": _versions(), "figures": {}, "seconds": {}}

    def section(name, fn):
        t0 = time.perf_counter()
        try:
            result[name] = fn()
        except (ValueError, NotImplementedError) as e:
            result[name] = {"skipped": f"{type(e).__name__}: {e}"}
            say(f"[{name}] skipped: {e}")
        result["seconds"][name] = time.perf_counter() - t0

    x = x_all[:num_test]
    state: dict[str, Any] = {}

    def importance():
        d = D.importance_diagnostics(model, guide, x, num_samples=num_samples)
        state["khat"] = d.khat
        s = d.summary()
        s["per_datapoint"] = {"khat": d.khat, "ess": d.ess, "log_marginal": d.log_marginal}
        s["nll_mean"] = -s["log_marginal_mean"]
        plots.plot_khat_histogram(d.khat, d.num_samples, path=out / "diag_khat.png")
        result["figures"]["khat"] = "diag_khat.png"
        med = "-inf (exact)" if s["khat_median"] is None else f"{s['khat_median']:.3f}"
        say(f"[importance] {len(x)} test points, S={num_samples}: k-hat median "
            f"{med}, above 0.5: {s['above_0.5']}, above 0.7: {s['above_0.7']}, "
            f"above threshold {s['threshold']:.2f}: {s['above_threshold']}; mean ESS "
            f"{s['ess_mean']:.1f}; mean log p(x) {s['log_marginal_mean']:.2f} nats")
        return s

    def information():
        kl = D.kl_per_dimension(model, guide, x, latent=latent)  # (num_test, k)
        xa = x_all if num_au_points is None else x_all[:num_au_points]
        au = D.active_units(guide, xa, latent=latent)
        dec = D.kl_decomposition(model, guide, x_all[:num_mi_points], latent=latent)
        plots.plot_kl_per_dimension(kl, active=au.active, path=out / "diag_kl.png")
        result["figures"]["kl"] = "diag_kl.png"
        info = {
            "kl_per_dimension": kl.double().mean(0), "kl_total": float(kl.double().sum(-1).mean()),
            "active_units": au.num_active, "num_dims": int(au.active.numel()),
            "active_unit_variance": au.variance, "active_unit_threshold": au.threshold,
            "num_active_unit_points": int(xa.shape[0]),
            "decomposition": dec._asdict(), "log_num_mi_points": math.log(dec.num_points),
        }
        say(f"[information] active units {au.num_active}/{au.active.numel()}; E KL "
            f"{dec.average_kl:.2f} = MI {dec.mutual_information:.2f} (<= {dec.mutual_information_upper:.2f}; "
            f"log M = {math.log(dec.num_points):.2f}) + KL(q(z)||p(z)) {dec.marginal_kl:.2f} nats")
        return info

    def nuts():
        if nuts_points <= 0:
            raise ValueError("--nuts-points 0")
        khat = state.get("khat")
        idx = (_select_by_khat(khat, nuts_points) if khat is not None
               else list(range(min(nuts_points, len(x)))))
        xs = x[idx]
        ref = D.nuts_reference(model, xs, guide=guide, num_samples=nuts_samples,
                               warmup_steps=nuts_warmup, num_chains=nuts_chains, latent=latent,
                               seed=seed, datapoint_index=idx)
        cmp = D.compare_to_reference(ref, model, guide, xs, latent=latent)
        labels = [f"test {i}" + ("" if khat is None else f", k-hat {float(khat[i]):.2f}")
                  for i in idx]
        plots.plot_guide_vs_reference(ref, cmp, x=xs, labels=labels, path=out / "diag_nuts.png")
        result["figures"]["nuts"] = "diag_nuts.png"
        per = []
        for j, i in enumerate(idx):
            per.append({
                "test_index": i, "khat": None if khat is None else float(khat[i]),
                "rhat_max": float(ref.rhat[j].max()), "ess_bulk_min": float(ref.ess_bulk[j].min()),
                "divergences": ref.divergences[j].tolist(),
                "energy_distance": float(cmp.energy_distance[j]),
                "energy_distance_nuts_halves": float(cmp.energy_distance_chains[j]),
                "abs_mean_error_max_sd": float(cmp.mean_error[j].abs().max()),
                "sd_ratio_min": float(cmp.sd_ratio[j].min()),
                "sd_ratio_median": float(cmp.sd_ratio[j].median()),
                "sd_ratio_max": float(cmp.sd_ratio[j].max()),
            })
        say(f"[nuts] {len(idx)} points x {nuts_chains} chains x ({nuts_warmup}+{nuts_samples}) in "
            f"{ref.seconds:.0f}s; max R-hat {float(ref.rhat.max()):.3f}; energy distance guide vs "
            f"NUTS {[round(p['energy_distance'], 3) for p in per]} (NUTS halves "
            f"{[round(p['energy_distance_nuts_halves'], 3) for p in per]})")
        return {"num_chains": nuts_chains, "warmup_steps": nuts_warmup,
                "num_samples": nuts_samples, "seconds": ref.seconds, "points": per,
                "rhat_max": float(ref.rhat.max()), "ess_bulk_min": float(ref.ess_bulk.min())}

    def sbc():
        if sbc_simulations <= 0:
            raise ValueError("--sbc-simulations 0")
        res = D.simulation_based_calibration(model, guide, x_all[:sbc_simulations],
                                             num_draws=sbc_draws, latent=latent)
        plots.plot_sbc_ranks(res, path=out / "diag_sbc.png")
        result["figures"]["sbc"] = "diag_sbc.png"
        rejected = int((res.pvalues < 0.01).sum())
        say(f"[sbc] {res.ranks.shape[0]} simulations x {sbc_draws} draws: combined p = "
            f"{res.pvalue:.3g}; {rejected}/{res.pvalues.numel()} dims with p < 0.01")
        return {"num_simulations": int(res.ranks.shape[0]), "num_draws": sbc_draws,
                "num_bins": res.num_bins, "pvalue": res.pvalue, "pvalues": res.pvalues,
                "dims_rejected_at_0.01": rejected}

    section("importance", importance)
    section("information", information)
    section("nuts", nuts)
    section("sbc", sbc)
    result = _clean(result)
    path = out / DIAGNOSTICS_FILE
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=1, allow_nan=False))
    tmp.replace(path)
    say(f"written: {path} and figures {sorted(result['figures'].values())}")
    return result


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Options of ``lvm-pyro diagnose`` (see :func:`diagnose_run`)."""
    p.description = "posterior diagnostics of a trained run: PSIS k-hat, KL, MI, NUTS, SBC"
    p.add_argument("run_dir", help="run directory written by `lvm-pyro fit`")
    p.add_argument("--out", default=None, help="output directory (default: RUN_DIR)")
    p.add_argument("--num-test", type=int, default=1000, help="test points for k-hat and KL")
    p.add_argument("--num-samples", type=int, default=1000, help="guide draws per test point (>= 25)")
    p.add_argument("--num-mi-points", type=int, default=2000,
                   help="test points of the aggregate posterior for MI (MI <= log M)")
    p.add_argument("--num-au-points", type=int, default=None,
                   help="test points for active units (default: all)")
    p.add_argument("--nuts-points", type=int, default=4, help="test points with NUTS (0: skip)")
    p.add_argument("--nuts-chains", type=int, default=4)
    p.add_argument("--nuts-warmup", type=int, default=300)
    p.add_argument("--nuts-samples", type=int, default=300)
    p.add_argument("--sbc-simulations", type=int, default=1000, help="0: skip SBC")
    p.add_argument("--sbc-draws", type=int, default=99)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--latent", default="z", help="latent site name")


def run(a: argparse.Namespace) -> int:
    """Entry point of ``lvm-pyro diagnose``."""
    if a.num_samples < 25:
        raise ValueError(f"--num-samples must be >= 25 (the Pareto fit needs 5 tail draws), "
                         f"got {a.num_samples}")
    diagnose_run(a.run_dir, out=a.out, num_test=a.num_test, num_samples=a.num_samples,
                 num_mi_points=a.num_mi_points, num_au_points=a.num_au_points,
                 nuts_points=a.nuts_points, nuts_chains=a.nuts_chains,
                 nuts_warmup=a.nuts_warmup, nuts_samples=a.nuts_samples,
                 sbc_simulations=a.sbc_simulations, sbc_draws=a.sbc_draws, seed=a.seed,
                 latent=a.latent)
    return 0
