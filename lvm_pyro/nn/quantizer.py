"""Vector quantiser of VQ-VAE (van den Oord et al. 2017, "Neural Discrete Representation
Learning"), plain torch.

Forward: each D-dim vector z_e is snapped to its nearest codebook row (eq. 1,
:func:`lvm_pyro.ops.vq_nearest`); the output carries the straight-through value
z_q = z_e + sg(e - z_e) (section 3.2), written as ``e + (z_e - sg(z_e))`` so that its
value is *bitwise* the codebook row while the gradient still flows to z_e.

Losses per vector (eq. 3, the two last terms):

* codebook:   ||sg[z_e] - e||^2            (gradient to the codebook only)
* commitment: beta ||z_e - sg[e]||^2       (gradient to the encoder only)

The codebook is learned either by the codebook loss (``decay=None``) or by exponential
moving averages (``decay`` in (0, 1); appendix A.1 of the paper, with Laplace
smoothing of the cluster sizes as in sonnet's ``VectorQuantizerEMA``), in which case the
codebook loss is reported as 0.

When EMA statistics change
---------------------------
Statistics are gathered only by forward passes in training mode with gradients enabled
(so never in evaluation, under ``torch.no_grad()`` or in ``eval()`` mode). They are
*applied* by :meth:`VectorQuantizer.update`, once per optimiser step: by default
(``auto_update=True``) a torch.optim global step post-hook calls it after the next
``optimizer.step()`` of any torch optimiser (Pyro's ``SVI`` and ``lvm_pyro``'s
``Trainer`` both step torch optimisers). Statistics of several forward passes before one
step (several non-vectorised particles, for example) are averaged, so there is one EMA
update per step, never one per particle. With ``auto_update=False`` call ``update()``
yourself after each step.

Dead codes: a code whose moving-average usage (assignments per step; seeded with the
k-means counts, or with the first step's counts when ``kmeans_init=False``) falls below
``dead_code_threshold`` is restarted at a random encoder output of the latest batch
(only in :meth:`update`, i.e. only in training; other codes are not touched by the
restart).
"""

from __future__ import annotations

import weakref
from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..ops.vq_nearest import vq_nearest

__all__ = ["VectorQuantizer", "QuantizerOutput", "VQLosses", "CodebookUsage",
           "codebook_usage", "perplexity"]


class VQLosses(NamedTuple):
    """Per-vector loss terms, shape of the indices ((N,) or (*batch, H, W)), float.

    Attributes:
        codebook: ||sg[z_e] - e||^2 summed over the D embedding dims (zeros when the
            codebook is learned by EMA).
        commitment: commitment_weight * ||z_e - sg[e]||^2 summed over D.
    """

    codebook: Tensor
    commitment: Tensor


class QuantizerOutput(NamedTuple):
    """Output of :class:`VectorQuantizer`.

    Attributes:
        quantized: same shape as the input; value = codebook rows at ``indices``
            (bitwise), gradient = identity to the input (straight-through).
        indices: int64 code indices, (N,) for (N, D) input, (*batch, H, W) for
            (*batch, D, H, W) input.
        losses: :class:`VQLosses`.
        perplexity: scalar, exp of the entropy of this batch's code frequencies
            (1 = one code used, codebook_size = all used equally).
    """

    quantized: Tensor
    indices: Tensor
    losses: VQLosses
    perplexity: Tensor


class CodebookUsage(NamedTuple):
    """Usage of a codebook over many vectors (an epoch, a test set).

    Attributes:
        perplexity: exp(entropy) of the code frequencies, in [1, codebook_size].
        dead_codes: number of codes never chosen.
        used_codes: codebook_size - dead_codes.
        num_vectors: total count (may be fractional for step-averaged counts).
    """

    perplexity: float
    dead_codes: int
    used_codes: int
    num_vectors: float


def perplexity(counts: Tensor) -> Tensor:
    """exp(-sum_k p_k log p_k) with p = counts / counts.sum(); counts (K,) >= 0.
    Returns a scalar tensor (1.0 when every count is zero)."""
    counts = counts.double()
    total = counts.sum()
    if float(total) <= 0:
        return torch.ones((), dtype=torch.float64, device=counts.device)
    p = counts / total
    return torch.exp(-(torch.xlogy(p, p)).sum())


def codebook_usage(indices: Tensor, codebook_size: int) -> CodebookUsage:
    """Perplexity and dead codes of a set of code indices.

    Args:
        indices: int64 tensor of any shape, values in [0, codebook_size).
        codebook_size: K.

    Raises:
        ValueError: indices out of range.
    """
    flat = indices.reshape(-1)
    if flat.numel() and (int(flat.min()) < 0 or int(flat.max()) >= codebook_size):
        raise ValueError(f"indices must lie in [0, {codebook_size}), got range "
                         f"[{int(flat.min())}, {int(flat.max())}]")
    counts = torch.bincount(flat, minlength=codebook_size)
    return _usage_from_counts(counts)


def _usage_from_counts(counts: Tensor) -> CodebookUsage:
    dead = int((counts == 0).sum())
    return CodebookUsage(float(perplexity(counts)), dead, counts.numel() - dead,
                         float(counts.sum()))


# -- once-per-optimiser-step application of pending statistics -----------------------
_PENDING: "weakref.WeakSet[VectorQuantizer]" = weakref.WeakSet()
_HOOK = None


def _apply_pending(optimizer, args, kwargs) -> None:
    for q in list(_PENDING):
        q.update()


def _ensure_hook() -> None:
    global _HOOK
    if _HOOK is None:
        from torch.optim.optimizer import register_optimizer_step_post_hook
        _HOOK = register_optimizer_step_post_hook(_apply_pending)


class VectorQuantizer(nn.Module):
    """Nearest-neighbour vector quantiser with straight-through gradients.

    Args:
        codebook_size: K >= 1 codes.
        embedding_dim: D >= 1.
        commitment_weight: beta >= 0 (paper: 0.25).
        decay: EMA decay gamma in (0, 1) (paper: 0.99) to learn the codebook by moving
            averages; ``None`` learns it by the codebook loss (an ``nn.Parameter``).
        epsilon: Laplace smoothing of the EMA cluster sizes (> 0).
        kmeans_init: initialise the codebook by k-means on the first batch seen in
            training mode (k-means++ seeding, ``kmeans_iters`` Lloyd iterations);
            otherwise uniform in [-1/K, 1/K].
        kmeans_iters: Lloyd iterations (>= 1).
        dead_code_threshold: restart codes whose moving-average usage (vectors per
            step, EMA with ``decay`` or 0.99 in loss mode) is below it; 0 disables.
        auto_update: apply gathered statistics after every torch optimiser step (see
            the module docstring); ``False``: call :meth:`update` yourself.

    Input (N, D) or (*batch, D, H, W) float; see :class:`QuantizerOutput`.

    Raises:
        ValueError: bad hyper-parameters (at construction) or bad input shape.
    """

    #: left eager by ``lvm-pyro fit --compile`` (its EMA and dead-code restarts decide on
    #: the host; see :mod:`lvm_pyro.training.compile`)
    compile_safe = False

    def __init__(self, codebook_size: int, embedding_dim: int, *,
                 commitment_weight: float = 0.25, decay: Optional[float] = 0.99,
                 epsilon: float = 1e-5, kmeans_init: bool = True, kmeans_iters: int = 10,
                 dead_code_threshold: float = 0.0, auto_update: bool = True):
        super().__init__()
        if codebook_size < 1:
            raise ValueError(f"codebook_size must be >= 1, got {codebook_size}")
        if embedding_dim < 1:
            raise ValueError(f"embedding_dim must be >= 1, got {embedding_dim}")
        if commitment_weight < 0:
            raise ValueError(f"commitment_weight must be >= 0, got {commitment_weight}")
        if decay is not None and not 0.0 < decay < 1.0:
            raise ValueError(f"decay must be in (0, 1) for an EMA codebook, or None to learn "
                             f"the codebook by its loss; got {decay}")
        if epsilon <= 0:
            raise ValueError(f"epsilon must be > 0, got {epsilon}")
        if kmeans_iters < 1:
            raise ValueError(f"kmeans_iters must be >= 1, got {kmeans_iters}")
        if dead_code_threshold < 0:
            raise ValueError(f"dead_code_threshold must be >= 0 (0 disables restarts), got "
                             f"{dead_code_threshold}")
        self.codebook_size, self.embedding_dim = int(codebook_size), int(embedding_dim)
        self.commitment_weight = float(commitment_weight)
        self.decay = None if decay is None else float(decay)
        self.epsilon = float(epsilon)
        self.kmeans_init, self.kmeans_iters = bool(kmeans_init), int(kmeans_iters)
        self.dead_code_threshold = float(dead_code_threshold)
        self.auto_update = bool(auto_update)
        k, d = self.codebook_size, self.embedding_dim
        init = torch.empty(k, d).uniform_(-1.0 / k, 1.0 / k)
        if self.decay is None:
            self.codebook = nn.Parameter(init)
        else:
            self.register_buffer("codebook", init)
            self.register_buffer("ema_cluster_size", torch.ones(k))
            self.register_buffer("ema_embed_sum", init.clone())
        self.register_buffer("usage_ema", torch.zeros(k))
        self.register_buffer("epoch_counts", torch.zeros(k, dtype=torch.float64))
        self.register_buffer("epoch_restarts", torch.zeros((), dtype=torch.int64))
        self.register_buffer("num_updates", torch.zeros((), dtype=torch.int64))
        self.register_buffer("initialized", torch.tensor(not self.kmeans_init))
        self._clear_pending()

    @property
    def uses_ema(self) -> bool:
        """True when the codebook is learned by moving averages."""
        return self.decay is not None

    def extra_repr(self) -> str:
        return (f"codebook_size={self.codebook_size}, embedding_dim={self.embedding_dim}, "
                f"commitment_weight={self.commitment_weight}, decay={self.decay}, "
                f"dead_code_threshold={self.dead_code_threshold}")

    # -- shapes ------------------------------------------------------------------------
    def _flatten(self, z: Tensor) -> Tensor:
        d = self.embedding_dim
        if z.dim() == 2 and z.shape[1] == d:
            return z  # (N, D)
        if z.dim() >= 4 and z.shape[-3] == d:
            return z.movedim(-3, -1).reshape(-1, d)  # (*batch * H * W, D)
        raise ValueError(f"VectorQuantizer(embedding_dim={d}) expects (N, {d}) or "
                         f"(*batch, {d}, H, W) input, got {tuple(z.shape)}")

    def lookup(self, indices: Tensor) -> Tensor:
        """Codebook rows at ``indices``: (*shape) int64 -> (*shape, D), or with
        ``indices`` of shape (*batch, H, W) use :meth:`lookup_grid`."""
        return F.embedding(indices, self.codebook)

    def lookup_grid(self, indices: Tensor) -> Tensor:
        """(*batch, H, W) int64 -> (*batch, D, H, W) codebook rows (channels first)."""
        return F.embedding(indices, self.codebook).movedim(-1, -3)

    # -- forward -----------------------------------------------------------------------
    def forward(self, z: Tensor) -> QuantizerOutput:
        flat = self._flatten(z)  # (N, D)
        if self.training and not bool(self.initialized):
            self._kmeans(flat.detach())
        idx = vq_nearest(flat, self.codebook)  # (N,) int64
        e = F.embedding(idx, self.codebook)  # (N, D); carries the codebook's gradient
        commitment = self.commitment_weight * (flat - e.detach()).pow(2).sum(-1)  # (N,)
        if self.uses_ema:
            codebook_loss = torch.zeros_like(commitment)
        else:
            codebook_loss = (flat.detach() - e).pow(2).sum(-1)  # (N,)
        quantized = e.detach() + (flat - flat.detach())  # value e, gradient -> z_e
        counts = torch.bincount(idx, minlength=self.codebook_size)  # (K,)
        ppl = perplexity(counts).to(flat.dtype)
        if self.training and torch.is_grad_enabled():
            self._accumulate(flat.detach(), idx, counts)
        if z.dim() == 2:
            shape = idx.shape
            out_q = quantized
        else:
            *batch, _, h, w = z.shape
            shape = (*batch, h, w)
            out_q = quantized.reshape(*shape, self.embedding_dim).movedim(-1, -3)
        return QuantizerOutput(out_q, idx.reshape(shape),
                               VQLosses(codebook_loss.reshape(shape), commitment.reshape(shape)),
                               ppl)

    # -- statistics ----------------------------------------------------------------------
    def _clear_pending(self) -> None:
        self._pending_counts: Optional[Tensor] = None
        self._pending_sums: Optional[Tensor] = None
        self._pending_calls = 0
        self._last_vectors: Optional[Tensor] = None

    @property
    def has_pending(self) -> bool:
        """True when training forward passes gathered statistics not yet applied."""
        return self._pending_calls > 0

    def _accumulate(self, flat: Tensor, idx: Tensor, counts: Tensor) -> None:
        sums = torch.zeros(self.codebook_size, self.embedding_dim, dtype=flat.dtype,
                           device=flat.device).index_add_(0, idx, flat)  # (K, D)
        counts = counts.to(flat.dtype)
        if self._pending_calls == 0:
            self._pending_counts, self._pending_sums = counts, sums
        else:
            self._pending_counts = self._pending_counts + counts
            self._pending_sums = self._pending_sums + sums
        self._pending_calls += 1
        self._last_vectors = flat
        if self.auto_update:
            _PENDING.add(self)
            _ensure_hook()

    def pending_statistics(self) -> tuple[Tensor, Tensor, int]:
        """The statistics gathered since the last :meth:`update`: summed code counts (K,),
        summed encoder outputs per code (K, D) and the number of forward passes (zeros and
        0 when nothing is pending). Data-parallel training all-reduces them
        (:mod:`lvm_pyro.training.distributed`)."""
        if self._pending_calls == 0:
            k, d = self.codebook_size, self.embedding_dim
            dtype, device = self.codebook.dtype, self.codebook.device
            return (torch.zeros(k, dtype=dtype, device=device),
                    torch.zeros(k, d, dtype=dtype, device=device), 0)
        return self._pending_counts, self._pending_sums, self._pending_calls

    def set_pending_statistics(self, counts: Tensor, sums: Tensor, calls: int) -> None:
        """Replace the pending statistics (counts (K,), sums (K, D), ``calls`` >= 1 forward
        passes), e.g. by their sums over data-parallel ranks; the encoder outputs kept for
        dead-code restarts stay this process's own.

        Raises:
            ValueError: bad shapes or ``calls < 1``.
        """
        k, d = self.codebook_size, self.embedding_dim
        if tuple(counts.shape) != (k,) or tuple(sums.shape) != (k, d) or calls < 1:
            raise ValueError(f"pending statistics must be counts ({k},), sums ({k}, {d}) and "
                             f"calls >= 1; got {tuple(counts.shape)}, {tuple(sums.shape)}, {calls}")
        dtype = self.codebook.dtype
        self._pending_counts, self._pending_sums = counts.to(dtype), sums.to(dtype)
        self._pending_calls = int(calls)
        if self.auto_update:
            _PENDING.add(self)
            _ensure_hook()

    def discard_pending(self) -> None:
        """Forget statistics gathered since the last :meth:`update`."""
        self._clear_pending()
        _PENDING.discard(self)

    @torch.no_grad()
    def update(self) -> int:
        """Apply the statistics gathered since the last call (averaged over the forward
        passes that gathered them): one EMA step of the codebook (when ``decay`` is set),
        the usage averages, the epoch counts, then dead-code restarts.

        Returns:
            the number of codes restarted (0 when nothing was pending).
        """
        _PENDING.discard(self)
        if self._pending_calls == 0:
            return 0
        counts = self._pending_counts / self._pending_calls  # (K,)
        sums = self._pending_sums / self._pending_calls  # (K, D)
        vectors = self._last_vectors
        self._clear_pending()
        if self.uses_ema:
            g = self.decay
            self.ema_cluster_size.mul_(g).add_(counts, alpha=1 - g)
            self.ema_embed_sum.mul_(g).add_(sums, alpha=1 - g)
            n = self.ema_cluster_size.sum()
            k = self.codebook_size
            smoothed = (self.ema_cluster_size + self.epsilon) / (n + k * self.epsilon) * n
            self.codebook.copy_(self.ema_embed_sum / smoothed.unsqueeze(1))
        ud = self.decay if self.uses_ema else 0.99
        if int(self.num_updates) == 0 and not self.kmeans_init:
            # seed the average with the first step's counts (k-means seeds it otherwise):
            # a zero start would read every code as dead at the first check
            self.usage_ema.copy_(counts)
        else:
            self.usage_ema.mul_(ud).add_(counts, alpha=1 - ud)
        self.epoch_counts.add_(counts.double())
        self.num_updates.add_(1)
        restarted = 0
        if self.dead_code_threshold > 0:
            restarted = self.restart_dead_codes(vectors)
        return restarted

    @torch.no_grad()
    def restart_dead_codes(self, vectors: Tensor) -> int:
        """Move every code with ``usage_ema < dead_code_threshold`` to a random row of
        ``vectors`` (N, D) (encoder outputs of the latest batch) and reset its moving
        averages (usage and cluster size to the threshold). Other codes are untouched.

        Returns:
            the number of codes restarted.
        """
        dead = self.usage_ema < self.dead_code_threshold  # (K,)
        num = int(dead.sum())
        if num == 0 or vectors is None or len(vectors) == 0:
            return 0
        pick = torch.randint(len(vectors), (num,), device=vectors.device)
        new = vectors[pick].to(self.codebook.dtype)  # (num, D)
        self.codebook[dead] = new
        self.usage_ema[dead] = self.dead_code_threshold
        if self.uses_ema:
            self.ema_cluster_size[dead] = self.dead_code_threshold
            self.ema_embed_sum[dead] = new * self.dead_code_threshold
        self.epoch_restarts.add_(num)
        return num

    @torch.no_grad()
    def _kmeans(self, vectors: Tensor) -> None:
        """k-means (k-means++ seeding, then Lloyd iterations) on ``vectors`` (N, D); sets
        the codebook (and EMA state)."""
        k = self.codebook_size
        n = len(vectors)
        vectors = vectors.to(self.codebook.dtype)
        # k-means++ seeding (Arthur & Vassilvitskii 2007): each new centre drawn with
        # probability proportional to the squared distance to the nearest chosen one
        centroids = vectors.new_empty(k, vectors.shape[1])
        centroids[0] = vectors[torch.randint(n, (1,), device=vectors.device)]
        min_d2 = (vectors - centroids[0]).pow(2).sum(1)  # (N,)
        for j in range(1, k):
            if float(min_d2.sum()) > 0:
                pick = torch.multinomial(min_d2, 1)
            else:  # every vector already a centre (N < K or duplicates): uniform
                pick = torch.randint(n, (1,), device=vectors.device)
            centroids[j] = vectors[pick]
            min_d2 = torch.minimum(min_d2, (vectors - centroids[j]).pow(2).sum(1))
        counts = torch.zeros(k, dtype=vectors.dtype, device=vectors.device)
        for _ in range(self.kmeans_iters):
            idx = vq_nearest(vectors, centroids)
            counts = torch.bincount(idx, minlength=k).to(vectors.dtype)
            sums = torch.zeros_like(centroids).index_add_(0, idx, vectors)
            filled = counts > 0
            centroids[filled] = sums[filled] / counts[filled].unsqueeze(1)
        self.codebook.copy_(centroids)
        if self.uses_ema:
            size = counts.clamp(min=1.0)
            self.ema_cluster_size.copy_(size)
            self.ema_embed_sum.copy_(centroids * size.unsqueeze(1))
        self.usage_ema.copy_(counts)
        self.initialized.fill_(True)

    def usage_summary(self, reset: bool = True) -> CodebookUsage:
        """Codebook usage over the training steps since the last reset (an epoch when a
        per-epoch callback calls this): perplexity of the step-averaged code counts and
        the number of codes never chosen. ``reset`` zeroes the counts and restarts.

        Returns:
            :class:`CodebookUsage`.
        """
        usage = _usage_from_counts(self.epoch_counts)
        if reset:
            self.epoch_counts.zero_()
            self.epoch_restarts.zero_()
        return usage

    def _load_from_state_dict(self, *args, **kwargs):
        self.discard_pending()  # loaded state replaces anything gathered before
        super()._load_from_state_dict(*args, **kwargs)

