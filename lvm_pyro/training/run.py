"""Run directories: train from a configuration, evaluate, sample, and :func:`load_run`.

A run directory holds ``config.json``, ``checkpoint.pt`` (see
:mod:`lvm_pyro.training.checkpoint`), ``metrics.json``, ``samples.png``,
``reconstructions.png`` and ``loss_curve.png``.
"""

from __future__ import annotations

import json
import math
import platform
import time
from pathlib import Path
from typing import Any, NamedTuple, Optional

import pyro
import pyro.poutine as poutine
import torch

from ..data import Binarizer, binarize_test, dequantize_test, load_dataset
from ..data.datasets import DATASET_LEVELS
from ..inference import elbo_per_datapoint, log_marginal_likelihood, summarize_nll
from .builders import build_callbacks, build_elbo, build_metrics, build_model
from .checkpoint import CheckpointError, load_checkpoint, restore_params
from ..inference.program import trace_guide_then_model
from .loop import Trainer
from .pictures import prior_samples, save_grid, save_loss_curve, save_reconstructions

__all__ = ["Run", "load_run", "train_run", "evaluate_run", "sample_run", "prepare_data",
           "DEFAULT_CONFIG"]

CONFIG_FILE, CHECKPOINT_FILE, METRICS_FILE = "config.json", "checkpoint.pt", "metrics.json"

DEFAULT_CONFIG: dict[str, Any] = {
    "model": "vae", "data": "digits", "data_root": None, "z_dim": 10, "hidden_dim": 200,
    "num_hidden": 2, "network": "mlp", "activation": "tanh", "likelihood": "bernoulli",
    "elbo": "trace", "num_particles": 1, "batch_size": 100, "lr": 1e-3, "epochs": 60,
    "seed": 0, "binarization": "dynamic", "device": "cpu",
    "gradient": "standard",  # IWAE_ELBO's estimator (--elbo iwae): standard | dreg | stl
    # VQ-VAE (lvm-pyro fit --model vqvae --likelihood discretized_logistic --binarization none)
    "codebook_size": 512, "embedding_dim": 16, "commitment_weight": 0.25, "decay": 0.99,
    "dead_code_threshold": 1.0, "num_mixtures": 1, "channels": 64,
    # KL weighting (--beta, --kl-warmup optimiser steps, --free-bits nats per latent dim)
    # and the sigmoid belief net's depth (--model sbn)
    "beta": 1.0, "kl_warmup": 0, "free_bits": 0.0, "num_stochastic_layers": 1,
}


class Run(NamedTuple):
    """A finished (or interrupted) run: ``model`` and ``guide`` with trained parameters,
    its ``config`` dict and ``path``."""

    model: Any
    guide: Any
    config: dict
    path: Path


def prepare_data(config: dict, split: str, device: torch.device | str = "cpu") -> torch.Tensor:
    """The tensor a run trains / evaluates on: (N, C, H, W) float on ``device``. The test
    split is binarised (or, with ``binarization="dequantize"``, dequantised) once with
    seed 0; training data stay intensities (the Trainer transforms them per epoch)."""
    ds = load_dataset(config["data"], split, config.get("data_root"))
    x = ds.images
    mode = config.get("binarization", "dynamic")
    if split == "test" and mode == "dequantize":
        x = dequantize_test(x, ds.levels, seed=0)
    elif split == "test" and mode != "none":
        x = binarize_test(x, seed=0)
    return x.to(device)


def validate_config(config: dict) -> None:
    """Check a run configuration before anything is written or trained.

    Raises:
        ValueError: unknown device or CUDA requested without a GPU; bad epochs.
    """
    try:
        device = torch.device(config["device"])
    except RuntimeError as e:
        raise ValueError(f"--device {config['device']!r} is not a torch device: use cpu or cuda") from e
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda, but torch finds no CUDA device here; use --device cpu")
    if int(config.get("epochs", 1)) < 0:
        raise ValueError(f"epochs must be >= 0, got {config['epochs']}")


def _versions() -> dict:
    import arviz
    import torchvision

    from .. import __version__
    return {"lvm_pyro": __version__, "pyro": pyro.__version__, "torch": torch.__version__,
            "torchvision": torchvision.__version__, "arviz": arviz.__version__,
            "python": platform.python_version()}


def _write_json(path: Path, obj: Any) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True))
    tmp.replace(path)


def train_run(config: dict, out: str | Path, *, resume: bool = False, progress: bool = True,
              num_samples: int = 1000, num_test: Optional[int] = None) -> dict:
    """Train a model from ``config`` into run directory ``out``, then evaluate and draw.

    Args:
        config: keys of :data:`DEFAULT_CONFIG` (missing ones take the defaults).
        out: run directory (created).
        resume: continue from ``out/checkpoint.pt`` (exactly; the config must match).
        num_samples: K importance samples for the test NLL.
        num_test: evaluate on the first ``num_test`` test points (all when ``None``).

    Returns:
        the metrics dict also written to ``out/metrics.json``.
    """
    config = {**DEFAULT_CONFIG, **config}
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    cfg_path = out / CONFIG_FILE
    if resume and cfg_path.exists():
        old = json.loads(cfg_path.read_text())
        stable = {k: v for k, v in config.items() if k != "epochs"}
        if {k: old.get(k) for k in stable} != stable:
            diff = {k: (old.get(k), v) for k, v in stable.items() if old.get(k) != v}
            raise CheckpointError(f"--resume with a different configuration (was vs now: {diff}); "
                                  "use the original flags or a new --out directory")
    if num_samples < 1:
        raise ValueError(f"--num-samples must be >= 1, got {num_samples}")
    if num_test is not None and num_test < 1:
        raise ValueError(f"--num-test must be >= 1, got {num_test}")
    validate_config(config)
    device = torch.device(config["device"])
    t0 = time.perf_counter()
    x_train = prepare_data(config, "train", device)
    pyro.clear_param_store()
    pyro.set_rng_seed(config["seed"])
    model, guide = build_model(config, x_train.shape[1:])
    elbo = build_elbo(config)
    _write_json(cfg_path, config)  # only once the run is known to be buildable
    if isinstance(model, torch.nn.Module):
        model.to(device)
    if isinstance(guide, torch.nn.Module):
        guide.to(device)
    levels = DATASET_LEVELS[config["data"]]
    trainer = Trainer(model, guide, elbo, lr=config["lr"],
                      batch_size=config["batch_size"], seed=config["seed"],
                      binarization=Binarizer(config["binarization"], config["seed"] + 1, levels),
                      checkpoint_path=out / CHECKPOINT_FILE,
                      config={k: v for k, v in config.items() if k != "epochs"},
                      progress=progress, callbacks=build_callbacks(config, model, guide))
    if hasattr(trainer.elbo, "step_source"):  # KL warm-up reads the trainer's step (exact on resume)
        trainer.elbo.step_source = lambda: trainer.step
    history = trainer.fit(x_train, config["epochs"], resume=resume)
    train_seconds = time.perf_counter() - t0
    save_loss_curve(history, out / "loss_curve.png")
    metrics = evaluate_run(out, num_samples=num_samples, num_test=num_test,
                           model=model, guide=guide, config=config, progress=progress)
    metrics.update({"train_curve": history, "train_seconds": train_seconds})
    _write_json(out / METRICS_FILE, metrics)
    sample_run(out, model=model, guide=guide, config=config)
    return metrics


def load_run(run_dir: str | Path, device: Optional[str] = None) -> Run:
    """Rebuild the model and guide of a run directory with its trained parameters.

    Raises:
        CheckpointError: missing config or checkpoint, corrupt file, or a checkpoint that
            does not match the configuration's architecture.
    """
    run_dir = Path(run_dir)
    cfg_path = run_dir / CONFIG_FILE
    if not cfg_path.exists():
        raise CheckpointError(f"{run_dir} has no {CONFIG_FILE}; is it a run directory made "
                              "by `lvm-pyro fit --out DIR`?")
    config = {**DEFAULT_CONFIG, **json.loads(cfg_path.read_text())}
    if device is not None:
        config["device"] = device
    payload = load_checkpoint(run_dir / CHECKPOINT_FILE, map_location=config["device"])
    ds = load_dataset(config["data"], "test", config.get("data_root"))
    x = ds.images[:2].to(config["device"])
    if config.get("binarization", "dynamic") != "none":
        x = binarize_test(x)
    pyro.clear_param_store()
    model, guide = build_model(config, x.shape[1:])
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
                 progress: bool = False) -> dict:
    """Test ELBO and importance-sampled test NLL of a run.

    Returns a dict with ``test_elbo`` (mean per-datapoint ELBO, nats, one sample per
    point), ``test_nll`` (mean -log p(x), nats per example, ``num_samples`` importance
    samples with the guide as proposal), ``test_nll_se`` (standard error over test
    points), ``test_bits_per_dim``, ``bits_per_dim_offset_nats`` (0 for discrete
    likelihoods; D log 256 for continuous ones on 8-bit data), ``num_test_points``,
    ``num_importance_samples``, ``num_seeds`` (1) and ``versions``.
    """
    if num_samples < 1:
        raise ValueError(f"--num-samples must be >= 1, got {num_samples}")
    if num_test is not None and num_test < 1:
        raise ValueError(f"--num-test must be >= 1, got {num_test}")
    if model is None:
        model, guide, config, _ = load_run(run_dir)
    x = prepare_data(config, "test", config["device"])
    if num_test is not None:
        x = x[:num_test]
    elbos, logps = [], []
    t0 = time.perf_counter()
    starts = range(0, len(x), batch_size)
    if progress:
        from tqdm.auto import tqdm
        starts = tqdm(starts, desc=f"evaluating (K={num_samples})", unit="batch")
    for start in starts:
        xb = x[start:start + batch_size]
        elbos.append(elbo_per_datapoint(model, guide, xb, num_samples=1))
        logps.append(log_marginal_likelihood(model, guide, xb, num_samples=num_samples))
    elbo = torch.cat(elbos)
    logp = torch.cat(logps)
    num_dims = int(math.prod(x.shape[1:]))
    from ..models.likelihoods import make_likelihood
    discrete = make_likelihood(config.get("likelihood", "bernoulli")).discrete
    mode = config.get("binarization", "dynamic")
    levels = DATASET_LEVELS.get(config["data"], 256)
    if discrete:  # a probability mass: -log P(x) directly
        offset, note = 0.0, "discrete likelihood: test_nll = -log P(x)"
    elif mode == "dequantize":  # Theis et al. 2016: -log P(k) <= -log p((k + u) / L) + D log L
        offset = num_dims * math.log(levels)
        note = (f"continuous likelihood on uniformly dequantised data y = (k + u) / {levels}: "
                f"test_nll = -log p(y) + D log {levels} (offset {offset:.2f} nats), an upper "
                "bound in expectation on the discrete -log P(k); u drawn once with seed 0")
    else:
        offset, note = None, ("continuous density evaluated at discrete points: NOT a bound on "
                              "-log P(x), no bits/dim; use --binarization dequantize")
    s = summarize_nll(logp, num_dims, offset_nats=offset or 0.0)
    test_binarization = {"dequantize": "fixed uniform dequantisation, seed 0", "none": "none"}.get(
        mode, "fixed Bernoulli draw, seed 0")
    metrics = {
        "test_elbo": float(elbo.mean()), "test_elbo_se": float(elbo.std() / math.sqrt(len(elbo))),
        "test_nll": s.nll + (offset or 0.0), "test_nll_se": s.nll_se,
        "test_bits_per_dim": None if offset is None else s.bits_per_dim,
        "test_nll_density": s.nll if not discrete else None,
        "bits_per_dim_offset_nats": offset, "nll_note": note, "num_test_points": s.num_points,
        "num_importance_samples": num_samples, "num_seeds": 1,
        "test_binarization": test_binarization, "train_binarization": mode,
        "eval_seconds": time.perf_counter() - t0, "versions": _versions(),
        "config": config,
    }
    metrics.update(build_metrics(config, model, guide, x))  # model-specific (e.g. VQ-VAE usage)
    return metrics


def sample_run(run_dir: str | Path, *, num_samples: int = 64, model=None, guide=None,
               config=None) -> dict[str, Path]:
    """Write ``samples.png`` (decoder means at prior draws) and ``reconstructions.png``
    (test originals above reconstructions) into the run directory; for a VQ-VAE run with
    a code prior fitted by ``lvm-pyro fit-prior`` also ``prior_samples.png`` and
    ``prior_vs_reconstructions.png`` (:mod:`lvm_pyro.training.prior_stage`)."""
    if num_samples < 1:
        raise ValueError(f"--num-samples must be >= 1, got {num_samples}")
    run_dir = Path(run_dir)
    if model is None:
        model, guide, config, _ = load_run(run_dir)
    x = prepare_data(config, "test", config["device"])[:num_samples]
    out = {"samples": save_grid(prior_samples(model, x), run_dir / "samples.png"),
           "reconstructions": save_reconstructions(model, guide, x[:32], run_dir / "reconstructions.png")}
    from .prior_stage import prior_is_current, save_prior_samples
    if prior_is_current(run_dir):  # a code prior fitted after training: decoded prior samples
        out.update(save_prior_samples(run_dir, model, guide, x, num_samples=num_samples))
    return out
