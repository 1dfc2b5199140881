"""Stage two of a VQ-VAE run: fit a gated PixelCNN prior over the encoder's code grids,
report the two-stage bound, and draw prior samples (``lvm-pyro fit-prior RUN_DIR``).

Files written into the run directory:

* ``prior_checkpoint.pt``: the prior's weights, optimiser and RNG states (the generic
  :class:`~lvm_pyro.training.loop.Trainer` checkpoint) with the prior's hyper-parameters
  in its ``config``;
* ``prior_metrics.json``: prior NLL of the test codes (nats per grid and bits per code),
  the two-stage bound on log p(x) (nats per example and bits/dim), the same bound with the
  VQ-VAE's uniform code prior for comparison, training curve and timings;
* ``prior_samples.png``: prior samples decoded to images; ``prior_vs_reconstructions.png``:
  decoded prior samples (left) next to test reconstructions (right).

The two-stage bound (van den Oord et al. 2017, Sec. 3.3 and the lecture's Sec. 8): with
the guide a point mass at the encoder's nearest codes c(x), the importance weight with one
particle is ``log p(x | z_q(c(x))) + log p_prior(c(x)) <= log p(x)``, computed by the
library's engine on the VQ-VAE model whose ``"codes"`` site is swapped for the fitted
prior (:class:`~lvm_pyro.models.pixelcnn_prior.CodesPrior`).
"""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path
from typing import Callable, Optional

import pyro
import pyro.poutine as poutine
import torch
from pyro.infer import Trace_ELBO

from ..guides.empty import EmptyGuide
from ..inference import log_weights
from ..inference.evaluation import nll_report
from ..models.pixelcnn_prior import CodesPrior, GatedPixelCNNPrior
from ..inference.program import trace_guide_then_model, trace_program
from ..sites import CODES, OBS
from .checkpoint import CheckpointError, file_fingerprint, load_checkpoint
from .config import PriorConfig
from .loop import Trainer
from .rundir import CHECKPOINT_FILE, METRICS_FILE, RunFileError, read_json

__all__ = ["prior_problem", "PRIOR_CHECKPOINT", "PRIOR_METRICS", "PriorExistsError", "encode_codes",
           "fit_prior", "load_prior", "prior_is_current", "fitted_to", "decode_codes", "two_stage_bound",
           "save_prior_samples"]

PRIOR_CHECKPOINT, PRIOR_METRICS = "prior_checkpoint.pt", "prior_metrics.json"


class PriorExistsError(CheckpointError):
    """A run directory already holds a fitted code prior and neither resuming its fit nor
    replacing it was asked for."""


@torch.no_grad()
def encode_codes(guide: Callable, x: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
    """The code grids the guide assigns to ``x``: the value of its ``"codes"`` site.

    Args:
        guide: any guide with a ``"codes"`` site (the VQ-VAE guide: a point mass at the
            encoder's nearest codes).
        x: (N, ...) data as the guide takes it.

    Returns:
        (N, H, W) int64.

    Raises:
        ValueError: the guide has no ``"codes"`` site.
    """
    out = []
    for start in range(0, len(x), batch_size):
        xb = x[start:start + batch_size]
        tr = trace_program(guide, xb)
        if CODES not in tr.nodes:
            raise ValueError(f"the guide has no {CODES!r} site; fit-prior needs a VQ-VAE run "
                             "(lvm-pyro fit --model vqvae)")
        out.append(tr.nodes[CODES]["value"].long())
    return torch.cat(out)


@torch.no_grad()
def two_stage_bound(model: Callable, guide: Callable, prior: GatedPixelCNNPrior,
                    x: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
    """Per-datapoint two-stage bound log p(x|z_q) + log p_prior(codes) <= log p(x), nats:
    (N,). The engine's log weight with one particle, the model's ``"codes"`` prior
    replaced by ``prior``."""
    wrapped = CodesPrior(prior)(model)
    out = []
    for start in range(0, len(x), batch_size):
        out.append(log_weights(wrapped, guide, x[start:start + batch_size], 1).log_w[0])
    return torch.cat(out)


@torch.no_grad()
def decode_codes(model: Callable, codes: torch.Tensor, x_like: torch.Tensor) -> torch.Tensor:
    """Images for given code grids: the mean of the model's ``"x"`` distribution with its
    ``"codes"`` site conditioned on ``codes`` (N, H, W); ``x_like`` (N, ...) is valid data
    used only for its shape. Returns (N, ...) float."""
    prog = poutine.condition(poutine.uncondition(model), data={CODES: codes})
    tr = trace_program(prog, x_like, keywords_of=model)
    return tr.nodes[OBS]["fn"].mean.reshape(x_like.shape)


def fitted_to(run_dir: str | Path) -> str:
    """The fingerprint a prior fitted now records of the run's checkpoint
    (:func:`~lvm_pyro.training.checkpoint.file_fingerprint` of ``checkpoint.pt``).

    Raises:
        CheckpointError: the run has no checkpoint.
    """
    run = Path(run_dir) / CHECKPOINT_FILE
    if not run.exists():
        raise CheckpointError(f"{run} does not exist: train the run first (lvm-pyro fit)")
    return file_fingerprint(run)


def _run_num_test(run_dir: Path) -> Optional[int]:
    """``num_test_points`` of the run's ``metrics.json`` (its own evaluation), or None
    when the file is missing or unreadable."""
    try:
        n = read_json(run_dir / METRICS_FILE).get("num_test_points")
    except (OSError, RunFileError, AttributeError):
        return None
    return int(n) if isinstance(n, int) and n > 0 else None


def _prior_config(prior: Path) -> dict:
    """The ``config`` dict of the prior checkpoint at ``prior``.

    Raises:
        CheckpointError: unreadable (corrupt, truncated, not a checkpoint) or without a
            ``config`` dict.
    """
    payload = load_checkpoint(prior)
    config = payload.get("config") if isinstance(payload, dict) else None
    if not isinstance(config, dict):
        raise CheckpointError(f"{prior} has no config dict (got {type(config).__name__}); it "
                              "was not written by lvm-pyro fit-prior")
    return config


def prior_is_current(run_dir: str | Path) -> bool:
    """True when ``run_dir`` holds a prior checkpoint fitted to the run's present
    checkpoint: the fingerprint the prior recorded (``config["fitted_to"]``) equals that
    of ``checkpoint.pt`` now, so a copied run directory keeps its prior and a retrained
    run's prior is stale. A prior written before fingerprints were recorded counts as
    current when it is not older than the run's checkpoint. A prior file that cannot be
    read (:func:`prior_problem`) is not current."""
    run_dir = Path(run_dir)
    prior, run = run_dir / PRIOR_CHECKPOINT, run_dir / CHECKPOINT_FILE
    if not (prior.exists() and run.exists()):
        return False
    try:
        recorded = _prior_config(prior).get("fitted_to")
    except CheckpointError:
        return False
    if recorded is None:  # a prior fitted before fingerprints were recorded
        return prior.stat().st_mtime >= run.stat().st_mtime
    return recorded == file_fingerprint(run)


def prior_problem(run_dir: str | Path) -> Optional[str]:
    """Why the run's prior file cannot be used, in words for a message: ``"is unreadable
    (...)"`` (a corrupt or truncated file, or one without a config dict) or ``"was fitted
    to an earlier training of the run (its checkpoint has changed since)"``; ``None`` when
    there is no prior file or it is current (:func:`prior_is_current`)."""
    run_dir = Path(run_dir)
    prior = run_dir / PRIOR_CHECKPOINT
    if not prior.exists() or prior_is_current(run_dir):
        return None
    try:
        _prior_config(prior)
    except CheckpointError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        return f"is unreadable ({first[:300]})"
    if not (run_dir / CHECKPOINT_FILE).exists():
        return (f"cannot be matched to a training: the run's {CHECKPOINT_FILE} is missing "
                "(restore it, or train the run again)")
    return "was fitted to an earlier training of the run (its checkpoint has changed since)"


def load_prior(run_dir: str | Path, device: str = "cpu") -> GatedPixelCNNPrior:
    """The fitted prior of a run directory.

    Raises:
        CheckpointError: no ``prior_checkpoint.pt`` (run ``lvm-pyro fit-prior`` first) or
            a corrupt one.
    """
    path = Path(run_dir) / PRIOR_CHECKPOINT
    if not path.exists():
        raise CheckpointError(f"{path} does not exist; fit a prior first: lvm-pyro fit-prior {run_dir}")
    payload = load_checkpoint(path, map_location=device)
    hyper = payload["config"]["prior"]
    if "kind" in hyper:  # VQ-VAE-2's two priors
        raise CheckpointError(f"{path} holds VQ-VAE-2's two code priors; load them with "
                              "lvm_pyro.training.prior_stage2.load_vqvae2_priors")
    prior = GatedPixelCNNPrior(hyper["num_codes"], hyper["grid_shape"], hyper["channels"],
                               hyper["num_layers"], hyper["kernel_size"], hyper["num_classes"],
                               hyper["head_dim"])
    prior.load_state_dict(payload["modules"]["model"])
    return prior.to(device).eval()


def _num_codes(model: Callable, guide: Callable, x: torch.Tensor) -> int:
    """K, read off the support of the model's ``"codes"`` site."""
    with torch.no_grad():
        mt, _ = trace_guide_then_model(model, guide, x, block=True)
    if CODES not in mt.nodes:
        raise ValueError(f"the model has no {CODES!r} site; fit-prior needs a VQ-VAE run")
    c = mt.nodes[CODES]["fn"].support
    while hasattr(c, "base_constraint"):
        c = c.base_constraint
    if not hasattr(c, "upper_bound"):
        raise ValueError(f"cannot read the codebook size off the {CODES!r} site's support {c}")
    return int(c.upper_bound) + 1


def _mean_se(t: torch.Tensor) -> tuple[float, float]:
    t = t.double()
    return float(t.mean()), float(t.std() / math.sqrt(len(t))) if len(t) > 1 else 0.0


def fit_prior(run_dir: str | Path, config: Optional[PriorConfig] = None, *,
              num_train: Optional[int] = None, num_test: Optional[int] = None,
              num_pictures: int = 64, resume: bool = False, progress: bool = True,
              data_root: Optional[str | Path] = None, force: bool = False) -> dict:
    """Stage two: fit a :class:`GatedPixelCNNPrior` by maximum likelihood on the code
    grids the trained VQ-VAE guide assigns to the training set, then evaluate and draw.
    For a VQ-VAE-2 run (``lvm-pyro fit --model vqvae2``) both levels' priors instead:
    :func:`lvm_pyro.training.prior_stage2.fit_vqvae2_priors` (its metrics are described
    there).

    Args:
        run_dir: a finished VQ-VAE run directory (``lvm-pyro fit --model vqvae``).
        config: the prior's network (``channels``, ``num_layers``, ``kernel_size``) and
            its fit (``epochs``, ``batch_size``, ``lr``, ``seed``): Adam on
            -log p_prior(codes) by the generic Trainer, with the prior as a Pyro program
            observing ``"codes"`` and an empty guide. Default :class:`PriorConfig()`.
        num_train, num_test: use the first N training / test points (all training points
            when None; for the test points, as many as the run's own evaluation used,
            ``num_test_points`` of its ``metrics.json``, else all).
        num_pictures: prior samples drawn for ``prior_samples.png``.
        resume: continue from ``prior_checkpoint.pt``.
        data_root: override where the run's data are read from.
        force: replace a prior already fitted in ``run_dir`` (its checkpoint and metrics
            are removed first).

    Returns:
        the metrics dict written to ``prior_metrics.json``: ``prior_nll`` (nats per code
        grid), ``prior_bits_per_code``, ``uniform_bits_per_code`` (log2 K),
        ``two_stage_nll`` / ``two_stage_bits_per_dim`` (-bound, nats per example /
        bits per dim), ``uniform_prior_nll`` / ``uniform_prior_bits_per_dim`` (the same
        with the VQ-VAE's uniform code prior: the bound ``evaluate`` reports as
        ``test_nll``), ``reconstruction_nll`` (-log p(x | z_q)), standard errors
        (``*_se``), grid shape, codebook size, training curve and timings. Every NLL in
        nats per example includes the offset of
        :func:`lvm_pyro.training.run.test_bits_offset` (``bits_per_dim_offset_nats``), as
        ``evaluate``'s ``test_nll`` does; bits/dim are ``None`` where no offset exists.

    Raises:
        PriorExistsError: ``run_dir`` holds a fitted prior and neither ``resume`` nor
            ``force`` is set.
        CheckpointError: not a run directory, or a corrupt checkpoint.
        ValueError: the run's guide / model has no ``"codes"`` site; both ``resume`` and
            ``force``.
    """
    from .prior_stage2 import fit_vqvae2_priors, is_vqvae2
    from .run import _versions, _write_json, load_run, prepare_data, test_bits_offset

    config = PriorConfig() if config is None else config
    channels, num_layers, kernel_size = config.channels, config.num_layers, config.kernel_size
    epochs, batch_size, lr, seed = config.epochs, config.batch_size, config.lr, config.seed
    run_dir = Path(run_dir)
    if resume and force:
        raise ValueError("give resume (continue the prior's fit) or force (replace the prior), "
                         "not both")
    run = load_run(run_dir, data_root=data_root)
    problem = prior_problem(run_dir)
    if problem is not None and not force:
        raise PriorExistsError(f"{run_dir / PRIOR_CHECKPOINT} {problem}: replace it with --force "
                               "(force=True)")
    if (run_dir / PRIOR_CHECKPOINT).exists() and not (resume or force):
        raise PriorExistsError(f"{run_dir / PRIOR_CHECKPOINT} already holds a fitted prior; "
                               "pass --force (force=True) to replace it, or --resume "
                               "(resume=True) to continue its fit")
    if force:
        for name in (PRIOR_CHECKPOINT, PRIOR_METRICS):
            (run_dir / name).unlink(missing_ok=True)
    if num_test is None:  # the test points the run's own evaluation used, so the bounds compare
        num_test = _run_num_test(run_dir)
    if is_vqvae2(run.model):
        return fit_vqvae2_priors(run_dir, config, num_train=num_train, num_test=num_test,
                                 num_pictures=num_pictures, resume=resume, progress=progress,
                                 data_root=data_root, run=run)
    model, guide, run_config, _ = run
    for m in (model, guide):
        if isinstance(m, torch.nn.Module):
            m.eval()
    device = torch.device(run_config["device"])
    t0 = time.perf_counter()
    x_train = prepare_data(run_config, "train", device)[:num_train]
    x_test = prepare_data(run_config, "test", device)[:num_test]
    codes_train = encode_codes(guide, x_train)
    codes_test = encode_codes(guide, x_test)
    num_codes = _num_codes(model, guide, x_test[:2])
    grid = tuple(codes_train.shape[-2:])
    encode_seconds = time.perf_counter() - t0

    pyro.clear_param_store()  # the trainer optimises the prior's weights only
    pyro.set_rng_seed(seed)
    prior = GatedPixelCNNPrior(num_codes, grid, channels, num_layers, kernel_size).to(device)
    hyper = prior.hyperparameters
    num_grid = grid[0] * grid[1]

    def test_bits(trainer: Trainer, _m) -> dict:
        with torch.no_grad():
            lp = torch.cat([prior.log_prob(codes_test[s:s + 1000])
                            for s in range(0, len(codes_test), 1000)])
        return {"test_bits_per_code": float(-lp.mean() / (num_grid * math.log(2)))}

    trainer = Trainer(prior, EmptyGuide(), Trace_ELBO(max_plate_nesting=1), lr=lr,
                      batch_size=batch_size, seed=seed, binarization="none",
                      checkpoint_path=run_dir / PRIOR_CHECKPOINT,
                      config={"prior": hyper, "batch_size": batch_size, "lr": lr, "seed": seed,
                              "num_train": len(codes_train), "fitted_to": fitted_to(run_dir)},
                      progress=progress, callbacks=[test_bits])
    t1 = time.perf_counter()
    history = trainer.fit(codes_train, epochs, resume=resume)
    train_seconds = time.perf_counter() - t1
    prior.eval()

    t2 = time.perf_counter()
    with torch.no_grad():
        lp = torch.cat([prior.log_prob(codes_test[s:s + 1000]) for s in range(0, len(codes_test), 1000)])
    bound = two_stage_bound(model, guide, prior, x_test)
    with torch.no_grad():
        uniform = torch.cat([log_weights(model, guide, x_test[s:s + 500], 1).log_w[0]
                             for s in range(0, len(x_test), 500)])
    offset = test_bits_offset(run_config, x_test)
    num_dims = offset.num_dims
    prior_nll, prior_nll_se = _mean_se(-lp)
    ts, un = nll_report(bound, offset), nll_report(uniform, offset)
    rec = nll_report(uniform + num_grid * math.log(num_codes), offset)
    metrics = {
        "prior_nll": prior_nll, "prior_nll_se": prior_nll_se,
        "prior_bits_per_code": prior_nll / (num_grid * math.log(2)),
        "prior_bits_per_code_se": prior_nll_se / (num_grid * math.log(2)),
        "uniform_bits_per_code": math.log2(num_codes),
        "two_stage_nll": ts.nll, "two_stage_nll_se": ts.nll_se,
        "two_stage_bits_per_dim": ts.bits_per_dim, "two_stage_bits_per_dim_se": ts.bits_per_dim_se,
        "uniform_prior_nll": un.nll, "uniform_prior_nll_se": un.nll_se,
        "uniform_prior_bits_per_dim": un.bits_per_dim,
        "reconstruction_nll": rec.nll, "reconstruction_nll_se": rec.nll_se,
        "reconstruction_bits_per_dim": rec.bits_per_dim,
        "bits_per_dim_offset_nats": offset.offset_nats, "nll_note": offset.note,
        "num_dims": num_dims,
        "grid_shape": list(grid), "codebook_size": num_codes,
        "codes_used_train": int(torch.unique(codes_train).numel()),
        "num_train_points": len(codes_train), "num_test_points": len(codes_test),
        "prior": hyper, "epochs": epochs, "batch_size": batch_size, "lr": lr, "seed": seed,
        "prior_config": dataclasses.asdict(config),
        "train_curve": history, "encode_seconds": encode_seconds, "train_seconds": train_seconds,
        "eval_seconds": time.perf_counter() - t2, "versions": _versions(),
        "run_config": run_config,
    }
    _write_json(run_dir / PRIOR_METRICS, metrics)
    save_prior_samples(run_dir, model, guide, x_test[:max(num_pictures, 32)], prior=prior,
                       num_samples=num_pictures, seed=seed)
    return metrics


def save_prior_samples(run_dir: str | Path, model: Callable, guide: Callable,
                       x: torch.Tensor, *, prior: Optional[GatedPixelCNNPrior] = None,
                       num_samples: int = 64, seed: int = 0,
                       out_dir: Optional[str | Path] = None) -> dict[str, Path]:
    """Write ``prior_samples.png`` (codes ~ the fitted prior, cached sampler, decoded by
    the model) and ``prior_vs_reconstructions.png`` (a 4x4 grid of decoded prior samples
    on the left, test originals above their reconstructions on the right) into ``run_dir``.

    Args:
        x: (n, ...) test data, n >= 1, used for reconstructions and as the shape template.
        prior: the fitted prior (loaded from ``run_dir`` when None).
        out_dir: where the pictures go (default ``run_dir``).
    """
    from torchvision.utils import make_grid, save_image

    from .pictures import reconstruct, save_grid

    run_dir = Path(run_dir)
    out_dir = run_dir if out_dir is None else Path(out_dir)
    p = next(model.parameters()) if isinstance(model, torch.nn.Module) else x
    if prior is None:
        prior = load_prior(run_dir, str(p.device))
    codes = prior.sample(num_samples, generator=torch.Generator(device=p.device).manual_seed(seed))
    x_like = x[:1].expand(num_samples, *x.shape[1:])
    images = decode_codes(model, codes, x_like)
    out = {"prior_samples": save_grid(images, out_dir / "prior_samples.png")}
    # side by side: 4x4 prior samples | 8 test originals (odd rows) above reconstructions
    n = min(8, len(x))
    rec = reconstruct(model, guide, x[:n])
    pairs = torch.cat([torch.cat([x[i:i + 4], rec[i:i + 4]]) for i in range(0, n, 4)])
    factor = -(-28 // x.shape[-2])  # enlarge small images (8x8 digits) as save_grid does

    def grid(t: torch.Tensor) -> torch.Tensor:
        t = t.detach().float().clamp(0, 1).cpu()
        if factor > 1:
            t = torch.nn.functional.interpolate(t, scale_factor=factor, mode="nearest")
        return make_grid(t, nrow=4, padding=2, pad_value=0.5)

    left, right = grid(images[:16]), grid(pairs)
    height = max(left.shape[1], right.shape[1])
    pad = lambda g: torch.nn.functional.pad(g, (0, 0, 0, height - g.shape[1]), value=1.0)  # noqa: E731
    gap = torch.ones(3, height, 8)
    path = out_dir / "prior_vs_reconstructions.png"
    save_image(torch.cat([pad(left), gap, pad(right)], dim=2), path)
    out["prior_vs_reconstructions"] = path
    return out
