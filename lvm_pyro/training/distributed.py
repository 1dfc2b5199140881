"""Data-parallel training over several processes (``torchrun`` / ``torch.distributed``).

``torchrun --nproc_per_node N -m lvm_pyro.cli fit ...`` starts N copies of the command;
:func:`init_from_environment` reads torchrun's variables (``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``) and joins the process group (gloo on
CPU, NCCL on CUDA when every local rank has its own GPU, else gloo over CUDA tensors).
The :class:`~lvm_pyro.training.loop.Trainer` then calls the hooks of
:class:`DistributedContext`:

* **Data.** Every rank builds the same epoch permutation (same shuffling seed) and the same
  transformed data (same binarisation seed); each global minibatch of B rows is split
  into ``world_size`` contiguous shards (:meth:`DistributedContext.shard`, sizes differ by
  at most one, possibly empty). No row is repeated, so the ELBO is unchanged.
* **Gradients.** Each rank's data plate scales by Pyro's own N / b_local. Before the
  optimiser step every rank multiplies its gradients by b_local / B (by 1 for a program
  without ``num_data``, whose loss is a plain minibatch sum) and one *summed* all-reduce
  runs over every parameter the optimiser holds (the whole Pyro param store, ``pyro.param``
  tensors outside modules included). The result is (N / B) sum_{i in batch} grad_i, the
  single-process gradient on the union batch, for even and uneven shards alike
  (:meth:`DistributedContext.reduce_gradients`). A parameter no rank produced a gradient
  for keeps ``grad=None`` (Adam skips it, as in one process).
* **State that must agree.** Parameters and module buffers are broadcast from rank 0 at
  the start; the statistics a :class:`~lvm_pyro.nn.VectorQuantizer` gathered in the step
  (code counts and per-code sums of encoder outputs) are all-reduced before its EMA update,
  so every rank applies the update of the union batch; dead-code restarts are decided on
  rank 0 (from its shard's encoder outputs) and broadcast. Schedules (KL warm-up) count
  optimiser steps, identical on every rank.
* **Random numbers.** Rank 0 keeps the single-process stream; rank r > 0 reseeds with
  :func:`rank_seed` after the start-up broadcast, so sampling noise differs between
  shards. The checkpoint holds every rank's RNG state (gathered to rank 0), so a resumed
  run equals the uninterrupted one; it also records ``world_size``, and resuming under
  another world size is refused (:class:`~lvm_pyro.training.checkpoint.CheckpointError`).
* **Files.** Rank 0 alone writes checkpoints, pictures and metrics.
* **Failures.** Every collective runs under the process group's timeout
  (``LVM_PYRO_DIST_TIMEOUT`` seconds, default 600): a rank that dies or stalls makes the
  others raise :class:`DistributedError` naming the step, instead of hanging.

References: Li et al. 2020, "PyTorch Distributed: Experiences on Accelerating Data
Parallel Training" (summed all-reduce of gradients, broadcast of initial state); Goyal et
al. 2017 (the global minibatch is the union of the workers' minibatches).
"""

from __future__ import annotations

import datetime
import os
import pickle
import socket
from contextlib import closing
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Optional, Sequence

import pyro
import torch
import torch.distributed as dist

__all__ = ["DistributedContext", "DistributedError", "init_from_environment", "single_process",
           "rank_seed", "launch_local", "free_port", "find_quantizers", "shutdown", "DEFAULT_TIMEOUT_S", "TIMEOUT_ENV",
           "BACKEND_ENV"]

DEFAULT_TIMEOUT_S = 600.0
TIMEOUT_ENV = "LVM_PYRO_DIST_TIMEOUT"
BACKEND_ENV = "LVM_PYRO_DIST_BACKEND"


class DistributedError(RuntimeError):
    """A collective operation failed or timed out: another rank stopped or stalled."""


def rank_seed(seed: int, rank: int) -> int:
    """The seed of rank ``rank``'s random streams: ``seed`` for rank 0 (the single-process
    stream), a distinct 32-bit value for every other rank (fixed, so runs repeat)."""
    if rank == 0:
        return int(seed)
    return (int(seed) * 1_000_003 + 7_919 * int(rank) + 104_729) % (2 ** 32)


@dataclass
class DistributedContext:
    """One process's place in a data-parallel job, and the Trainer's hooks.

    ``world_size == 1`` (:func:`single_process`) makes every hook a no-op, so the
    Trainer's single-process path is unchanged.

    Attributes:
        rank: this process's rank in [0, world_size).
        world_size: number of processes (>= 1).
        local_rank: rank on this machine (chooses the GPU).
        backend: ``"gloo"``, ``"nccl"`` or ``""`` (single process).
        timeout: seconds a collective may wait for the other ranks.
        allreduce_seconds: wall time spent in the gradient all-reduce (cumulative).
        allreduce_calls: number of gradient all-reduces.
        allreduce_bytes: bytes all-reduced per call (last call).
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str = ""
    timeout: float = DEFAULT_TIMEOUT_S
    allreduce_seconds: float = 0.0
    allreduce_calls: int = 0
    allreduce_bytes: int = 0
    _step: int = field(default=0, repr=False)

    @property
    def enabled(self) -> bool:
        """True with more than one process."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """True on rank 0 (the only rank that writes files)."""
        return self.rank == 0

    # -- plumbing ----------------------------------------------------------------------
    def _run(self, what: str, fn: Callable, *args, **kwargs):
        """Run one collective; a failure or timeout becomes a :class:`DistributedError`."""
        try:
            return fn(*args, **kwargs)
        except DistributedError:
            raise
        except Exception as e:  # gloo / NCCL raise RuntimeError or DistBackendError
            raise DistributedError(
                f"rank {self.rank} of {self.world_size}: {what} failed: another rank stopped "
                f"or did not reach it within the timeout ({self.timeout:g} s, "
                f"{TIMEOUT_ENV}); see that rank's error above. ({type(e).__name__}: "
                f"{str(e).splitlines()[0] if str(e) else ''})") from e

    def barrier(self, what: str = "barrier") -> None:
        """Wait for every rank (no-op with one process)."""
        if self.enabled:
            self._run(what, dist.barrier)

    def broadcast_object(self, obj: Any, what: str = "broadcast") -> Any:
        """Rank 0's ``obj`` on every rank (picklable objects)."""
        if not self.enabled:
            return obj
        box = [obj if self.is_main else None]
        self._run(what, dist.broadcast_object_list, box, src=0)
        return box[0]

    def gather_objects(self, obj: Any, what: str = "gather") -> list:
        """``[obj of rank 0, obj of rank 1, ...]`` on every rank (picklable objects;
        tensors should be on the CPU)."""
        if not self.enabled:
            return [obj]
        out: list = [None] * self.world_size
        self._run(what, dist.all_gather_object, out, obj)
        return out

    def broadcast_tensors(self, tensors: Iterable[torch.Tensor], what: str) -> None:
        """Overwrite ``tensors`` in place with rank 0's values."""
        if not self.enabled:
            return
        with torch.no_grad():
            for t in tensors:
                self._run(what, dist.broadcast, t.data, src=0)

    # -- data --------------------------------------------------------------------------
    def shard(self, batch: torch.Tensor) -> torch.Tensor:
        """This rank's contiguous part of a global minibatch of indices ``batch`` (B,):
        ``world_size`` parts of sizes differing by at most one (``torch.tensor_split``);
        a part is empty when B < world_size. Rows are never repeated."""
        if not self.enabled:
            return batch
        return torch.tensor_split(batch, self.world_size)[self.rank]

    def span(self, n: int) -> tuple[int, int]:
        """This rank's contiguous range [lo, hi) of ``n`` items (evaluation)."""
        sizes = [len(p) for p in torch.tensor_split(torch.arange(n), self.world_size)]
        lo = sum(sizes[:self.rank])
        return lo, lo + sizes[self.rank]

    # -- start-up ----------------------------------------------------------------------
    def broadcast_start(self, modules: dict[str, torch.nn.Module]) -> None:
        """Copy rank 0's Pyro parameters (every param-store entry but Pyro's decaying-average
        baselines, sorted by name) and module state (parameters and buffers, e.g.
        k-means-initialised codebooks) to every rank.

        Raises:
            DistributedError: the ranks' parameter stores differ in names or shapes (the
                programs are not the same) or a rank failed.
        """
        if not self.enabled:
            return
        from .checkpoint import BASELINE_AVG_PREFIX

        store = pyro.get_param_store()
        # Pyro's decaying-average baselines are each rank's running state, not parameters
        names = sorted(k for k, _ in store.named_parameters()
                       if not k.startswith(BASELINE_AVG_PREFIX))
        shapes = [(k, tuple(store.get_param(k).shape)) for k in names]
        layouts = self.gather_objects(shapes, "comparing the parameter stores at start")
        if any(layout != layouts[0] for layout in layouts):
            bad = [r for r, layout in enumerate(layouts) if layout != layouts[0]]
            raise DistributedError(f"ranks {bad} hold other parameters than rank 0 after the "
                                   "first pass; every rank must build the same model and guide")
        tensors = [store.get_param(k).unconstrained() for k in names]
        seen = {id(t) for t in tensors}
        for m in modules.values():
            for t in list(m.parameters()) + list(m.buffers()):
                if id(t) not in seen:
                    seen.add(id(t))
                    tensors.append(t)
        self.broadcast_tensors(tensors, "broadcasting rank 0's parameters at start")

    # -- the step ----------------------------------------------------------------------
    def reduce_gradients(self, params: Sequence[torch.Tensor], loss: float, weight: float,
                         quantizers: Sequence[Any] = (), *, step: Optional[int] = None) -> float:
        """Sum ``weight * grad`` of every parameter over the ranks, in place, and return
        the summed ``weight * loss``; all-reduce the pending statistics of
        ``quantizers`` (:class:`~lvm_pyro.nn.VectorQuantizer`) in the same call.

        With ``weight = b_local / B`` and each rank's loss scaled by N / b_local (Pyro's
        data plate) the result is the gradient and loss of one process on the union batch
        of B rows; with ``weight = 1`` (programs without ``num_data``) the sum over ranks
        of the minibatch sums.

        Args:
            params: the optimiser's parameters, the same list (order, shapes) on every rank.
            loss: this rank's loss (nats; 0.0 for an empty shard).
            weight: this rank's weight (0 for an empty shard).
            quantizers: vector quantisers whose EMA statistics are reduced before their
                update (the update itself runs after the optimiser step, as in one process).
            step: the optimiser step this is (named in errors; default: calls so far).

        Returns:
            the global loss (nats), identical on every rank.

        Raises:
            DistributedError: a rank failed or timed out.
        """
        if not self.enabled:
            return loss
        import time

        self._step += 1
        step = self._step if step is None else step
        by_dtype: dict[tuple, list[int]] = {}
        for i, p in enumerate(params):
            by_dtype.setdefault((p.dtype, p.device), []).append(i)
        # float64 side buffer: [loss, has_grad per param, per quantizer: calls>0, calls,
        # counts (K), sums (K * D)]
        device = params[0].device if params else torch.device("cpu")
        meta = [torch.tensor([loss * weight], dtype=torch.float64, device=device),
                torch.tensor([p.grad is not None for p in params], dtype=torch.float64,
                             device=device)]
        for q in quantizers:
            counts, sums, calls = q.pending_statistics()
            meta += [torch.tensor([float(calls > 0), float(calls)], dtype=torch.float64,
                                  device=device),
                     counts.to(device=device, dtype=torch.float64).reshape(-1),
                     sums.to(device=device, dtype=torch.float64).reshape(-1)]
        meta_flat = torch.cat(meta)
        flats = {}
        for key, ids in by_dtype.items():
            flats[key] = torch.cat([(params[i].grad if params[i].grad is not None
                                     else torch.zeros_like(params[i])).reshape(-1) * weight
                                    for i in ids])
        self.allreduce_bytes = (meta_flat.numel() * meta_flat.element_size() +
                                sum(f.numel() * f.element_size() for f in flats.values()))
        t0 = time.perf_counter()

        def reduce_all():
            works = [dist.all_reduce(t, op=dist.ReduceOp.SUM, async_op=True)
                     for t in (meta_flat, *flats.values())]
            for w in works:
                w.wait()

        self._run(f"the gradient all-reduce of step {step}", reduce_all)
        self.allreduce_seconds += time.perf_counter() - t0
        self.allreduce_calls += 1
        n = len(params)
        has_grad = meta_flat[1:1 + n]
        for key, ids in by_dtype.items():
            flat, offset = flats[key], 0
            for i in ids:
                p = params[i]
                g = flat[offset:offset + p.numel()].view_as(p)
                offset += p.numel()
                p.grad = g.clone() if has_grad[i] > 0 else None
        offset = 1 + n
        for q in quantizers:
            with_calls, calls = meta_flat[offset:offset + 2].tolist()
            offset += 2
            k, d = q.codebook_size, q.embedding_dim
            counts = meta_flat[offset:offset + k]
            sums = meta_flat[offset + k:offset + k + k * d].view(k, d)
            offset += k + k * d
            if with_calls > 0:  # ranks that ran the quantiser ran it equally often
                q.set_pending_statistics(counts, sums, int(round(calls / with_calls)))
        return float(meta_flat[0])

    def broadcast_restarts(self, quantizers: Sequence[Any]) -> None:
        """After the optimiser step (and the quantisers' updates): copy rank 0's codebook
        and usage statistics to every rank for each quantiser with dead-code restarts
        (``dead_code_threshold > 0``), so that the restart rank 0 decided holds everywhere."""
        if not self.enabled:
            return
        for q in quantizers:
            if q.dead_code_threshold > 0:
                self.broadcast_tensors(list(q.parameters(recurse=False)) + list(q.buffers(recurse=False)),
                                       "broadcasting rank 0's dead-code restarts")

    # -- checkpoints -------------------------------------------------------------------
    def gather_rng(self, state: dict) -> list:
        """Every rank's RNG state (the dict of
        :func:`~lvm_pyro.training.checkpoint.get_rng_state`), in rank order, on every rank."""
        if not self.enabled:
            return [state]
        cpu = {k: (v.cpu() if isinstance(v, torch.Tensor) else
                   [t.cpu() for t in v] if k == "cuda" else v) for k, v in state.items()}
        return self.gather_objects(cpu, "gathering the ranks' random states for the checkpoint")


def single_process() -> DistributedContext:
    """The context of an ordinary, single-process run (every hook a no-op)."""
    return DistributedContext()


def _backend(device: str) -> str:
    chosen = os.environ.get(BACKEND_ENV)
    if chosen:
        if chosen not in ("gloo", "nccl"):
            raise ValueError(f"{BACKEND_ENV} must be gloo or nccl, got {chosen!r}")
        return chosen
    if str(device).startswith("cuda") and dist.is_nccl_available():
        local = int(os.environ.get("LOCAL_WORLD_SIZE", os.environ.get("WORLD_SIZE", "1")))
        if torch.cuda.device_count() >= local:
            return "nccl"  # one GPU per local rank
    return "gloo"  # CPU, or several ranks sharing a GPU (NCCL refuses duplicate GPUs)


def _timeout() -> float:
    text = os.environ.get(TIMEOUT_ENV)
    if text is None:
        return DEFAULT_TIMEOUT_S
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{TIMEOUT_ENV} must be a number of seconds > 0, got {text!r}") from None
    if not value > 0:
        raise ValueError(f"{TIMEOUT_ENV} must be a number of seconds > 0, got {text!r}")
    return value


def init_from_environment(device: str = "cpu", *, timeout: Optional[float] = None) -> DistributedContext:
    """Join the process group that ``torchrun`` describes in the environment, or return
    :func:`single_process` when there is none (``WORLD_SIZE`` unset or 1).

    The backend is NCCL for a CUDA ``device`` when this machine has a GPU for every
    local rank, else gloo (CPU, or N processes sharing one GPU); ``LVM_PYRO_DIST_BACKEND``
    overrides. With a CUDA device each rank uses ``cuda:LOCAL_RANK`` (modulo the GPU
    count). An already initialised default group is reused.

    Args:
        device: the run's device (``"cpu"``, ``"cuda"``, ``"cuda:1"``).
        timeout: seconds a collective may wait (> 0); default ``LVM_PYRO_DIST_TIMEOUT``
            or 600.

    Returns:
        the :class:`DistributedContext`.

    Raises:
        ValueError: a bad timeout or backend name, or torchrun's variables incomplete
            (``RANK`` without ``MASTER_ADDR`` / ``MASTER_PORT``).
        DistributedError: the rendezvous failed (another rank never joined).
    """
    timeout = _timeout() if timeout is None else float(timeout)
    if not timeout > 0:
        raise ValueError(f"timeout must be > 0 seconds, got {timeout}")
    if dist.is_available() and dist.is_initialized():
        ws = dist.get_world_size()
        return DistributedContext(dist.get_rank(), ws, int(os.environ.get("LOCAL_RANK", 0)),
                                  dist.get_backend(), timeout)
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return single_process()
    missing = [k for k in ("RANK", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
    if missing:
        raise ValueError(f"WORLD_SIZE={world_size} but {', '.join(missing)} unset: launch with "
                         "torchrun --nproc_per_node N -m lvm_pyro.cli fit ...")
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    backend = _backend(device)
    kwargs = {}
    if str(device).startswith("cuda"):
        torch.cuda.set_device(local_rank % max(1, torch.cuda.device_count()))
        if backend == "nccl":
            kwargs["device_id"] = torch.device("cuda", torch.cuda.current_device())
    ctx = DistributedContext(rank, world_size, local_rank, backend, timeout)
    ctx._run("joining the process group", dist.init_process_group, backend=backend,
             timeout=datetime.timedelta(seconds=timeout), **kwargs)
    return ctx


def shutdown(ctx: DistributedContext) -> None:
    """Leave the process group (no-op with one process)."""
    if ctx.enabled and dist.is_initialized():
        dist.destroy_process_group()


def free_port() -> int:
    """A TCP port free on this machine now (for :func:`launch_local`)."""
    with closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world_size: int, port: int, timeout: float, device: str, fn: Callable,
            args: tuple, queue) -> None:
    os.environ.update({"RANK": str(rank), "WORLD_SIZE": str(world_size), "LOCAL_RANK": str(rank),
                       "LOCAL_WORLD_SIZE": str(world_size), "MASTER_ADDR": "127.0.0.1",
                       "MASTER_PORT": str(port)})
    torch.set_num_threads(1)
    ctx = None
    try:
        ctx = init_from_environment(device, timeout=timeout)
        # plain pickle (not torch's shared-memory reduction): the bytes outlive the process
        report = (rank, "ok", pickle.dumps(fn(ctx, *args)))
    except BaseException as e:  # reported to the parent
        report = (rank, "error", pickle.dumps(f"{type(e).__name__}: {e}"))
    queue.put(report)
    queue.close()
    queue.join_thread()
    if report[1] == "ok" and ctx is not None:
        shutdown(ctx)
    # leave at once: a process group whose peer died can block the interpreter's exit
    os._exit(0)


def launch_local(fn: Callable, world_size: int, *args, timeout: float = 60.0,
                 join_timeout: Optional[float] = None, device: str = "cpu") -> list:
    """Run ``fn(ctx, *args)`` in ``world_size`` fresh processes joined on this machine
    (torch.multiprocessing, spawn; gloo on CPU, see :func:`init_from_environment` for
    CUDA), one torch thread each: ``torchrun`` for tests, benchmarks and notebooks.
    ``fn`` and ``args`` must be picklable (``fn`` defined at a module's top level).

    Args:
        fn: ``fn(ctx: DistributedContext, *args) -> picklable``.
        world_size: number of processes (>= 1).
        timeout: the process group's collective timeout, seconds.
        join_timeout: seconds to wait for all processes (default ``timeout + 120``);
            processes still alive then are terminated.
        device: the device the processes train on (``"cpu"``, ``"cuda"``): chooses the
            backend.

    Returns:
        per rank, ``("ok", result)`` or ``("error", "ExceptionType: message")``, or
        ``("killed", None)`` for a process that died without reporting.

    Raises:
        ValueError: ``world_size < 1``.
    """
    import queue as queue_module

    import torch.multiprocessing as mp

    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    port = free_port()
    procs = [ctx.Process(target=_worker, args=(r, world_size, port, timeout, device, fn, args, q))
             for r in range(world_size)]
    for p in procs:
        p.start()
    results: dict[int, tuple] = {}
    import time
    deadline = time.monotonic() + (timeout + 120.0 if join_timeout is None else join_timeout)
    while len(results) < world_size and time.monotonic() < deadline:
        try:
            rank, status, value = q.get(timeout=0.5)
            results[rank] = (status, pickle.loads(value))
        except queue_module.Empty:
            if all(not p.is_alive() for p in procs) and q.empty():
                break
    for p in procs:
        p.join(timeout=max(0.0, deadline - time.monotonic()) if p.is_alive() else None)
        if p.is_alive():
            p.terminate()
            p.join()
    return [results.get(r, ("killed", None)) for r in range(world_size)]


def find_quantizers(modules: dict[str, torch.nn.Module]) -> list:
    """Every :class:`~lvm_pyro.nn.VectorQuantizer` inside ``modules`` (each once, in a
    fixed order: the modules' order, then depth first)."""
    from ..nn.quantizer import VectorQuantizer

    seen: dict[int, Any] = {}
    for m in modules.values():
        for sub in m.modules():
            if isinstance(sub, VectorQuantizer):
                seen.setdefault(id(sub), sub)
    return list(seen.values())
