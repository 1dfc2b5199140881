"""Run directories: train from a configuration, evaluate, sample, and :func:`load_run`.

A run directory holds ``config.json``, ``checkpoint.pt`` (see
:mod:`lvm_pyro.training.checkpoint`), ``metrics.json``, ``samples.png``,
``reconstructions.png`` and ``loss_curve.png``.
"""

from __future__ import annotations

import math
import platform
import time
from pathlib import Path
from typing import Any, Callable, Mapping, NamedTuple, Optional

import pyro
import pyro.poutine as poutine
import torch

from ..data import Binarizer, binarize_test, dequantize_test, load_dataset
from ..data.datasets import DATASET_LEVELS
from ..inference import elbo_parts, log_marginal_likelihood
from ..inference.evaluation import BitsPerDimOffset, bits_per_dim_offset, nll_report
from ..inference.program import trace_guide_then_model
from .builders import as_run_config, build_callbacks, build_metrics, build_model, build_objective
from .checkpoint import CheckpointError, load_checkpoint, restore_params
from .config import ConfigError, RunConfig
from .distributed import DistributedContext, init_from_environment, rank_seed, single_process
from .loop import Trainer
from .pictures import (prior_draws, prior_samples, save_grid, save_loss_curve, save_reconstructions,
                       save_scatter)
from .progress import progress_iter
from .rundir import (CHECKPOINT_FILE, CONFIG_FILE, METRICS_FILE, ensure_directory, holds_run,
                     prepare_run_dir, read_json, write_json)

__all__ = ["Run", "load_run", "train_run", "evaluate_run", "sample_run", "prepare_data",
           "load_run_data",
           "test_bits_offset", "read_run_config", "latent_metrics", "check_num_levels"]

_write_json = write_json  # the name fit-prior and diagnose import


class Run(NamedTuple):
    """A finished (or interrupted) run: ``model`` and ``guide`` with trained parameters,
    its ``config`` (the flat dict of :meth:`RunConfig.to_dict`) and ``path``."""

    model: Any
    guide: Any
    config: dict
    path: Path


def prepare_data(config: RunConfig | Mapping, split: str, device: torch.device | str = "cpu",
                 *, with_source: bool = False):
    """The tensor a run trains / evaluates on: (N, C, H, W) float on ``device``. The test
    split is binarised (or, with ``binarization="dequantize"``, dequantised) once with
    seed 0; training data stay intensities (the Trainer transforms them per epoch).
    With ``with_source`` also the absolute path (or loader) the data came from.

    Raises:
        DatasetNotFoundError: see :func:`lvm_pyro.data.load_dataset`.
    """
    cfg = as_run_config(config)
    ds = load_run_data(cfg, split)
    x = ds.images
    mode = cfg.data.binarization
    if split == "test" and mode == "dequantize":
        x = dequantize_test(x, ds.levels, seed=0)
    elif split == "test" and mode != "none":
        x = binarize_test(x, seed=0)
    x = x.to(device)
    return (x, ds.source) if with_source else x


def load_run_data(config: RunConfig | Mapping, split: str):
    """One split of a run's data: a named data set (:func:`lvm_pyro.data.load_dataset`)
    or a user's file / image folder (:func:`lvm_pyro.data.files.load_data_file`, split by
    ``split_seed`` and ``test_fraction``), untransformed.

    Raises:
        DatasetNotFoundError, ValueError: see those functions.
    """
    from ..data.files import load_data_file

    cfg = as_run_config(config)
    if cfg.data.is_file:
        return load_data_file(cfg.data.data, split, split_seed=cfg.data.split_seed,
                              test_fraction=cfg.data.test_fraction)
    return load_dataset(cfg.data.data, split, cfg.data.data_root)


def test_bits_offset(config: RunConfig | Mapping, x: torch.Tensor) -> BitsPerDimOffset:
    """The bits/dim offset of a run's test data x (N, ...): :func:`bits_per_dim_offset`
    of the model's likelihood, the run's data transform and the data set's levels. A
    model configuration without a ``likelihood`` field counts as discrete unless the data
    are dequantised; a model with a ``dequantization`` other than ``"none"`` adds the
    noise itself (offset 0)."""
    from ..models.likelihoods import LIKELIHOODS

    cfg = as_run_config(config)
    mode = cfg.data.binarization
    name = getattr(cfg.model, "likelihood", None)
    discrete = (mode != "dequantize") if name is None else bool(LIKELIHOODS[name].discrete)
    dequantizes = getattr(cfg.model, "dequantization", "none") != "none"
    return bits_per_dim_offset(discrete, mode, DATASET_LEVELS.get(cfg.data.data, 256),
                               int(math.prod(x.shape[1:])), model_dequantizes=dequantizes)


def validate_config(config: RunConfig) -> None:
    """Check what the dataclasses cannot: that the device exists here.

    Raises:
        ConfigError: CUDA requested without a GPU.
    """
    device = config.train.device
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("device", f"is {device}, but torch finds no CUDA device here; use cpu")


def check_num_levels(config: RunConfig, x: torch.Tensor) -> None:
    """Check, before training, that the data lie on the grid k / (L - 1) of the model's
    ``num_levels`` L where the model reads the raw levels (binarization ``none`` with a
    discretised likelihood, Salimans et al. 2017 eq. 2, or a dequantised model / flow,
    Theis et al. 2016): the same test the model's likelihood makes at the first step
    (:func:`lvm_pyro.data.levels.off_grid`), made when the data are loaded so a wrong
    ``--num-levels`` stops the run before anything is written.

    Args:
        config: the run's configuration.
        x: (N, ...) training data as loaded (intensities in [0, 1]).

    Raises:
        ConfigError: (field ``num_levels``) data off the grid, naming a value, how many
            are off, and the data set's levels.
    """
    from ..data.levels import off_grid

    model = config.model
    levels = getattr(model, "num_levels", None)
    reads_levels = (getattr(model, "likelihood", None) == "discretized_logistic"
                    or getattr(model, "dequantization", "none") != "none")
    if levels is None or not reads_levels or config.data.binarization != "none":
        return
    bad = off_grid(x, levels)
    if not bool(bad.any()):
        return
    known = DATASET_LEVELS.get(config.data.data)
    fix = (f"the {config.data.data} data have {known} levels: leave --num-levels out (the "
           f"data set's) or pass --num-levels {known}" if known is not None else
           "pass the number of intensity levels of the data (256 for 8-bit images)")
    raise ConfigError("num_levels", f"is {levels}, but the training data are not on its grid "
                                    f"k / {levels - 1} (e.g. {x[bad].flatten()[0].item():g}; "
                                    f"{int(bad.sum())} of {x.numel()} values); {fix}")


def _versions() -> dict:
    import arviz
    import torchvision

    from .. import __version__
    return {"lvm_pyro": __version__, "pyro": pyro.__version__, "torch": torch.__version__,
            "torchvision": torchvision.__version__, "arviz": arviz.__version__,
            "python": platform.python_version()}


def read_run_config(run_dir: str | Path) -> tuple[RunConfig, dict]:
    """The :class:`RunConfig` of ``run_dir/config.json`` and the file's record-only
    entries (``data_source``).

    Raises:
        CheckpointError: no ``config.json``; RunFileError (a CheckpointError) when it is
            not valid JSON, naming the file.
        ConfigError: invalid values in it.
    """
    path = Path(run_dir) / CONFIG_FILE
    if not path.exists():
        raise CheckpointError(f"{run_dir} has no {CONFIG_FILE}; is it a run directory made "
                              "by `lvm-pyro fit --out DIR`?")
    raw = read_json(path)
    if not isinstance(raw, dict):
        raise CheckpointError(f"{path} holds {type(raw).__name__}, not a configuration object")
    return RunConfig.from_dict(raw, strict=False), {k: raw[k] for k in ("data_source",) if k in raw}


def train_run(config: RunConfig | Mapping, out: str | Path, *, resume: bool = False,
              overwrite: bool = False, progress: bool = True, num_samples: int = 1000,
              num_test: Optional[int] = None, log: Optional[Callable[[str], None]] = None,
              logger: str = "none") -> dict:
    """Train a model from ``config`` into run directory ``out``, then evaluate and draw.

    Args:
        config: a :class:`RunConfig` (or a flat mapping of its fields; missing ones take
            the dataclass defaults).
        out: run directory (created).
        resume: continue from ``out/checkpoint.pt`` (exactly; the configuration must
            match except for ``epochs``). Without a checkpoint there, ``log`` says so and
            the run starts fresh, identical to one started without ``resume``.
        overwrite: replace a run already in ``out`` (its files are removed first).
        num_samples: K importance samples for the test NLL.
        num_test: evaluate on the first ``num_test`` test points (all when ``None``).
        log: callable for notices (``None``: silent).
        logger: ``"tensorboard"`` writes per-epoch scalars and grids under
            ``out/tensorboard/`` (:class:`~lvm_pyro.training.tensorboard.TensorBoardLogger`,
            on the first 200 test points, K = 100); ``"none"`` (default) writes nothing.

    Under ``torchrun`` (``WORLD_SIZE`` > 1 in the environment) the processes train
    data-parallel (:mod:`lvm_pyro.training.distributed`): ``batch_size`` is the global
    minibatch, split over the ranks; rank 0 alone writes files and logs; the test
    evaluation is split over the ranks and gathered; ``metrics.json`` records
    ``world_size`` (1 without torchrun).

    Returns:
        the metrics dict also written to ``out/metrics.json`` (the same on every rank).

    Raises:
        RunExistsError: ``out`` holds a run and neither ``resume`` nor ``overwrite``.
        CheckpointError: resuming with a different configuration.
        ConfigError, ValueError: bad configuration or evaluation settings.
    """
    from .tensorboard import LOGGERS

    config = as_run_config(config)
    out = Path(out)
    if logger not in LOGGERS:
        raise ConfigError("logger", f"must be one of {', '.join(LOGGERS)}; got {logger!r}")
    if num_samples < 1:
        raise ConfigError("num_samples", f"must be >= 1, got {num_samples}")
    if num_test is not None and num_test < 1:
        raise ConfigError("num_test", f"must be >= 1, got {num_test}")
    validate_config(config)
    import torch.distributed as torch_dist
    owns_group = not (torch_dist.is_available() and torch_dist.is_initialized())
    ctx = init_from_environment(config.train.device)
    try:
        return _train_run(config, out, ctx, resume=resume, overwrite=overwrite,
                          progress=progress, num_samples=num_samples, num_test=num_test,
                          log=log if ctx.is_main else None, logger=logger)
    finally:
        if owns_group and ctx.enabled and torch_dist.is_initialized():
            torch_dist.destroy_process_group()


def _train_run(config: RunConfig, out: Path, ctx: DistributedContext, *, resume: bool,
               overwrite: bool, progress: bool, num_samples: int, num_test: Optional[int],
               log: Optional[Callable[[str], None]], logger: str) -> dict:
    """:func:`train_run` in one process of a job described by ``ctx``."""
    from .tensorboard import TensorBoardLogger

    prepare_run_dir(out, resume=resume, overwrite=overwrite, clear=False)  # fail early
    cfg_path = out / CONFIG_FILE
    if resume and not (out / CHECKPOINT_FILE).exists():
        if log is not None:
            log(f"no checkpoint in {out}: nothing to resume, starting a fresh run")
        # what is there (a config.json of a run interrupted in its first epoch) is replaced
        resume, overwrite = False, holds_run(out)
    if resume and cfg_path.exists():
        old, _ = read_run_config(out)
        moves = ("epochs", "data_root")  # more epochs, or the data found elsewhere
        stable = {k: v for k, v in config.to_dict().items() if k not in moves}
        was = {k: v for k, v in old.to_dict().items() if k not in moves}
        if was != stable:
            diff = {k: (was.get(k), stable.get(k)) for k in set(was) | set(stable)
                    if was.get(k) != stable.get(k)}
            raise CheckpointError(f"resuming with a different configuration (was vs now: {diff}); "
                                  "resume with the original configuration or train into a new "
                                  "run directory")
    ctx.barrier("checking the run directory")  # every rank has read it before rank 0 writes
    device = torch.device(config.train.device)
    if ctx.enabled and device.type == "cuda":
        device = torch.device("cuda", torch.cuda.current_device())  # this rank's GPU
    t0 = time.perf_counter()
    x_train, source = prepare_data(config, "train", device, with_source=True)
    check_num_levels(config, x_train)
    pyro.clear_param_store()
    pyro.set_rng_seed(config.train.seed)
    model, guide = build_model(config, x_train.shape[1:])
    elbo = build_objective(config, num_data=len(x_train))
    flat = config.to_dict()
    if ctx.is_main:
        prepare_run_dir(out, resume=resume, overwrite=overwrite)  # once the run is known to be buildable
        write_json(cfg_path, {**flat, "data_source": source})
    ctx.barrier("preparing the run directory")
    if isinstance(model, torch.nn.Module):
        model.to(device)
    if isinstance(guide, torch.nn.Module):
        guide.to(device)
    levels = DATASET_LEVELS.get(config.data.data, 256)
    seed = config.train.seed
    aggressive = None
    if config.train.aggressive_encoder:
        from .aggressive import AggressiveEncoder

        heldout = prepare_data(config, "test", device)[:config.train.aggressive_heldout]
        aggressive = AggressiveEncoder(heldout,
                                       max_inner_steps=config.train.aggressive_max_inner_steps)
    callbacks = build_callbacks(config, model, guide)
    # nats from the density's scale to the discrete log P(x) (D log L for uniformly
    # dequantised data, else 0): every reported loss and bound is on the discrete scale
    offset = test_bits_offset(config, x_train).offset_nats or 0.0
    board = None
    if logger == "tensorboard" and ctx.is_main:
        board = TensorBoardLogger(out, model, guide,
                                  prepare_data(config, "test", device)[:200], seed=seed,
                                  offset_nats=offset,
                                  reconstructions=config.model_name != "flow")
        callbacks.append(board)
    trainer = Trainer(model, guide, elbo, lr=config.train.lr, aggressive=aggressive,
                      batch_size=config.train.batch_size, seed=seed,
                      binarization=Binarizer(config.data.binarization, seed + 1, levels),
                      checkpoint_path=out / CHECKPOINT_FILE,
                      config={k: v for k, v in flat.items() if k not in ("epochs", "data_root")},
                      progress=progress, callbacks=callbacks, distributed=ctx,
                      compile_networks=config.train.compile)
    try:
        history = trainer.fit(x_train, config.train.epochs, resume=resume)
    finally:
        if board is not None:
            board.close()
    train_seconds = time.perf_counter() - t0
    if offset:  # the loss on the discrete scale, the density's value kept as loss_density
        history = [{**h, "loss": h["loss"] + offset, "loss_density": h["loss"]} for h in history]
    if ctx.is_main:
        save_loss_curve(history, out / "loss_curve.png")
    metrics = evaluate_run(out, num_samples=num_samples, num_test=num_test,
                           model=model, guide=guide, config=config,
                           progress=progress and ctx.is_main, distributed=ctx)
    if ctx.is_main:
        metrics.update({"train_curve": history, "train_seconds": train_seconds,
                        "world_size": ctx.world_size})
        write_json(out / METRICS_FILE, metrics)
        sample_run(out, model=model, guide=guide, config=config)
    return ctx.broadcast_object(metrics, "sharing rank 0's metrics")


def load_run(run_dir: str | Path, device: Optional[str] = None,
             data_root: Optional[str | Path] = None) -> Run:
    """Rebuild the model and guide of a run directory with its trained parameters.

    Args:
        run_dir: a directory made by :func:`train_run`.
        device: override the run's device.
        data_root: override where the run's data are read from (absolute path recorded
            in the returned config).

    Raises:
        CheckpointError: missing or unreadable config (the message names the file) or
            checkpoint, or a checkpoint that does not match the configuration's
            architecture.
        ConfigError: ``data_root`` with the bundled digits.
    """
    run_dir = Path(run_dir)
    cfg, _ = read_run_config(run_dir)
    if device is not None:
        cfg = cfg.replace(device=device)
    if data_root is not None:
        cfg = cfg.replace(data_root=str(data_root))
    config = cfg.to_dict()
    payload = load_checkpoint(run_dir / CHECKPOINT_FILE, map_location=config["device"])
    ds = load_run_data(cfg, "test")
    x = ds.images[:2].to(config["device"])
    if cfg.data.binarization not in ("none", "dequantize"):
        x = binarize_test(x)
    pyro.clear_param_store()
    model, guide = build_model(cfg, x.shape[1:])
    modules = {}
    for k, m in (("model", model), ("guide", guide)):
        if isinstance(m, torch.nn.Module):
            m.to(config["device"])
            modules[k] = m
    with torch.no_grad(), poutine.block():  # create every parameter with its constraint
        trace_guide_then_model(model, guide, x)
    restore_params(payload, modules)
    return Run(model, guide, config, run_dir)


def evaluate_run(run_dir: str | Path, *, num_samples: int = 1000, num_test: Optional[int] = None,
                 batch_size: int = 100, model=None, guide=None, config=None,
                 progress: bool = False, data_root: Optional[str | Path] = None,
                 seed: int = 0, distributed: Optional[DistributedContext] = None) -> dict:
    """Test ELBO and importance-sampled test NLL of a run, seeded: Pyro's RNGs are set
    to ``seed`` (>= 0, recorded as ``seed``) first, so two evaluations give the same
    numbers.

    Every bound is on one scale, the discrete data's log P(x) in nats: for a continuous
    likelihood on uniformly dequantised data the offset of :func:`test_bits_offset`
    (``bits_per_dim_offset_nats`` = D log L, Theis et al. 2016, eq. 9) is subtracted from
    the density's ELBO and reconstruction term and added to its NLL, so
    ``test_elbo <= -test_nll`` (up to Monte-Carlo error) holds as for any other model.

    Returns a dict with ``test_elbo`` (mean per-datapoint ELBO, nats, one sample per
    point, minus the offset), ``test_reconstruction`` (mean E_q log p(x | z), nats, same
    draws, minus the offset), ``test_elbo_density`` / ``test_reconstruction_density``
    (the same without the offset; ``None`` when the offset is 0 or undefined),
    ``test_kl`` (mean KL(q(z | x) || p(z)), nats; ``test_kl_method`` says whether in
    closed form or Monte Carlo, :func:`lvm_pyro.inference.elbo_parts`), ``seed``, ``test_nll`` (mean -log p(x) plus the offset of :func:`test_bits_offset`,
    nats per example, ``num_samples`` importance samples with the guide as proposal),
    ``test_nll_se`` (standard error over test points), ``test_bits_per_dim`` (``None``
    when the NLL bounds no discrete code length), ``test_nll_density`` (without the
    offset, continuous likelihoods), ``bits_per_dim_offset_nats``, ``nll_note``,
    ``num_test_points``, ``num_importance_samples``, ``num_seeds`` (1) and ``versions``.

    With ``distributed`` (a :class:`~lvm_pyro.training.distributed.DistributedContext` of
    several processes) each rank evaluates a contiguous share of the test points with
    seed :func:`~lvm_pyro.training.distributed.rank_seed` (``seed``, rank) and rank 0
    gathers the per-datapoint values (in test-set order) and computes every metric; the
    other ranks return ``{}``. The numbers then differ from one process's by Monte Carlo
    error only (other draws).

    Raises:
        ValueError: ``num_samples < 1`` or ``num_test < 1``.
        CheckpointError: see :func:`load_run`.
    """
    if num_samples < 1:
        raise ConfigError("num_samples", f"must be >= 1, got {num_samples}")
    if num_test is not None and num_test < 1:
        raise ConfigError("num_test", f"must be >= 1, got {num_test}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ConfigError("seed", f"must be an integer >= 0, got {seed!r}")
    if model is None:
        model, guide, config, _ = load_run(run_dir, data_root=data_root)
    config = as_run_config(config)
    x = prepare_data(config, "test", config.train.device)
    if num_test is not None:
        x = x[:num_test]
    ctx = single_process() if distributed is None else distributed
    lo, hi = ctx.span(len(x))  # this rank's test points (all of them in one process)
    pyro.set_rng_seed(rank_seed(seed, ctx.rank))
    elbos, logps, recs, kls = [], [], [], []
    kl_method = None
    t0 = time.perf_counter()
    starts = progress_iter(range(lo, hi, batch_size), f"evaluating (K={num_samples})",
                           total=math.ceil((hi - lo) / batch_size), enabled=progress)
    for start in starts:
        xb = x[start:min(start + batch_size, hi)]
        parts = elbo_parts(model, guide, xb, num_samples=1)
        kl_method = parts.kl_method
        elbos.append(parts.elbo)
        recs.append(parts.reconstruction)
        kls.append(parts.kl)
        logps.append(log_marginal_likelihood(model, guide, xb, num_samples=num_samples))
    if ctx.enabled:  # per-datapoint values of every rank, in test-set order, on rank 0
        mine = [torch.cat(v).detach().cpu() if v else torch.zeros(0)
                for v in (elbos, logps, recs, kls)]
        gathered = ctx.gather_objects((mine, kl_method), "gathering the test evaluation")
        if not ctx.is_main:
            return {}
        elbos, logps, recs, kls = ([g[0][i] for g in gathered] for i in range(4))
        kl_method = next(m for _, m in gathered if m is not None)
    r = nll_report(torch.cat(logps), test_bits_offset(config, x))
    # every bound on one scale: the discrete log P(x) (the density's values minus the
    # offset D log L of uniformly dequantised data; unchanged when the offset is 0 or None)
    shift = r.offset_nats or 0.0
    elbo_density, rec_density = torch.cat(elbos).double(), torch.cat(recs).double()
    elbo, rec = elbo_density - shift, rec_density - shift
    mode = config.data.binarization
    test_binarization = {"dequantize": "fixed uniform dequantisation, seed 0", "none": "none"}.get(
        mode, "fixed Bernoulli draw, seed 0")
    metrics = {
        "test_elbo": float(elbo.mean()), "test_elbo_se": float(elbo.std() / math.sqrt(len(elbo))),
        "test_reconstruction": float(rec.mean()),
        "test_elbo_density": float(elbo_density.mean()) if shift else None,
        "test_reconstruction_density": float(rec_density.mean()) if shift else None,
        "test_kl": float(torch.cat(kls).mean()), "test_kl_method": kl_method,
        "test_elbo_note": ("test_elbo: Monte Carlo, one draw z ~ q per point; "
                           "test_reconstruction: E_q log p(x | z) on the same draws"
                           + ("; test_kl in closed form, so test_reconstruction - test_kl is a "
                              "second ELBO estimate, differing from test_elbo by the Monte-Carlo "
                              "error of log p(z) - log q(z | x)" if kl_method == "closed_form"
                              else "; test_kl = test_reconstruction - test_elbo")),
        "test_nll": r.nll, "test_nll_se": r.nll_se, "test_bits_per_dim": r.bits_per_dim,
        "test_nll_density": r.nll_density if r.offset_nats != 0.0 else None,
        "bits_per_dim_offset_nats": r.offset_nats, "nll_note": r.note,
        "num_test_points": r.num_points,
        "num_importance_samples": num_samples, "num_seeds": 1, "seed": seed,
        "test_binarization": test_binarization, "train_binarization": mode,
        "eval_seconds": time.perf_counter() - t0, "versions": _versions(),
        "config": config.to_dict(),
    }
    if config.model_name == "flow":  # its one latent is the dequantisation noise u
        metrics["flow_note"] = (
            "a flow's only latent is the dequantisation noise u: test_kl is "
            "KL(q(u | x) || U[0, 1)^D) = E_q log q(u | x) (0 for uniform dequantisation) and "
            "test_reconstruction is E_q log p(x + u) with the L^-D change of variables (the "
            "density's term of the bound); a flow has no reconstructions (it is invertible)")
    metrics.update(latent_metrics(model, guide, x, batch_size=batch_size))
    metrics.update(build_metrics(config, model, guide, x))  # model-specific (e.g. VQ-VAE usage)
    return metrics


def _base(fn):
    """A site's distribution without its ``to_event`` wrappers."""
    while isinstance(fn, torch.distributions.Independent):
        fn = fn.base_dist
    return fn


def _gaussian(fn) -> bool:
    """Whether a site's distribution is a (possibly ``to_event``) Normal."""
    return isinstance(_base(fn), torch.distributions.Normal)


@torch.no_grad()
def latent_metrics(model, guide, x: torch.Tensor, *, latent: str = "z",
                   batch_size: int = 100) -> dict:
    """Information kept in a Gaussian latent on test data x (N, ...):

    * ``test_kl_se``: the standard error over test points of KL(q(z | x_i) || p(z)), nats
      (closed form for Gaussian q and p, :func:`lvm_pyro.diagnostics.average_kl`); the
      mean itself, ``test_kl``, comes from :func:`lvm_pyro.inference.elbo_parts` with the
      ELBO's other part;
    * ``active_units``: coordinates d with Cov_x(E_q[z_d | x]) > 0.01 (Burda et al. 2015,
      sec. 5.2; :func:`lvm_pyro.diagnostics.active_units`), out of ``latent_dims``.

    A model whose guide has no site ``latent``, or whose q or p there is not Gaussian
    (VQ codes, Bernoulli units), gets ``None`` for each and a ``latent_metrics_note``
    saying why.
    """
    from ..diagnostics import active_units, average_kl
    from ..inference.program import ProgramContractError, trace_program

    none = {"test_kl_se": None, "active_units": None, "latent_dims": None}
    try:
        guide_site = trace_program(guide, x[:2]).nodes.get(latent)
        model_trace, _ = trace_guide_then_model(model, guide, x[:2], block=True)
    except ProgramContractError as e:  # a program the helpers refuse: say so, do not fail the run
        return {**none, "latent_metrics_note": f"skipped: {e}"}
    model_site = model_trace.nodes.get(latent)
    if guide_site is None or model_site is None:
        return {**none, "latent_metrics_note": f"skipped: the model has no latent site "
                                               f"{latent!r}"}
    if not (_gaussian(guide_site["fn"]) and _gaussian(model_site["fn"])):
        return {**none, "latent_metrics_note": (
            f"skipped: q({latent} | x) is {type(_base(guide_site['fn'])).__name__} and "
            f"p({latent}) is {type(_base(model_site['fn'])).__name__}; test_kl_se and active_units are reported for "
            "Gaussian latents only")}
    kl = torch.cat([average_kl(model, guide, x[s:s + batch_size], latent=latent)
                    for s in range(0, len(x), batch_size)]).double()  # (N,)
    se = float(kl.std() / math.sqrt(len(kl))) if len(kl) > 1 else None
    au = active_units(guide, x, latent=latent) if len(x) >= 2 else None
    return {"test_kl_se": se,
            "active_units": None if au is None else au.num_active,
            "latent_dims": int(guide_site["fn"].event_shape.numel()),
            "latent_metrics_note": f"test_kl_se: of KL(q({latent} | x) || p({latent})) in closed "
                                   "form (test_kl itself: see test_kl_method); active units: "
                                   "Cov_x(E_q[z_d]) > 0.01 (Burda et al. 2015)"}


def sample_run(run_dir: str | Path, *, num_samples: int = 64, model=None, guide=None,
               config=None, out_dir: Optional[str | Path] = None,
               data_root: Optional[str | Path] = None) -> dict[str, Path]:
    """Write ``samples.png`` (decoder means at prior draws) and ``reconstructions.png``
    (test originals above reconstructions; not for a flow, which has no latent code) into
    ``out_dir`` (default: the run directory); for 2-D vector data (event shape (2,)) ``samples.png`` is instead a scatter
    of test data and draws x ~ p(x) of the program, and other non-image data get no
    pictures; for a VQ-VAE run with a code prior fitted by ``lvm-pyro fit-prior`` also
    ``prior_samples.png`` and ``prior_vs_reconstructions.png``
    (:mod:`lvm_pyro.training.prior_stage`); for a VQ-VAE-2 run with fitted priors
    ``prior_samples.png``, top codes then bottom codes given top, one row per class
    (:mod:`lvm_pyro.training.prior_stage2`).

    Raises:
        ValueError: ``num_samples < 1``.
        CheckpointError: see :func:`load_run`.
    """
    if num_samples < 1:
        raise ConfigError("num_samples", f"must be >= 1, got {num_samples}")
    run_dir = Path(run_dir)
    out_dir = run_dir if out_dir is None else Path(out_dir)
    if model is None:
        model, guide, config, _ = load_run(run_dir, data_root=data_root)
    ensure_directory(out_dir, "picture folder")
    config = as_run_config(config)
    x = prepare_data(config, "test", config.train.device)
    if x.dim() == 2 and x.shape[1] == 2:  # 2-D data: a scatter of data vs model samples
        draws = prior_draws(model, x[:max(num_samples, 500)])
        return {"samples": save_scatter(x[:max(num_samples, 500)], draws, out_dir / "samples.png")}
    if x.dim() != 4:  # no picture for other non-image data
        return {}
    x = x[:num_samples]
    out = {"samples": save_grid(prior_samples(model, x), out_dir / "samples.png")}
    if config.model_name != "flow":  # an invertible flow has no latent code to reconstruct from
        out["reconstructions"] = save_reconstructions(model, guide, x[:32],
                                                      out_dir / "reconstructions.png")
    from .prior_stage import prior_is_current, save_prior_samples
    from .prior_stage2 import is_vqvae2, load_vqvae2_priors, save_class_samples
    if prior_is_current(run_dir) and is_vqvae2(model):  # both levels: top, then bottom | top
        p = next(model.parameters())
        top, bottom = load_vqvae2_priors(run_dir, str(p.device))
        out["prior_samples"] = save_class_samples(out_dir / "prior_samples.png", model, top,
                                                  bottom, num_samples)
    elif prior_is_current(run_dir):  # a code prior fitted after training: decoded prior samples
        out.update(save_prior_samples(run_dir, model, guide, x, num_samples=num_samples,
                                      out_dir=out_dir))
    return out
