"""The generic training loop: any model, guide and Pyro ELBO (no model-specific code).

One optimiser step per minibatch: ``elbo.loss_and_grads(model, guide, x_b, num_data=N,
idx=idx)`` then ``torch.optim.Adam``. This is what ``pyro.infer.SVI`` does, with the
parameters collected once from the Pyro param store (sorted by name) into a single torch
optimiser (fused: one kernel for every parameter, where torch has one for their device),
so that the optimiser state is a plain ``state_dict`` for checkpoints and the per-step
overhead of SVI's per-parameter optimisers is avoided. A plain ``Trace_ELBO`` runs on
the lean trace path (:class:`~lvm_pyro.inference.LeanTrace_ELBO`: the same values and
gradients, without building full traces every step).

Everything that drives training is in the checkpoint (:meth:`Trainer.state`): Pyro
parameters (including Pyro's decaying-average baselines), module state dicts (buffers such
as VQ codebook statistics), the optimiser, every RNG, the data transform's state and the
objective's state (``elbo.state_dict()`` when it has one, e.g. the step counter of a KL
schedule), so that a resumed run equals the uninterrupted one bit for bit.
"""

from __future__ import annotations

import contextlib
import math
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import pyro
import pyro.poutine as poutine
import torch
from pyro.infer import ELBO, Trace_ELBO
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_leaves

from ..checks import skip_data_checks, validate_data
from .compile import compile_networks as compile_networks_of
from ..registration import cached_registration, objective_allows_cached_registration
from ..data.binarize import Binarizer
from ..inference.lean_trace import LeanTrace_ELBO
from ..inference.program import (accepted_keywords, adapt_program, check_dtypes,
                                 check_param_ownership)
from .checkpoint import (BASELINE_AVG_PREFIX, CheckpointError, get_rng_state, load_checkpoint,
                         restore_params, save_checkpoint, set_rng_state)
from .distributed import DistributedContext, find_quantizers, rank_seed, single_process
from .progress import EpochProgress

__all__ = ["Trainer", "EpochMetrics", "adapt_program", "DivergenceWarning", "loss_rose",
           "UnregisteredParameterWarning", "make_adam"]


class UnregisteredParameterWarning(UserWarning):
    """Tensors that require grad reach the training loss but are not in Pyro's param
    store, so no optimiser moves them (a guide that forgot ``pyro.module``)."""


class _LeafRecorder(TorchFunctionMode):
    """Records every leaf tensor that requires grad and enters a torch operation while
    active (the tensors a backward pass through those operations writes ``.grad`` into)."""

    def __init__(self):
        super().__init__()
        self.leaves: dict[int, torch.Tensor] = {}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        for t in tree_leaves((args, kwargs)):
            if isinstance(t, torch.Tensor) and t.requires_grad and t.grad_fn is None:
                self.leaves.setdefault(id(t), t)
        return func(*args, **kwargs)


class DivergenceWarning(RuntimeWarning):
    """The training loss rose for a whole epoch (see :func:`loss_rose`)."""


def loss_rose(before: Sequence[float], after: Sequence[float], tolerance: float) -> bool:
    """Whether the per-step losses ``after`` sit above ``before``, beyond noise:

        median(after) - median(before) > max(tolerance * |median(before)|, 3 * se)

    with se = sqrt(s_b^2 / n_b + s_a^2 / n_a), s = 1.4826 * MAD (the median absolute
    deviation, a scale robust to the heavy tails of a diverging loss; 0 for one value).

    Args:
        before: per-step training losses (nats per datapoint), >= 1 value.
        after: later per-step losses, >= 2 values.
        tolerance: relative rise that counts, >= 0.

    Returns:
        ``False`` when ``before`` is empty or ``after`` has fewer than 2 values.
    """
    if len(before) < 1 or len(after) < 2:
        return False

    def centre_and_var(values):
        v = torch.tensor(list(values), dtype=torch.float64)
        med = float(v.median())
        mad = float((v - med).abs().median()) if len(v) > 1 else 0.0
        return med, (1.4826 * mad) ** 2 / len(v)

    b, var_b = centre_and_var(before)
    a, var_a = centre_and_var(after)
    return a - b > max(tolerance * abs(b), 3.0 * math.sqrt(var_b + var_a))


@dataclass
class EpochMetrics:
    """One epoch's record: ``loss`` is the mean training objective per datapoint in nats
    (-ELBO for Trace_ELBO; the weighted objective for a KL-weighted, free-bits or capacity
    ELBO, e.g. gamma |KL - C| in place of the KL); ``seconds`` the epoch's wall time;
    ``extra`` holds what callbacks and the objective add: ``kl_weight`` (the objective's KL
    weight at the epoch's last step, when it has one) and ``capacity_nats`` (the capacity
    C at the epoch's end, for a capacity objective)."""

    epoch: int
    loss: float
    seconds: float
    extra: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {"epoch": self.epoch, "loss": self.loss, "seconds": self.seconds, **self.extra}


class Trainer:
    """Stochastic variational inference with minibatches, checkpoints and exact resume.

    Args:
        model, guide: Pyro programs following :mod:`lvm_pyro.sites`.
        elbo: any ``pyro.infer.ELBO`` (``Trace_ELBO()``, ``TraceMeanField_ELBO()``,
            ``TraceEnum_ELBO()``, ours ...).
        lr: Adam learning rate (> 0).
        batch_size: minibatch size B (>= 1); the data plate scales by N / B.
        seed: seeds parameters' sampling, shuffling (``seed``) and the data transform
            built from ``binarization`` (``seed + 1``).
        transform: the data transform applied to the whole training set at the start of
            every epoch: a callable x (N, ...) -> (N, ...), e.g.
            :class:`lvm_pyro.data.Binarizer` (binarise, dequantise, identity). Its
            ``state_dict()`` / ``load_state_dict()``, when it has them, are checkpointed,
            and the parameter-discovery pass restores its state after using it.
        binarization: shorthand for ``transform=Binarizer(binarization, seed + 1)``:
            ``"dynamic"`` | ``"static"`` | ``"none"`` | ``"dequantize"`` (256 levels), or
            a ``Binarizer``. When neither is given it follows the model's likelihood:
            ``"none"`` for a model whose ``likelihood`` is continuous (``discrete`` False,
            e.g. Gaussian), else ``"dynamic"``.
        checkpoint_path: file written atomically at the end of every epoch (or ``None``).
        config: JSON-able run configuration stored in the checkpoint and compared on
            resume (a mismatch raises :class:`CheckpointError`).
        progress: report progress: a tqdm bar with the running loss when stderr is a
            terminal, else one line per epoch.
        callbacks: ``cb(trainer, metrics: EpochMetrics)`` called after every epoch.
        clip_norm: optional clipping of the total gradient norm over every parameter
            (all optimiser parameter groups together), > 0.
        modules: torch modules whose state dicts (buffers included) are checkpointed;
            defaults to model and guide when they are ``nn.Module``.
        validate: keep Pyro's distribution validation on for every step. By default the
            first (parameter-discovery) pass runs validated, so a program with bad shapes
            or out-of-support values fails there with Pyro's message, and the training
            steps then run without the per-site checks (a third of a small VAE's step
            time here; our models check their data's support themselves). Those data
            checks run once per epoch on the whole transformed training set, before the
            epoch's first step, through each program's ``check_data``, and the steps then
            run inside :func:`lvm_pyro.checks.skip_data_checks`; when the model or guide
            has no ``check_data`` every step keeps its own checks.
        divergence_tolerance: warn (:class:`DivergenceWarning`) when the training loss
            rises for a whole epoch: the median per-step loss of an epoch exceeds the
            previous epoch's (for the first epoch: the loss of the very first step, with
            >= 4 steps in the epoch) by more than this fraction of it and 3 standard
            errors (:func:`loss_rose`). Full-batch training (one step per epoch) is not
            checked, nor are steps over which the objective itself changes (its
            ``current_beta``, e.g. during a KL warm-up, which raises the loss by design).
            ``None`` turns the check off.
        fused_optimizer: use ``torch.optim.Adam(fused=True)`` (one kernel for all
            parameters) when every parameter is a floating-point tensor on a device with
            a fused kernel (CPU, CUDA); ``False`` (or another device) uses torch's default
            Adam. The two agree to rounding (last bits of float32), not bit for bit;
            a resumed run equals the uninterrupted one with either.
        aggressive: an :class:`~lvm_pyro.training.aggressive.AggressiveEncoder`: aggressive
            inference-network training (He et al. 2019, Algorithm 1) while its mode is on
            (encoder-only steps on fresh minibatches until the loss stops improving, then
            one decoder-only step); its state is checkpointed. The guide must be an
            ``nn.Module`` (its parameters are the encoder's).
        compile_networks: compile the programs' networks in place with ``torch.compile``
            (:mod:`lvm_pyro.training.compile`): the first steps pay the compilation;
            results are deterministic per seed and differ from an uncompiled run in the
            last bits; a run resumed in a new process agrees with the uninterrupted one to
            float32 rounding, not bit for bit. Warns when the programs hold no network
            to compile (plain functions calling ``pyro.module``).
        distributed: the :class:`~lvm_pyro.training.distributed.DistributedContext` of a
            data-parallel job (:func:`~lvm_pyro.training.distributed.init_from_environment`):
            each rank trains on its shard of every global minibatch of ``batch_size`` rows,
            gradients are summed over ranks, rank 0 alone writes the checkpoint and shows
            progress. ``None``: one process.

    Raises:
        ValueError: bad hyper-parameters, or both ``transform`` and ``binarization``.
    """

    def __init__(self, model: Callable, guide: Callable, elbo: ELBO, *, lr: float = 1e-3,
                 batch_size: int = 100, seed: int = 0,
                 transform: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
                 binarization: Optional[str | Binarizer] = None,
                 checkpoint_path: Optional[str | Path] = None,
                 config: Optional[dict[str, Any]] = None, progress: bool = True,
                 callbacks: Sequence[Callable] = (), clip_norm: Optional[float] = None,
                 modules: Optional[dict[str, torch.nn.Module]] = None,
                 validate: bool = False, divergence_tolerance: Optional[float] = 0.5,
                 aggressive: Optional[Any] = None, fused_optimizer: bool = True,
                 distributed: Optional[DistributedContext] = None,
                 compile_networks: bool = False):
        if not lr > 0:
            raise ValueError(f"lr must be > 0, got {lr}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if clip_norm is not None and not clip_norm > 0:
            raise ValueError(f"clip_norm must be > 0 (or None for no clipping), got {clip_norm}")
        if divergence_tolerance is not None and not divergence_tolerance >= 0:
            raise ValueError(f"divergence_tolerance must be >= 0 or None, got {divergence_tolerance}")
        if transform is not None and binarization is not None:
            raise ValueError("give either transform= or its shorthand binarization=, not both")
        if aggressive is not None and not isinstance(guide, torch.nn.Module):
            raise ValueError("aggressive encoder training needs the guide to be a torch "
                             "nn.Module (its parameters are the encoder's)")
        self.aggressive = aggressive
        self.dist = single_process() if distributed is None else distributed
        self._quantizers: list = []
        self.model, self.guide, self.elbo = model, guide, elbo
        # the objective a step runs: Pyro's Trace_ELBO on the lean trace path (same numbers)
        self._objective = LeanTrace_ELBO.from_elbo(elbo) if type(elbo) is Trace_ELBO else elbo
        self.fused_optimizer = bool(fused_optimizer)
        self.compiled = compile_networks_of(model, guide) if compile_networks else []
        if compile_networks and not self.compiled:
            warnings.warn("compile_networks=True found no network to compile: only the plain "
                          "nn.Module children of PyroModule programs are compiled (a program "
                          "written as a function calling pyro.module runs eager; compile its "
                          "modules yourself with module.compile())", UserWarning, stacklevel=2)
        self._model, self._guide = adapt_program(model), adapt_program(guide)
        self.lr, self.batch_size, self.seed = float(lr), int(batch_size), int(seed)
        if transform is None:
            binarization = _default_binarization(model) if binarization is None else binarization
            transform = (binarization if isinstance(binarization, Binarizer)
                         else Binarizer(binarization, seed + 1))
        elif not callable(transform):
            raise ValueError(f"transform must be callable (x -> x), got {type(transform).__name__}")
        self.transform = transform
        self.divergence_tolerance = divergence_tolerance
        self.checkpoint_path = None if checkpoint_path is None else Path(checkpoint_path)
        self.config = dict(config or {})
        self.progress = progress and self.dist.is_main
        self.callbacks = list(callbacks)
        self.clip_norm = clip_norm
        self.validate = bool(validate)
        if modules is None:
            modules = {k: m for k, m in (("model", model), ("guide", guide))
                       if isinstance(m, torch.nn.Module)}
        self.modules = modules
        self.shuffle = torch.Generator().manual_seed(self.seed)
        self.epoch = 0
        self.step = 0
        self.history: list[dict] = []
        self._last_losses: list[float] = []  # per-step losses of the last epoch
        self._last_weights: list = []  # the objective's KL weight at those steps
        self.optimizer: Optional[torch.optim.Optimizer] = None
        self.param_names: list[str] = []
        self._store_size = 0
        self._checked_registration = False
        self._data_validated = False  # this epoch's set passed the programs' check_data
        # Loss reported per datapoint: the ELBO estimate is scaled to N when the programs
        # take num_data, else it is the minibatch sum.
        self._scaled = ("num_data" in accepted_keywords(model) and
                        "num_data" in accepted_keywords(guide))

    # -- parameters ------------------------------------------------------------------
    def _discover(self, x: torch.Tensor) -> None:
        """Run the objective once without a step so that every parameter exists."""
        n = x.shape[0]
        b = min(self.batch_size, n)
        # a throwaway transform of the first batch (the data must be in support), then
        # the transform's and the objective's state as they were
        transform_state = _state_of(self.transform)
        elbo_state = _state_of(self.elbo)
        ps = pyro.get_param_store()
        averages = {k: v.detach().clone() for k, v in ps.items() if k.startswith(BASELINE_AVG_PREFIX)}
        rng = get_rng_state()
        try:
            xb = self.transform(x[:b])
            with torch.no_grad(), poutine.block(), pyro.validation_enabled(True):
                try:
                    self.elbo.loss(self._model, self._guide, xb, num_data=n,
                                   idx=torch.arange(b, device=x.device))
                except (RuntimeError, TypeError) as err:  # a dtype mismatch gets its fix named
                    check_dtypes(self.model, self.guide, xb, err)
                    raise
        finally:
            set_rng_state(rng)
            if transform_state is not None:
                self.transform.load_state_dict(transform_state)
            if elbo_state is not None:
                self.elbo.load_state_dict(elbo_state)
            for k, v in averages.items():  # Pyro writes these moving averages even under no_grad
                ps[k] = v
        check_param_ownership(self.modules)
        self._sync_optimizer()

    def _warn_if_unregistered(self, leaves: dict[int, torch.Tensor]) -> None:
        """Warn (:class:`UnregisteredParameterWarning`) naming every tensor that requires
        grad and reached the first step's loss (a leaf that entered its operations and
        received a gradient from its backward pass) but is not in Pyro's param store, so
        that no optimiser moves it."""
        stored = {id(p) for _, p in pyro.get_param_store().named_parameters()}
        modules = {**_referenced_modules(self.model, "model"),
                   **_referenced_modules(self.guide, "guide"), **self.modules}
        names = {id(p): f"{k}.{n}" for k, m in modules.items() for n, p in m.named_parameters()}
        missing = [f"{names[i]} {tuple(t.shape)}" if i in names
                   else f"a tensor of shape {tuple(t.shape)}"
                   for i, t in leaves.items() if i not in stored and t.grad is not None]
        if missing:
            warnings.warn(
                f"{len(missing)} tensors reach the training loss but are not in Pyro's param "
                f"store, so no optimiser moves them and they keep their initial values: "
                f"{', '.join(missing[:8])}{' ...' if len(missing) > 8 else ''}; register each "
                "network in the program that uses it (pyro.module('encoder', net) inside the "
                "guide, or make the guide a PyroModule that holds the network)",
                UnregisteredParameterWarning, stacklevel=4)

    def _sync_optimizer(self) -> None:
        store = pyro.get_param_store()
        self._store_size = len(store)
        # Pyro's decaying-average baselines live in the param store but are running
        # state, not parameters: checkpointed, never optimised
        params = {k: v for k, v in store.named_parameters() if not k.startswith(BASELINE_AVG_PREFIX)}
        names = sorted(params)
        if self.optimizer is None:
            self.param_names = names
            self.optimizer = make_adam([params[k] for k in names], self.lr,
                                       fused=self.fused_optimizer)
        else:
            # a name whose tensor was replaced (a module swapped in and the store cleared):
            # the optimiser takes the new tensor, with fresh Adam state for it
            slots = [(g, i) for g in self.optimizer.param_groups for i in range(len(g["params"]))]
            for name, (group, i) in zip(self.param_names, slots):
                now = params.get(name)
                if now is not None and group["params"][i] is not now:
                    self.optimizer.state.pop(group["params"][i], None)
                    group["params"][i] = now
            new = [k for k in names if k not in self.param_names]
            if new:
                self.optimizer.add_param_group({"params": [params[k] for k in new]})
                self.param_names += new

    # -- checkpoints -----------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        """The checkpoint payload (weights_only-safe)."""
        ps = pyro.get_param_store()
        return {
            "config": self.config,
            "epoch": self.epoch,
            "step": self.step,
            "params": {k: v.detach().clone() for k, v in ps.named_parameters()},
            "param_order": list(self.param_names),
            "modules": {k: m.state_dict() for k, m in self.modules.items()},
            "optimizer": self.optimizer.state_dict() if self.optimizer is not None else {},
            "rng": {"global": get_rng_state(), "shuffle": self.shuffle.get_state(),
                    **self._per_rank_state()},
            "world_size": self.dist.world_size,
            "transform": _state_of(self.transform) or {},
            "objective": _state_of(self.elbo) or {},
            "history": list(self.history),
            "step_losses": list(self._last_losses),
            "step_weights": list(self._last_weights),
            "aggressive": _state_of(self.aggressive) or {},
        }

    def save(self, path: Optional[str | Path] = None) -> Path:
        """Write the checkpoint atomically to ``path`` (default ``checkpoint_path``)."""
        path = Path(path or self.checkpoint_path)
        state = self.state()  # collective under data parallelism: every rank builds it
        if self.dist.is_main:
            save_checkpoint(path, state)
        self.dist.barrier("writing the checkpoint")  # no rank reads it before it exists
        return path

    def load_state(self, payload: dict[str, Any], *, check_config: bool = True) -> None:
        """Restore parameters, optimiser, RNGs and counters from a loaded checkpoint.
        Call after :meth:`_discover` (the parameters must exist).

        Raises:
            CheckpointError: the checkpoint's configuration, parameter names or shapes
                differ from this run's.
        """
        if check_config and self.config and payload.get("config") != self.config:
            diff = {k: (payload.get("config", {}).get(k), v) for k, v in self.config.items()
                    if payload.get("config", {}).get(k) != v}
            raise CheckpointError(
                f"checkpoint was written by a different configuration (checkpoint vs now: {diff}); "
                "resume with the original settings or start a new run directory")
        saved_world = int(payload.get("world_size", 1))
        if saved_world != self.dist.world_size:
            raise CheckpointError(
                f"the checkpoint was written by a run of {saved_world} process(es) and this run "
                f"has {self.dist.world_size}: the data shards and each rank's random stream "
                f"depend on the number of processes; resume with the same number (torchrun "
                f"--nproc_per_node {saved_world}, or no torchrun for 1) or start a new run")
        restore_params(payload, self.modules)
        if payload.get("param_order") and payload["param_order"] != self.param_names:
            raise CheckpointError("parameter order differs from the checkpoint's")
        if payload.get("optimizer"):
            self.optimizer.load_state_dict(payload["optimizer"])
        set_rng_state(payload["rng"]["ranks"][self.dist.rank] if self.dist.enabled
                      else payload["rng"]["global"])
        if self.dist.enabled:  # this rank's own decaying-average baselines
            store = pyro.get_param_store()
            for k, v in payload["rng"]["baselines"][self.dist.rank].items():
                store[k] = v
        self.shuffle.set_state(payload["rng"]["shuffle"])
        legacy = payload["rng"].get("binarizer")  # checkpoints written before transforms
        if "transform" not in payload and legacy is not None and isinstance(self.transform, Binarizer):
            payload = {**payload, "transform": {"mode": self.transform.mode, "generator": legacy}}
        for what, obj in (("transform", self.transform), ("objective", self.elbo),
                          ("aggressive", self.aggressive)):
            saved = payload.get(what) or {}
            if _state_of(obj) is not None:
                if not saved:
                    raise CheckpointError(f"the checkpoint holds no state for the {what} "
                                          f"{obj!r}; it was written by another version or run")
                try:
                    obj.load_state_dict(saved)
                except (ValueError, KeyError) as e:
                    raise CheckpointError(f"cannot restore the {what}'s state: {e}") from e
            elif saved:
                raise CheckpointError(f"the checkpoint holds state for a {what} this run's "
                                      f"{obj!r} cannot take; resume with the same {what}")
        self.epoch, self.step = int(payload["epoch"]), int(payload["step"])
        self.history = list(payload["history"])
        self._last_losses = list(payload.get("step_losses", []))
        self._last_weights = list(payload.get("step_weights", []))

    # -- training --------------------------------------------------------------------
    def fit(self, x: torch.Tensor, epochs: int, *, resume: bool = False) -> list[dict]:
        """Train until ``epochs`` epochs are done in total.

        Args:
            x: (N, ...) training data (intensities in [0, 1] when binarising), on the
                device of the model.
            epochs: total number of epochs (a resumed run continues up to it).
            resume: continue from ``checkpoint_path`` if it exists: the result is
                identical to an uninterrupted run (same RNG streams).

        Returns:
            the history, one dict per epoch (``epoch``, ``loss`` nats per datapoint,
            ``seconds``).

        Raises:
            ValueError: ``epochs`` < 0; ``x`` not a tensor or empty (see
                :meth:`prepare_data`); data the model's or guide's ``check_data``
                refuses (raised before the epoch's first step); data the transform
                refuses (integer, NaN or
                outside [0, 1] when binarising / dequantising).
            FloatingPointError: the loss becomes NaN or infinite.
            CheckpointError: resuming from a checkpoint that does not match.

        Warns:
            DivergenceWarning: the loss rose for a whole epoch (``divergence_tolerance``).
        """
        if int(epochs) != epochs or epochs < 0:
            raise ValueError(f"epochs must be an integer >= 0, got {epochs}")
        x = self.prepare_data(x)
        has_checkpoint = self.checkpoint_path is not None and self.checkpoint_path.exists()
        has_checkpoint = self.dist.broadcast_object(has_checkpoint, "agreeing on the checkpoint")
        fresh = not resume or (not has_checkpoint and self.epoch == 0)
        if fresh:
            pyro.set_rng_seed(self.seed)  # nothing to resume from: exactly a fresh run
        self._discover(x)
        if resume and has_checkpoint:
            self.load_state(load_checkpoint(self.checkpoint_path, map_location=x.device))
            if self.epoch > epochs:
                raise CheckpointError(
                    f"the checkpoint already holds {self.epoch} epochs, more than the {epochs} "
                    f"asked for; fit with epochs >= {self.epoch} (the command line's --epochs), "
                    "or evaluate the run as is")
        self._start_distributed(fresh)
        n = x.shape[0]
        steps_per_epoch = math.ceil(n / self.batch_size)
        bar = EpochProgress(max(0, epochs - self.epoch) * steps_per_epoch,
                            enabled=self.progress)
        try:
            while self.epoch < epochs:
                t0 = time.perf_counter()
                x_epoch = self.transform(x)
                # the programs' data checks once on the whole epoch's set (guide first, as a
                # step runs them: the same errors, before any step), then none per step
                # (lvm_pyro.checks)
                self._data_validated = validate_data((self.guide, self.model), x_epoch)
                perm = torch.randperm(n, generator=self.shuffle).to(x.device)
                total, count, losses, weights = 0.0, 0, [], []
                for start in range(0, n, self.batch_size):
                    batch = perm[start:start + self.batch_size]
                    idx = self.dist.shard(batch)  # this rank's rows (all of them in one process)
                    weights.append(getattr(self.elbo, "current_beta", None))
                    if self.aggressive is not None and self.aggressive.active:
                        self._encoder_steps(x_epoch, n)
                        loss = self._step(x_epoch[idx], n, idx, train="decoder",
                                          global_size=len(batch))
                    else:
                        loss = self._step(x_epoch[idx], n, idx, global_size=len(batch))
                    idx = batch  # the loss is the global batch's
                    per_point = loss / (n if self._scaled else len(idx))
                    if not math.isfinite(per_point):
                        raise FloatingPointError(
                            f"loss became {per_point} at epoch {self.epoch + 1}, step "
                            f"{self.step}; lower the learning rate (lr, the command line's --lr) "
                            "or check the data")
                    total += per_point * len(idx)
                    count += len(idx)
                    losses.append(per_point)
                    bar.step(self.epoch + 1, total / count)
                self.epoch += 1
                self._warn_if_rising(losses, weights)
                m = EpochMetrics(self.epoch, total / count, time.perf_counter() - t0)
                known = [w for w in weights if w is not None]
                if known:  # a KL weight (warm-up, schedule, beta): its value at the last step
                    m.extra["kl_weight"] = float(known[-1])
                capacity = getattr(self.elbo, "current_capacity", None)
                if capacity is not None:
                    m.extra["capacity_nats"] = float(capacity)
                if self.aggressive is not None:
                    m.extra.update(self.aggressive.end_epoch(self.guide))
                    self._agree(self.aggressive)
                bar.end_epoch(self.epoch, epochs, m.loss, m.seconds)
                for cb in self.callbacks:
                    out = cb(self, m)
                    if isinstance(out, dict):
                        m.extra.update(out)
                self.history.append(m.as_dict())
                if self.checkpoint_path is not None:
                    self.save()
        finally:
            bar.close()
            self._data_validated = False
        return self.history

    def prepare_data(self, x: torch.Tensor) -> torch.Tensor:
        """Check the training data: a non-empty tensor.

        The data's dtype is never changed: floating-point data of another precision than
        the modules' parameters (float64 pixels for float32 networks) is refused by the
        first (discovery) pass with one line naming the fix (``x.to(torch.float32)`` or
        ``model.double()``), so that float64 data give float64 results or a clear error,
        never a silent cast. Integer data pass unchanged (code grids for a prior over VQ
        codes, counts); the binarising / dequantising transforms refuse them with a clear
        error.

        Args:
            x: (N, ...) tensor, N >= 1.

        Raises:
            ValueError: not a tensor, or N = 0.
        """
        if not isinstance(x, torch.Tensor):
            raise ValueError(f"training data must be a torch.Tensor (N, ...), got {type(x).__name__}")
        if x.dim() == 0 or x.shape[0] == 0:
            raise ValueError(f"training data is empty (shape {tuple(x.shape)}); pass at least one "
                             "datapoint along the first dimension")
        return x

    def _warn_if_rising(self, losses: list[float], weights: list) -> None:
        """Warn when the loss rose through this epoch or from the previous one, with the
        objective unchanged over the steps compared (a KL schedule's weight, the
        objective's ``current_beta``, constant)."""
        previous, self._last_losses = self._last_losses, list(losses)
        previous_weights, self._last_weights = self._last_weights, list(weights)
        tol = self.divergence_tolerance
        if tol is None or len(set(previous_weights + weights)) > 1:
            return
        if previous:  # the epoch against the one before
            rose = len(previous) >= 2 and loss_rose(previous, losses, tol)
            where = "from the previous epoch"
        else:  # the first epoch against its first step (the untrained model)
            rose = len(losses) >= 4 and loss_rose(losses[:1], losses, tol)
            where = "above its first step"
        if rose:
            mean = sum(losses) / len(losses)
            warnings.warn(
                f"the training loss rose for a whole epoch, {where} (epoch {self.epoch} mean "
                f"{mean:.4g} nats per datapoint): training may be diverging; lower the learning "
                f"rate (lr={self.lr:g})",
                DivergenceWarning)

    def _encoder_ids(self) -> set[int]:
        return {id(p) for p in self.guide.parameters()}

    def _encoder_steps(self, x_epoch: torch.Tensor, n: int) -> int:
        """Encoder-only steps of aggressive training, each on a fresh minibatch drawn
        with the (checkpointed) shuffling generator, until
        :meth:`AggressiveEncoder.inner_converged`. Returns the number of steps."""
        losses: list[float] = []
        b = min(self.batch_size, n)
        while not self.aggressive.inner_converged(losses):
            batch = torch.randperm(n, generator=self.shuffle)[:b].to(x_epoch.device)
            idx = self.dist.shard(batch)
            losses.append(self._step(x_epoch[idx], n, idx, train="encoder",
                                     global_size=len(batch)))
        self.aggressive.inner_steps.append(len(losses))
        return len(losses)

    def _step(self, xb: torch.Tensor, n: int, idx: torch.Tensor,
              train: Optional[str] = None, global_size: Optional[int] = None) -> float:
        """One optimiser step; ``train="encoder"`` / ``"decoder"`` drops the gradients of
        the other side (the guide's parameters are the encoder) so Adam skips it. Under
        data parallelism ``idx`` is this rank's shard of a global minibatch of
        ``global_size`` rows (possibly empty) and the loss returned is the global one."""
        recorder = None if self._checked_registration or len(idx) == 0 else _LeafRecorder()
        checks = skip_data_checks() if self._data_validated else contextlib.nullcontext()
        cache = (cached_registration() if objective_allows_cached_registration(self._objective)
                 else contextlib.nullcontext())  # the whole param store is optimised
        with pyro.validation_enabled(self.validate), recorder or contextlib.nullcontext(), \
                checks, cache:
            loss = (self._objective.loss_and_grads(self._model, self._guide, xb, num_data=n,
                                                   idx=idx)
                    if len(idx) else 0.0)  # an empty shard: no loss, zero gradient
        if recorder is not None:  # once, after the first step's backward pass
            self._checked_registration = True
            self._warn_if_unregistered(recorder.leaves)
        if len(pyro.get_param_store()) != self._store_size:
            self._sync_optimizer()
        if self.dist.enabled:  # sum of b_local / B weighted gradients: the union batch's
            weight = len(idx) / (global_size or len(idx)) if self._scaled else 1.0
            params = [p for group in self.optimizer.param_groups for p in group["params"]]
            loss = self.dist.reduce_gradients(params, float(loss), weight, self._quantizers,
                                              step=self.step + 1)
        if train is not None:
            encoder = self._encoder_ids()
            for group in self.optimizer.param_groups:
                for p in group["params"]:
                    if (id(p) in encoder) != (train == "encoder"):
                        p.grad = None
        if self.clip_norm is not None:
            params = [p for group in self.optimizer.param_groups for p in group["params"]]
            torch.nn.utils.clip_grad_norm_(params, self.clip_norm)
        self.optimizer.step()
        self.dist.broadcast_restarts(self._quantizers)
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        return float(loss)

    # -- data parallelism (lvm_pyro.training.distributed) ----------------------------------
    def _start_distributed(self, fresh: bool) -> None:
        """Rank 0's parameters and buffers everywhere; on a fresh start each rank > 0
        reseeds its random streams (:func:`rank_seed`); a resumed rank has its own state
        from the checkpoint."""
        if not self.dist.enabled:
            return
        self.dist.broadcast_start(self.modules)
        self._quantizers = find_quantizers(self.modules)
        if fresh:
            pyro.set_rng_seed(rank_seed(self.seed, self.dist.rank))

    def _per_rank_state(self) -> dict:
        """Under data parallelism ``{"ranks": [RNG state of rank 0, 1, ...], "baselines":
        [Pyro's decaying-average baselines of rank 0, 1, ...]}`` (per-rank running state),
        else {}."""
        if not self.dist.enabled:
            return {}
        baselines = {k: v.detach().cpu().clone() for k, v in pyro.get_param_store().items()
                     if k.startswith(BASELINE_AVG_PREFIX)}
        return {"ranks": self.dist.gather_rng(get_rng_state()),
                "baselines": self.dist.gather_objects(baselines, "gathering the baselines")}

    def _agree(self, obj: Any) -> None:
        """Give ``obj`` (with ``state_dict`` / ``load_state_dict``) rank 0's state."""
        state = _state_of(obj)
        if self.dist.enabled and state is not None:
            obj.load_state_dict(self.dist.broadcast_object(state, "agreeing on rank 0's state"))


def make_adam(params: list[torch.Tensor], lr: float, *, fused: bool = True) -> torch.optim.Adam:
    """``torch.optim.Adam(params, lr)`` (Kingma & Ba 2015, Algorithm 1), fused (one kernel
    for all parameters) when ``fused`` and every parameter is a floating-point tensor on a
    device with a fused Adam kernel; else torch's default implementation."""
    from torch.utils._foreach_utils import _get_fused_kernels_supported_devices  # noqa: PLC0415

    devices = _get_fused_kernels_supported_devices()
    if fused and params and all(p.is_floating_point() and p.device.type in devices for p in params):
        return torch.optim.Adam(params, lr=lr, fused=True)
    return torch.optim.Adam(params, lr=lr)


def _default_binarization(model: Any) -> str:
    """The training-data transform that follows the model's likelihood: ``"none"`` when
    the model has a ``likelihood`` that is not discrete (a Gaussian: real-valued data,
    never binarised), else ``"dynamic"`` binarisation (Bernoulli pixels)."""
    likelihood = getattr(model, "likelihood", None)
    if likelihood is not None and getattr(likelihood, "discrete", True) is False:
        return "none"
    return "dynamic"


def _referenced_modules(fn: Any, who: str) -> dict[str, torch.nn.Module]:
    """``nn.Module``s a plain-function program refers to by a global or closure name
    (``"guide: encoder"`` -> module), to name unregistered tensors; {} for others."""
    import inspect

    if isinstance(fn, torch.nn.Module) or not inspect.isfunction(fn):
        return {}
    try:
        refs = inspect.getclosurevars(fn)
    except (TypeError, ValueError):
        return {}
    return {f"{who} {k}": v for k, v in {**refs.globals, **refs.nonlocals}.items()
            if isinstance(v, torch.nn.Module)}


def _state_of(obj: Any) -> Optional[dict]:
    """``obj.state_dict()`` when ``obj`` has both ``state_dict`` and ``load_state_dict``,
    else ``None``."""
    if callable(getattr(obj, "state_dict", None)) and callable(getattr(obj, "load_state_dict", None)):
        return obj.state_dict()
    return None
