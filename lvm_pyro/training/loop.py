"""The generic training loop: any model, guide and Pyro ELBO (no model-specific code).

One optimiser step per minibatch: ``elbo.loss_and_grads(model, guide, x_b, num_data=N,
idx=idx)`` then ``torch.optim.Adam``. This is what ``pyro.infer.SVI`` does, with the
parameters collected once from the Pyro param store (sorted by name) into a single torch
optimiser, so that the optimiser state is a plain ``state_dict`` for checkpoints and the
per-step overhead of SVI's per-parameter optimisers is avoided.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import pyro
import pyro.poutine as poutine
import torch
from pyro.infer import ELBO

from ..data.binarize import Binarizer
from ..inference.program import (accepted_keywords, adapt_program, check_dtypes,
                                 check_param_ownership)
from .checkpoint import (CheckpointError, get_rng_state, load_checkpoint, restore_params,
                         save_checkpoint, set_rng_state)

__all__ = ["Trainer", "EpochMetrics", "adapt_program"]


@dataclass
class EpochMetrics:
    """One epoch's record: ``loss`` is the mean training loss (-ELBO for Trace_ELBO)
    per datapoint in nats; ``seconds`` the epoch's wall time."""

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
        seed: seeds parameters' sampling, shuffling (``seed``) and binarisation
            (``seed + 1``).
        binarization: ``"dynamic"`` | ``"static"`` | ``"none"`` | ``"dequantize"``, or a
            :class:`lvm_pyro.data.Binarizer` (needed for ``"dequantize"`` with a number of
            levels other than 256), applied to the training data each epoch.
        checkpoint_path: file written atomically at the end of every epoch (or ``None``).
        config: JSON-able run configuration stored in the checkpoint and compared on
            resume (a mismatch raises :class:`CheckpointError`).
        progress: show a tqdm progress bar with the running loss.
        callbacks: ``cb(trainer, metrics: EpochMetrics)`` called after every epoch.
        clip_norm: optional gradient-norm clipping.
        modules: torch modules whose state dicts (buffers included) are checkpointed;
            defaults to model and guide when they are ``nn.Module``.
        validate: keep Pyro's distribution validation on for every step. By default the
            first (parameter-discovery) pass runs validated, so a program with bad shapes
            or out-of-support values fails there with Pyro's message, and the training
            steps then run without the per-site checks (a third of a small VAE's step
            time here; our models check their data's support themselves).

    Raises:
        ValueError: bad hyper-parameters.
    """

    def __init__(self, model: Callable, guide: Callable, elbo: ELBO, *, lr: float = 1e-3,
                 batch_size: int = 100, seed: int = 0, binarization: str = "dynamic",
                 checkpoint_path: Optional[str | Path] = None,
                 config: Optional[dict[str, Any]] = None, progress: bool = True,
                 callbacks: Sequence[Callable] = (), clip_norm: Optional[float] = None,
                 modules: Optional[dict[str, torch.nn.Module]] = None,
                 validate: bool = False):
        if lr <= 0:
            raise ValueError(f"lr must be > 0, got {lr}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.model, self.guide, self.elbo = model, guide, elbo
        self._model, self._guide = adapt_program(model), adapt_program(guide)
        self.lr, self.batch_size, self.seed = float(lr), int(batch_size), int(seed)
        self.binarizer = (binarization if isinstance(binarization, Binarizer)
                          else Binarizer(binarization, seed + 1))
        self.checkpoint_path = None if checkpoint_path is None else Path(checkpoint_path)
        self.config = dict(config or {})
        self.progress = progress
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
        self.optimizer: Optional[torch.optim.Optimizer] = None
        self.param_names: list[str] = []
        # Loss reported per datapoint: the ELBO estimate is scaled to N when the programs
        # take num_data, else it is the minibatch sum.
        self._scaled = ("num_data" in accepted_keywords(model) and
                        "num_data" in accepted_keywords(guide))

    # -- parameters ------------------------------------------------------------------
    def _discover(self, x: torch.Tensor) -> None:
        """Run the objective once without a step so that every parameter exists."""
        n = x.shape[0]
        b = min(self.batch_size, n)
        xb = x[:b]
        if self.binarizer.mode != "none":  # a throwaway draw: the data must be in support
            xb = Binarizer(self.binarizer.mode, 0, self.binarizer.levels)(xb)
        with torch.no_grad(), poutine.block(), pyro.validation_enabled(True):
            rng = get_rng_state()
            try:
                self.elbo.loss(self._model, self._guide, xb, num_data=n,
                               idx=torch.arange(b, device=x.device))
            except (RuntimeError, TypeError) as err:  # a dtype mismatch gets its fix named
                check_dtypes(self.model, self.guide, xb, err)
                raise
            finally:
                set_rng_state(rng)
        check_param_ownership(self.modules)
        self._sync_optimizer()

    def _sync_optimizer(self) -> None:
        params = dict(pyro.get_param_store().named_parameters())
        names = sorted(params)
        if self.optimizer is None:
            self.param_names = names
            self.optimizer = torch.optim.Adam([params[k] for k in names], lr=self.lr)
        elif names != self.param_names:
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
                    "binarizer": self.binarizer.state()},
            "history": list(self.history),
        }

    def save(self, path: Optional[str | Path] = None) -> Path:
        """Write the checkpoint atomically to ``path`` (default ``checkpoint_path``)."""
        path = Path(path or self.checkpoint_path)
        return save_checkpoint(path, self.state())

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
        restore_params(payload, self.modules)
        if payload.get("param_order") and payload["param_order"] != self.param_names:
            raise CheckpointError("parameter order differs from the checkpoint's")
        if payload.get("optimizer"):
            self.optimizer.load_state_dict(payload["optimizer"])
        set_rng_state(payload["rng"]["global"])
        self.shuffle.set_state(payload["rng"]["shuffle"])
        self.binarizer.set_state(payload["rng"]["binarizer"])
        self.epoch, self.step = int(payload["epoch"]), int(payload["step"])
        self.history = list(payload["history"])

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
        """
        if epochs < 0:
            raise ValueError(f"epochs must be >= 0, got {epochs}")
        if not resume:
            pyro.set_rng_seed(self.seed)
        self._discover(x)
        if resume and self.checkpoint_path is not None and self.checkpoint_path.exists():
            self.load_state(load_checkpoint(self.checkpoint_path, map_location=x.device))
            if self.epoch > epochs:
                raise CheckpointError(
                    f"the checkpoint already holds {self.epoch} epochs, more than the {epochs} "
                    f"asked for; resume with --epochs >= {self.epoch} (or evaluate the run as is)")
        n = x.shape[0]
        steps_per_epoch = math.ceil(n / self.batch_size)
        bar = None
        if self.progress:
            from tqdm.auto import tqdm
            bar = tqdm(total=max(0, epochs - self.epoch) * steps_per_epoch, unit="step",
                       dynamic_ncols=True)
        try:
            while self.epoch < epochs:
                t0 = time.perf_counter()
                x_epoch = self.binarizer(x)
                perm = torch.randperm(n, generator=self.shuffle).to(x.device)
                total, count = 0.0, 0
                for start in range(0, n, self.batch_size):
                    idx = perm[start:start + self.batch_size]
                    loss = self._step(x_epoch[idx], n, idx)
                    per_point = loss / (n if self._scaled else len(idx))
                    if not math.isfinite(per_point):
                        raise FloatingPointError(
                            f"loss became {per_point} at epoch {self.epoch + 1}, step "
                            f"{self.step}; lower the learning rate (--lr) or check the data")
                    total += per_point * len(idx)
                    count += len(idx)
                    if bar is not None:
                        bar.update(1)
                        bar.set_postfix(epoch=self.epoch + 1, loss=f"{total / count:.3f}")
                self.epoch += 1
                m = EpochMetrics(self.epoch, total / count, time.perf_counter() - t0)
                for cb in self.callbacks:
                    out = cb(self, m)
                    if isinstance(out, dict):
                        m.extra.update(out)
                self.history.append(m.as_dict())
                if self.checkpoint_path is not None:
                    self.save()
        finally:
            if bar is not None:
                bar.close()
        return self.history

    def _step(self, xb: torch.Tensor, n: int, idx: torch.Tensor) -> float:
        with pyro.validation_enabled(self.validate):
            loss = self.elbo.loss_and_grads(self._model, self._guide, xb, num_data=n, idx=idx)
        if len(pyro.get_param_store()) != len(self.param_names):
            self._sync_optimizer()
        if self.clip_norm is not None:
            torch.nn.utils.clip_grad_norm_(self.optimizer.param_groups[0]["params"], self.clip_norm)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        return float(loss)
