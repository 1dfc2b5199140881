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
``diag_sbc.png`` into the run directory (or ``out``). A section that does not apply to
the model (a :class:`~lvm_pyro.diagnostics.NotApplicableError`, e.g. NUTS on discrete
codes) or that was not asked for (0 points / simulations) is recorded as
``{"skipped": reason}``; any other error stops the run before anything is written, so a
complete ``diagnostics.json`` is never replaced by a partial one.
"""

from __future__ import annotations

import json
import math
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np
import pyro
import torch

from .config import DiagnoseConfig

__all__ = ["diagnose_run", "resolve_latent", "DIAGNOSTICS_FILE"]

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


class _NotRequested(Exception):
    """A section switched off by its settings (0 points / simulations)."""


def _select_by_khat(khat: torch.Tensor, n: int) -> list[int]:
    """n indices spanning the k-hat range: the worst, evenly spaced quantiles, the best."""
    order = torch.argsort(torch.nan_to_num(khat, neginf=-1e9), descending=True)
    if n >= len(order):
        return order.tolist()
    pos = np.unique(np.linspace(0, len(order) - 1, n).round().astype(int))
    return [int(order[p]) for p in pos]


def resolve_latent(guide, x, latent: Optional[str] = None) -> str:
    """The latent site to diagnose: ``latent`` when the guide samples it; by default the
    first of the site vocabulary's latents (``"z"``, then ``"codes"``) the guide has, else
    its only latent site.

    Raises:
        ValueError: the guide has no site ``latent`` (the message lists its latent
            sites), or no default can be chosen.
    """
    from ..inference.program import latent_sites, trace_program
    from ..sites import CODES, LATENT

    with torch.no_grad():
        tr = trace_program(guide, x)
    sites = [n for n, _ in latent_sites(tr)]
    if latent is not None:
        if latent not in sites:
            raise ValueError(f"the guide has no latent site {latent!r}; its latent sites: {sites}")
        return latent
    for name in (LATENT, CODES):
        if name in sites:
            return name
    if len(sites) == 1:
        return sites[0]
    raise ValueError(f"the guide has latent sites {sites}; name the one to diagnose")


def diagnose_run(run_dir: str | Path, config: Optional[DiagnoseConfig] = None, *,
                 out: Optional[str | Path] = None, latent: Optional[str] = None, log=print,
                 data_root: Optional[str | Path] = None) -> dict:
    """Run every diagnostic on a run directory and write ``diagnostics.json`` and figures.

    Args:
        run_dir: a directory made by ``lvm-pyro fit``.
        config: the numbers of test points, draws, NUTS chains and SBC simulations
            (:class:`~lvm_pyro.training.config.DiagnoseConfig`; default its defaults):
            ``num_test`` points for k-hat / ESS / log p(x) and the KL per dimension with
            ``num_samples`` guide draws each; ``num_mi_points`` points M of the aggregate
            posterior (MI capped at log M); ``num_au_points`` for active units (default:
            the whole test split); ``nuts_points`` with a NUTS reference of
            ``nuts_chains`` x (``nuts_warmup`` + ``nuts_samples``); ``sbc_simulations``
            with ``sbc_draws`` guide draws each; ``seed`` seeds Pyro's RNGs once.
            A section with 0 points / simulations is recorded as not requested.
        out: where to write (default ``run_dir``).
        latent: the guide's latent site (default: :func:`resolve_latent`).
        log: callable for progress lines (``None``: silent).
        data_root: override where the run's data are read from.

    Returns:
        the dict written to ``diagnostics.json`` (non-finite numbers as ``null``).

    Raises:
        CheckpointError: not a run directory (from :func:`load_run`).
        ValueError: an unknown latent site, or any error of a diagnostic other than
            :class:`~lvm_pyro.diagnostics.NotApplicableError`; nothing is written then.
    """
    from .run import load_run, prepare_data

    c = DiagnoseConfig() if config is None else config
    num_test, num_samples, num_mi_points = c.num_test, c.num_samples, c.num_mi_points
    num_au_points, nuts_points, nuts_chains = c.num_au_points, c.nuts_points, c.nuts_chains
    nuts_warmup, nuts_samples = c.nuts_warmup, c.nuts_samples
    sbc_simulations, sbc_draws, seed = c.sbc_simulations, c.sbc_draws, c.seed
    say = log or (lambda *a, **k: None)
    run_dir = Path(run_dir)
    out = Path(out) if out is not None else run_dir
    model, guide, config, _ = load_run(run_dir, data_root=data_root)
    x_all = prepare_data(config, "test", config["device"])
    latent = resolve_latent(guide, x_all[:2], latent)
    out.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=".diagnose-", dir=out))  # figures land here first
    try:
        return _diagnose(model, guide, config, x_all, out, stage, run_dir=run_dir,
                         num_test=num_test, num_samples=num_samples,
                         num_mi_points=num_mi_points, num_au_points=num_au_points,
                         nuts_points=nuts_points, nuts_chains=nuts_chains,
                         nuts_warmup=nuts_warmup, nuts_samples=nuts_samples,
                         sbc_simulations=sbc_simulations, sbc_draws=sbc_draws, seed=seed,
                         latent=latent, say=say)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def _diagnose(model, guide, config, x_all, out: Path, stage: Path, *, run_dir: Path,
              num_test, num_samples, num_mi_points, num_au_points, nuts_points, nuts_chains,
              nuts_warmup, nuts_samples, sbc_simulations, sbc_draws, seed, latent, say) -> dict:
    from .. import diagnostics as D
    from ..diagnostics import plots
    from .run import _versions

    pyro.set_rng_seed(seed)
    result: dict[str, Any] = {"run_dir": str(run_dir), "config": config, "seed": seed,
                              "latent": latent,
                              "versions": _versions(), "figures": {}, "seconds": {}}

    def section(name, fn):
        t0 = time.perf_counter()
        try:
            result[name] = fn()
        except D.NotApplicableError as e:  # only a diagnostic that does not apply is skipped
            result[name] = {"skipped": f"not applicable: {e}"}
            say(f"[{name}] skipped: {e}")
        except _NotRequested as e:
            result[name] = {"skipped": f"not requested ({e})"}
        result["seconds"][name] = time.perf_counter() - t0

    x = x_all[:num_test]
    state: dict[str, Any] = {}

    def importance():
        d = D.importance_diagnostics(model, guide, x, num_samples=num_samples)
        state["khat"] = d.khat
        s = d.summary()
        s["per_datapoint"] = {"khat": d.khat, "ess": d.ess, "log_marginal": d.log_marginal}
        s["nll_mean"] = -s["log_marginal_mean"]
        plots.plot_khat_histogram(d.khat, d.num_samples, path=stage / "diag_khat.png")
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
        plots.plot_kl_per_dimension(kl, active=au.active, path=stage / "diag_kl.png")
        result["figures"]["kl"] = "diag_kl.png"
        info = {
            "kl_per_dimension": kl.double().mean(0), "kl_total": float(kl.double().sum(-1).mean()),
            "active_units": au.num_active, "num_dims": int(au.active.numel()),
            "active_unit_variance": au.variance, "active_unit_threshold": au.threshold,
            "num_active_unit_points": int(xa.shape[0]),
            "decomposition": dec._asdict(), "log_num_mi_points": math.log(dec.num_points),
        }
        # the identity's three terms come from one set of draws on the same M points, so
        # it holds exactly (up to rounding); the closed-form E KL is printed apart
        say(f"[information] active units {au.num_active}/{au.active.numel()}; on M = "
            f"{dec.num_points} test points, the same draws: E KL {dec.average_kl_mc:.2f} = MI "
            f"{dec.mutual_information:.2f} + KL(q(z)||p(z)) {dec.marginal_kl:.2f} nats (MI <= "
            f"{dec.mutual_information_upper:.2f} leave-one-out, log M = "
            f"{math.log(dec.num_points):.2f}; E KL in closed form {dec.average_kl:.2f} nats)")
        return info

    def nuts():
        if nuts_points <= 0:
            raise _NotRequested("nuts_points = 0")
        khat = state.get("khat")
        idx = (_select_by_khat(khat, nuts_points) if khat is not None
               else list(range(min(nuts_points, len(x)))))
        xs = x[idx]
        ref = D.nuts_reference(model, xs, guide=guide, num_samples=nuts_samples,
                               warmup_steps=nuts_warmup, num_chains=nuts_chains, latent=latent,
                               seed=seed, datapoint_index=idx)
        cmp = D.compare_to_reference(model, guide, xs, ref, latent=latent)
        labels = [f"test {i}" + ("" if khat is None else f", k-hat {float(khat[i]):.2f}")
                  for i in idx]
        plots.plot_guide_vs_reference(ref, cmp, x=xs, labels=labels, path=stage / "diag_nuts.png")
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
            raise _NotRequested("sbc_simulations = 0")
        res = D.simulation_based_calibration(model, guide, x_all[:sbc_simulations],
                                             num_draws=sbc_draws, latent=latent)
        plots.plot_sbc_ranks(res, path=stage / "diag_sbc.png")
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
    for name in result["figures"].values():  # every section finished: publish the figures
        (stage / name).replace(out / name)
    path = out / DIAGNOSTICS_FILE
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=1, allow_nan=False))
    tmp.replace(path)
    say(f"written: {path} and figures {sorted(result['figures'].values())}")
    return result
