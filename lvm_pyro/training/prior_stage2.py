"""Stage two of a VQ-VAE-2 run (Razavi et al. 2019, Sec. 3.2): fit both levels' code
priors, report the two-stage bound and the priors' bits/code, draw class-conditional
samples (``lvm-pyro fit-prior RUN_DIR`` and ``lvm-pyro sample RUN_DIR`` on a ``vqvae2``
run).

* Top: :class:`~lvm_pyro.models.AttentionPixelCNNPrior` over the top codes (PixelSNAIL-
  style causal self-attention); bottom: :class:`~lvm_pyro.models.ConditionalPixelCNNPrior`
  over the bottom codes with the top codes as its spatial context. Both class-conditional
  when the run's data have labels (``num_classes`` > 1), unconditional otherwise. They are
  fitted together, by maximum likelihood through one Pyro program that observes both
  levels (the two priors share no parameter, so the joint fit is the two separate fits
  with one optimiser), by the generic :class:`~lvm_pyro.training.loop.Trainer`.
* The model's priors are unconditional in the program: with class-conditional priors the
  model uses their mixture over classes (:class:`~lvm_pyro.models.ClassMixturePrior`,
  uniform class probabilities), so the engine's one-particle log weight is a bound on
  log p(x): log p(x | z_q_top, z_q_bottom) + log p_mix(c_t) + log p_mix(c_b | c_t).
  The bound on log p(x | y) with the true label (``conditional_*``) is reported too.
* Class-conditional sampling uses the prior modules directly (they take ``y``):
  :func:`sample_codes`.

Files in the run directory: ``prior_checkpoint.pt`` (both priors, in one Trainer
checkpoint; hyper-parameters under ``config["prior"]``), ``prior_metrics.json``,
``prior_samples.png`` (one row per class).
"""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path
from typing import Optional

import pyro
import torch
from pyro.infer import Trace_ELBO

from ..guides.empty import EmptyGuide
from ..inference import log_weights
from ..inference.evaluation import nll_report
from ..models import AttentionPixelCNNPrior, ClassMixturePrior, ConditionalPixelCNNPrior
from ..sites import CODES_BOTTOM, CODES_TOP, data_plate
from .checkpoint import CheckpointError, load_checkpoint
from .config import PriorConfig
from .loop import Trainer
from ..registration import CachedPyroModule

__all__ = ["TwoLevelPriorProgram", "encode_two_levels", "fit_vqvae2_priors",
           "load_vqvae2_priors", "sample_codes", "mixture_priors", "is_vqvae2"]

PRIOR_KIND = "vqvae2"


def is_vqvae2(model) -> bool:
    """Whether ``model`` is a two-level VQ-VAE (:class:`~lvm_pyro.models.VQVAE2Model`)."""
    from ..models import VQVAE2Model

    return isinstance(model, VQVAE2Model)


class TwoLevelPriorProgram(CachedPyroModule):
    """The stage-two program of both priors over packed data::

        codes_top ~ prior_top(. | y)                        site "codes_top"    (observed)
        codes_bottom ~ prior_bottom(. | codes_top, y)       site "codes_bottom" (observed)

    inside the ``"data"`` plate. Each datapoint is one int64 row of the packed tensor
    :meth:`pack` writes: the top grid, the bottom grid and the label (ignored by
    unconditional priors), so the generic Trainer can minibatch it as one tensor.

    Args:
        prior_top: :class:`~lvm_pyro.models.AttentionPixelCNNPrior`.
        prior_bottom: :class:`~lvm_pyro.models.ConditionalPixelCNNPrior` (context: the
            top grid).
    """

    def __init__(self, prior_top: AttentionPixelCNNPrior, prior_bottom: ConditionalPixelCNNPrior):
        super().__init__()
        self.prior_top, self.prior_bottom = prior_top, prior_bottom

    @property
    def conditional(self) -> bool:
        return self.prior_top.num_classes is not None

    def pack(self, top: torch.Tensor, bottom: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """(N, h_t, w_t), (N, h_b, w_b), (N,) -> (N, h_t w_t + h_b w_b + 1) int64."""
        n = len(top)
        return torch.cat([top.reshape(n, -1), bottom.reshape(n, -1), y.reshape(n, 1)], 1).long()

    def unpack(self, packed: torch.Tensor):
        """Inverse of :meth:`pack`: (top, bottom, y)."""
        ht, wt = self.prior_top.grid_shape
        hb, wb = self.prior_bottom.grid_shape
        top = packed[..., :ht * wt].reshape(*packed.shape[:-1], ht, wt)
        bottom = packed[..., ht * wt:-1].reshape(*packed.shape[:-1], hb, wb)
        return top, bottom, packed[..., -1]

    def forward(self, packed: torch.Tensor, *, num_data: Optional[int] = None,
                idx: Optional[torch.Tensor] = None) -> None:
        top, bottom, y = self.unpack(packed)
        y = y if self.conditional else None
        with data_plate(packed, num_data, idx):
            pyro.sample(CODES_TOP, self.prior_top.distribution(y), obs=top)
            pyro.sample(CODES_BOTTOM, self.prior_bottom.distribution(top, y), obs=bottom)


@torch.no_grad()
def encode_two_levels(guide, x: torch.Tensor, batch_size: int = 500):
    """The guide's code grids for x (N, ...): (top (N, h_t, w_t), bottom (N, h_b, w_b))
    int64, via ``guide.encode`` (:class:`~lvm_pyro.guides.VQVAE2Guide`)."""
    tops, bottoms = [], []
    for s in range(0, len(x), batch_size):
        out = guide.encode(x[s:s + batch_size])
        tops.append(out.top.indices.long())
        bottoms.append(out.bottom.indices.long())
    return torch.cat(tops), torch.cat(bottoms)


def _build_priors(hyper: dict):
    t, b = hyper["top"], hyper["bottom"]
    top = AttentionPixelCNNPrior(t["num_codes"], t["grid_shape"], t["channels"], t["num_layers"],
                                 t["kernel_size"], t["num_classes"], t["head_dim"],
                                 t["attention_layers"], t["num_heads"])
    bottom = ConditionalPixelCNNPrior(b["num_codes"], b["grid_shape"], b["context_codes"],
                                      b["context_shape"], b["channels"], b["num_layers"],
                                      b["kernel_size"], b["num_classes"], b["head_dim"])
    return top, bottom


def load_vqvae2_priors(run_dir: str | Path, device: str = "cpu"):
    """The fitted (prior_top, prior_bottom) of a VQ-VAE-2 run directory, in eval mode.

    Raises:
        CheckpointError: no ``prior_checkpoint.pt`` (run ``lvm-pyro fit-prior`` first), a
            corrupt one, or one of a one-level VQ-VAE prior.
    """
    from .prior_stage import PRIOR_CHECKPOINT

    path = Path(run_dir) / PRIOR_CHECKPOINT
    if not path.exists():
        raise CheckpointError(f"{path} does not exist; fit the priors first: lvm-pyro fit-prior "
                              f"{run_dir}")
    payload = load_checkpoint(path, map_location=device)
    hyper = payload["config"]["prior"]
    if hyper.get("kind") != PRIOR_KIND:
        raise CheckpointError(f"{path} holds a one-level code prior, not VQ-VAE-2's two; refit "
                              f"with lvm-pyro fit-prior {run_dir} --force")
    program = TwoLevelPriorProgram(*_build_priors(hyper))
    program.load_state_dict(payload["modules"]["model"])
    program.to(device).eval()
    return program.prior_top, program.prior_bottom


def mixture_priors(prior_top, prior_bottom):
    """The model's unconditional priors from the fitted ones: the priors themselves when
    unconditional, else their mixture over classes with uniform class probabilities
    (:class:`~lvm_pyro.models.ClassMixturePrior`): (top, bottom) to set as
    ``model.prior_top`` / ``model.prior_bottom``."""
    if prior_top.num_classes is None:
        return prior_top, prior_bottom
    return ClassMixturePrior(prior_top), ClassMixturePrior(prior_bottom, top=prior_top)


@torch.no_grad()
def sample_codes(prior_top, prior_bottom, num_samples: int, y: Optional[torch.Tensor] = None,
                 *, generator: Optional[torch.Generator] = None):
    """Ancestral codes c_t ~ p(c_t | y), c_b ~ p(c_b | c_t, y) with the cached samplers:
    (top (n, h_t, w_t), bottom (n, h_b, w_b)) int64.

    Args:
        y: (n,) int64 intended classes (class-conditional priors; ``None`` draws them
            uniformly), ignored by unconditional priors.

    Raises:
        ValueError: ``num_samples < 1``; labels outside the priors' classes.
    """
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    if prior_top.num_classes is None:
        y = None
    elif y is None:
        y = torch.randint(prior_top.num_classes, (num_samples,), generator=generator,
                          device=generator.device if generator is not None else "cpu")
    if y is not None:
        y = torch.as_tensor(y).long().expand(num_samples)
        if int(y.min()) < 0 or int(y.max()) >= prior_top.num_classes:
            raise ValueError(f"y must be class labels in [0, {prior_top.num_classes}), got "
                             f"values in [{int(y.min())}, {int(y.max())}]")
        y = y.to(next(prior_top.parameters()).device)
    top = prior_top.sample(num_samples, y, generator=generator)
    bottom = prior_bottom.sample(num_samples, y, context=top, generator=generator)
    return top, bottom


def _labels(run_config, split: str, n: Optional[int]) -> Optional[torch.Tensor]:
    from .run import load_run_data

    labels = getattr(load_run_data(run_config, split), "labels", None)
    return None if labels is None else torch.as_tensor(labels).long()[:n]


def _mean_se(t: torch.Tensor) -> tuple[float, float]:
    t = t.double()
    return float(t.mean()), float(t.std() / math.sqrt(len(t))) if len(t) > 1 else 0.0


def fit_vqvae2_priors(run_dir: str | Path, config: Optional[PriorConfig] = None, *,
                      num_train: Optional[int] = None, num_test: Optional[int] = None,
                      num_pictures: int = 64, resume: bool = False, progress: bool = True,
                      data_root: Optional[str | Path] = None, run=None) -> dict:
    """Stage two of a VQ-VAE-2 run: fit both priors on the guide's codes of the training
    set, then evaluate on the test set and draw class-conditional samples. Called by
    :func:`lvm_pyro.training.prior_stage.fit_prior` for a ``vqvae2`` run (which checks
    that no prior would be overwritten).

    Args:
        run_dir: a VQ-VAE-2 run directory (``lvm-pyro fit --model vqvae2``).
        config: both priors' network (``channels``, ``num_layers``, ``kernel_size``; the
            top prior puts an attention block after every second gated layer) and the fit
            (``epochs``, ``batch_size``, ``lr``, ``seed``).
        num_train, num_test: use the first N training / test points.
        num_pictures: samples in ``prior_samples.png`` (rounded up to a row per class).
        run: the loaded run (:func:`lvm_pyro.training.run.load_run`), to skip reloading.

    Returns:
        the dict written to ``prior_metrics.json`` (nats per example unless bits):
        ``prior_bits_per_code_top`` (-log p(c_t) / (h_t w_t ln 2)),
        ``prior_bits_per_code_bottom`` (-log p(c_b | c_t) / (h_b w_b ln 2)),
        ``prior_bits_per_code`` (both levels per code), with the model's (mixture) priors;
        ``conditional_bits_per_code_*`` given the true label; ``uniform_bits_per_code_*``
        (log2 K); ``two_stage_nll`` / ``two_stage_bits_per_dim`` (-bound on log p(x));
        ``conditional_two_stage_nll`` (-bound on log p(x | y)); ``uniform_prior_nll`` /
        ``_bits_per_dim``; ``reconstruction_nll`` / ``_bits_per_dim``; standard errors,
        grid shapes, codebook sizes, training curve, timings.

    Raises:
        CheckpointError: not a run directory, or a corrupt checkpoint.
        ValueError: not a VQ-VAE-2 run.
    """
    from .run import _versions, _write_json, load_run, prepare_data, test_bits_offset

    config = PriorConfig() if config is None else config
    run_dir = Path(run_dir)
    model, guide, run_config, _ = load_run(run_dir, data_root=data_root) if run is None else run
    if not is_vqvae2(model):
        raise ValueError(f"{run_dir} is not a VQ-VAE-2 run (lvm-pyro fit --model vqvae2)")
    model.eval()
    guide.eval()
    device = torch.device(run_config["device"])
    t0 = time.perf_counter()
    x_train = prepare_data(run_config, "train", device)[:num_train]
    x_test = prepare_data(run_config, "test", device)[:num_test]
    y_train, y_test = _labels(run_config, "train", num_train), _labels(run_config, "test", num_test)
    num_classes = None
    if y_train is not None and int(y_train.max()) > 0:
        num_classes = int(max(y_train.max(), y_test.max() if y_test is not None else 0)) + 1
    if num_classes is None:  # no labels: unconditional priors, a dummy label column
        y_train = torch.zeros(len(x_train), dtype=torch.long)
        y_test = torch.zeros(len(x_test), dtype=torch.long)
    y_train, y_test = y_train.to(device), y_test.to(device)
    top_train, bottom_train = encode_two_levels(guide, x_train)
    top_test, bottom_test = encode_two_levels(guide, x_test)
    encode_seconds = time.perf_counter() - t0
    kt, kb = model.quantizer_top.codebook_size, model.quantizer_bottom.codebook_size
    nt, nb = math.prod(model.top_shape), math.prod(model.bottom_shape)

    pyro.clear_param_store()
    pyro.set_rng_seed(config.seed)
    c, layers, kernel = config.channels, config.num_layers, config.kernel_size
    heads = 4 if c % 4 == 0 else 1
    prior_top = AttentionPixelCNNPrior(kt, model.top_shape, c, layers, kernel, num_classes,
                                       num_heads=heads)
    prior_bottom = ConditionalPixelCNNPrior(kb, model.bottom_shape, kt, model.top_shape, c,
                                            layers, kernel, num_classes)
    program = TwoLevelPriorProgram(prior_top, prior_bottom).to(device)
    hyper = {"kind": PRIOR_KIND, "top": prior_top.hyperparameters,
             "bottom": prior_bottom.hyperparameters}
    data_train = program.pack(top_train, bottom_train, y_train)

    def per_level(top, bottom, y):
        """(log p(c_t | y), log p(c_b | c_t, y)) per datapoint, nats (the true label)."""
        yy = y if program.conditional else None
        lt, lb = [], []
        with torch.no_grad():
            for s in range(0, len(top), 500):
                sl = slice(s, s + 500)
                lt.append(prior_top.log_prob(top[sl], None if yy is None else yy[sl]))
                lb.append(prior_bottom.log_prob(bottom[sl], None if yy is None else yy[sl],
                                                context=top[sl]))
        return torch.cat(lt), torch.cat(lb)

    def test_bits(trainer: Trainer, _m) -> dict:
        program.eval()
        lt, lb = per_level(top_test[:500], bottom_test[:500], y_test[:500])
        program.train()
        return {"test_bits_per_code_top": float(-lt.mean() / (nt * math.log(2))),
                "test_bits_per_code_bottom": float(-lb.mean() / (nb * math.log(2)))}

    from .prior_stage import PRIOR_CHECKPOINT, PRIOR_METRICS, fitted_to

    trainer = Trainer(program, EmptyGuide(), Trace_ELBO(max_plate_nesting=1), lr=config.lr,
                      batch_size=config.batch_size, seed=config.seed, binarization="none",
                      checkpoint_path=run_dir / PRIOR_CHECKPOINT,
                      config={"prior": hyper, "batch_size": config.batch_size, "lr": config.lr,
                              "seed": config.seed, "num_train": len(data_train),
                              "fitted_to": fitted_to(run_dir)},
                      progress=progress, callbacks=[test_bits])
    t1 = time.perf_counter()
    history = trainer.fit(data_train, config.epochs, resume=resume)
    train_seconds = time.perf_counter() - t1
    program.eval()

    t2 = time.perf_counter()
    lt, lb = per_level(top_test, bottom_test, y_test)  # given the true label
    offset = test_bits_offset(run_config, x_test)
    model.prior_top, model.prior_bottom = None, None
    with torch.no_grad():
        uniform = torch.cat([log_weights(model, guide, x_test[s:s + 500], 1).log_w[0]
                             for s in range(0, len(x_test), 500)])
        rec = uniform + model.code_bits * math.log(2)  # log p(x | z_q_top, z_q_bottom)
        model.prior_top, model.prior_bottom = mixture_priors(prior_top, prior_bottom)
        try:
            bound = torch.cat([log_weights(model, guide, x_test[s:s + 200], 1).log_w[0]
                               for s in range(0, len(x_test), 200)])
            top_mix = torch.cat([model.prior_top.log_prob(top_test[s:s + 200])
                                 for s in range(0, len(x_test), 200)])
        finally:
            model.prior_top, model.prior_bottom = None, None
    bottom_mix = bound - rec - top_mix  # log p_mix(c_b | c_t)
    ts, un, rc = nll_report(bound, offset), nll_report(uniform, offset), nll_report(rec, offset)
    cond = nll_report(rec + lt + lb, offset)
    ln2 = math.log(2)

    def bits(lp: torch.Tensor, n: int) -> tuple[float, float]:
        m, se = _mean_se(-lp)
        return m / (n * ln2), se / (n * ln2)

    (bt, bt_se), (bb, bb_se), (ba, ba_se) = bits(top_mix, nt), bits(bottom_mix, nb), bits(
        top_mix + bottom_mix, nt + nb)
    (ct, ct_se), (cb, cb_se) = bits(lt, nt), bits(lb, nb)
    metrics = {
        "model": "vqvae2", "class_conditional": program.conditional, "num_classes": num_classes,
        "prior_bits_per_code_top": bt, "prior_bits_per_code_top_se": bt_se,
        "prior_bits_per_code_bottom": bb, "prior_bits_per_code_bottom_se": bb_se,
        "prior_bits_per_code": ba, "prior_bits_per_code_se": ba_se,
        "conditional_bits_per_code_top": ct, "conditional_bits_per_code_top_se": ct_se,
        "conditional_bits_per_code_bottom": cb, "conditional_bits_per_code_bottom_se": cb_se,
        "uniform_bits_per_code_top": math.log2(kt), "uniform_bits_per_code_bottom": math.log2(kb),
        "two_stage_nll": ts.nll, "two_stage_nll_se": ts.nll_se,
        "two_stage_bits_per_dim": ts.bits_per_dim, "two_stage_bits_per_dim_se": ts.bits_per_dim_se,
        "conditional_two_stage_nll": cond.nll, "conditional_two_stage_nll_se": cond.nll_se,
        "conditional_two_stage_bits_per_dim": cond.bits_per_dim,
        "uniform_prior_nll": un.nll, "uniform_prior_nll_se": un.nll_se,
        "uniform_prior_bits_per_dim": un.bits_per_dim,
        "reconstruction_nll": rc.nll, "reconstruction_nll_se": rc.nll_se,
        "reconstruction_bits_per_dim": rc.bits_per_dim,
        "bits_per_dim_offset_nats": offset.offset_nats, "nll_note": offset.note,
        "num_dims": offset.num_dims, "code_bits": model.code_bits,
        "grid_shape_top": list(model.top_shape), "grid_shape_bottom": list(model.bottom_shape),
        "codebook_size_top": kt, "codebook_size_bottom": kb,
        "codes_used_train_top": int(torch.unique(top_train).numel()),
        "codes_used_train_bottom": int(torch.unique(bottom_train).numel()),
        "num_train_points": len(data_train), "num_test_points": len(x_test),
        "prior": hyper, "prior_config": dataclasses.asdict(config),
        "bound_note": ("class-conditional priors enter the model as their mixture over "
                       "classes with uniform weights, so two_stage_nll bounds -log p(x); "
                       "conditional_two_stage_nll bounds -log p(x | y) with the true label"
                       if program.conditional else "unconditional priors"),
        "train_curve": history, "encode_seconds": encode_seconds,
        "train_seconds": train_seconds, "eval_seconds": time.perf_counter() - t2,
        "versions": _versions(), "run_config": run_config,
    }
    _write_json(run_dir / PRIOR_METRICS, metrics)
    save_class_samples(run_dir / "prior_samples.png", model, prior_top, prior_bottom,
                       num_pictures, seed=config.seed)
    return metrics


@torch.no_grad()
def save_class_samples(path: str | Path, model, prior_top, prior_bottom, num_samples: int = 64,
                       *, seed: int = 0) -> Path:
    """Decoded prior samples: one row per class (``ceil(num_samples / C)`` each) for
    class-conditional priors, else ``num_samples`` unconditional draws. Returns the path."""
    from .pictures import save_grid

    p = next(prior_top.parameters())
    gen = torch.Generator(device=p.device).manual_seed(seed)
    classes = prior_top.num_classes
    if classes is None:
        y, nrow = None, 8
    else:
        per = max(1, -(-num_samples // classes))
        y, nrow = torch.arange(classes, device=p.device).repeat_interleave(per), per
    n = num_samples if y is None else len(y)
    top, bottom = sample_codes(prior_top, prior_bottom, n, y, generator=gen)
    return save_grid(model.decode_codes(top, bottom), Path(path), nrow=nrow)
