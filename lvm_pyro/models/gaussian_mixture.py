"""Gaussian mixture with an exactly enumerated discrete latent (lecture section 2).

    z ~ Categorical(weights)                 site "z", enumerated (never sampled in training)
    x | z ~ N(locs[z], Sigma[z])             site "x"

p(x) = sum_k weights_k N(x; locs_k, Sigma_k) is computed exactly: ``TraceEnum_ELBO``
sums the enumerated site out, so with an empty guide its loss is -sum_i log p(x_i)
(Bishop, PRML eq. 9.7 / 9.14; Pyro's ``examples/gmm`` tutorial).
"""

from __future__ import annotations

import weakref
from typing import Optional

import pyro
import pyro.distributions as dist
import torch
from pyro.distributions import constraints
from pyro.nn import PyroParam

from ..sites import LATENT, OBS, data_plate
from ..registration import CachedPyroModule

__all__ = ["GaussianMixtureModel", "COVARIANCE_TYPES"]

COVARIANCE_TYPES = ("full", "diag")

#: live instances, to tell when two of them would share param-store names
_LIVE: "weakref.WeakSet[GaussianMixtureModel]" = weakref.WeakSet()


class GaussianMixtureModel(CachedPyroModule):
    """Mixture of ``num_components`` Gaussians in ``dim`` dimensions::

        z ~ Categorical(weights)             site "z", infer={"enumerate": "parallel"}
        x | z ~ MultivariateNormal(locs[z], scale_tril[z])      site "x"

    both inside ``pyro.plate("data", num_data, subsample=idx)``. All parameters are
    point estimates (``PyroParam``): weights on the simplex, locs unconstrained, a
    lower-Cholesky factor per component (``covariance="full"``) or a positive scale
    vector (``"diag"``). Fit by maximum likelihood with ``TraceEnum_ELBO(max_plate_nesting=1)``
    and an empty guide (e.g. :class:`lvm_pyro.guides.EmptyGuide`): the loss is then
    exactly -sum_i log p(x_i).

    Args:
        num_components: K >= 1.
        dim: D >= 1, the dimension of x.
        covariance: ``"full"`` or ``"diag"``.
        init_locs: (K, D) initial means; default N(0, 1) draws from a generator seeded by
            ``seed`` (see :meth:`init_from_data` for a data-driven start).
        init_scale: initial standard deviation of every component (> 0).
        init_weights: (K,) initial weights (positive; normalised); default uniform.
        seed: seed of the default ``init_locs``.
        name: prefix of the parameter names in Pyro's param store; two live instances
            with the same name would share the store's entries (the second silently
            using the first one's parameters), so running the second one raises.

    ``forward(x, *, num_data=None, idx=None)``: x (batch, D) float.

    Raises:
        ValueError: bad sizes, an unknown covariance type, non-positive scale / weights,
            x of the wrong shape or of another floating dtype than the parameters (float64
            data needs float64 ``init_locs``, as :meth:`init_from_data` gives), or a
            param-store name already held by another live instance.
    """

    def __init__(self, num_components: int, dim: int, covariance: str = "full", *,
                 init_locs: Optional[torch.Tensor] = None, init_scale: float = 1.0,
                 init_weights: Optional[torch.Tensor] = None, seed: int = 0, name: str = ""):
        super().__init__(name)
        if num_components < 1:
            raise ValueError(f"num_components must be >= 1, got {num_components}")
        if dim < 1:
            raise ValueError(f"dim must be >= 1, got {dim}")
        if covariance not in COVARIANCE_TYPES:
            raise ValueError(f"covariance must be one of {COVARIANCE_TYPES}, got {covariance!r}")
        if not init_scale > 0:
            raise ValueError(f"init_scale must be > 0, got {init_scale}")
        self.num_components, self.dim, self.covariance = int(num_components), int(dim), covariance
        if init_locs is None:
            gen = torch.Generator().manual_seed(int(seed))
            init_locs = torch.randn(num_components, dim, generator=gen)
        init_locs = torch.as_tensor(init_locs)
        if not torch.is_floating_point(init_locs):
            init_locs = init_locs.to(torch.get_default_dtype())
        if init_locs.shape != (num_components, dim):
            raise ValueError(f"init_locs must have shape ({num_components}, {dim}), "
                             f"got {tuple(init_locs.shape)}")
        if init_weights is None:
            init_weights = torch.full((num_components,), 1.0 / num_components)
        init_weights = torch.as_tensor(init_weights, dtype=init_locs.dtype)
        if init_weights.shape != (num_components,) or not bool((init_weights > 0).all()):
            raise ValueError(f"init_weights must be ({num_components},) positive numbers, "
                             f"got {init_weights}")
        self.weights = PyroParam(init_weights / init_weights.sum(), constraints.simplex)
        self.locs = PyroParam(init_locs.clone())
        if covariance == "full":
            tril = init_scale * torch.eye(dim, dtype=init_locs.dtype).expand(num_components, dim, dim)
            self.scale_tril = PyroParam(tril.clone(), constraints.lower_cholesky)
        else:
            self.scale = PyroParam(torch.full((num_components, dim), float(init_scale),
                                              dtype=init_locs.dtype), constraints.positive)
        _LIVE.add(self)

    def _check_param_store(self) -> None:
        """Raise when another live instance holds this one's param-store names."""
        store = pyro.get_param_store()
        for name in self._pyro_params:
            full = f"{self._pyro_name}.{name}" if self._pyro_name else name
            held = store._params.get(full)
            if held is None:
                continue
            for other in list(_LIVE):
                if other is not self and other._parameters.get(f"{name}_unconstrained") is held:
                    raise ValueError(
                        f"another GaussianMixtureModel holds the Pyro parameter {full!r}: this "
                        "one would silently use its parameters; give each instance its own "
                        "name (GaussianMixtureModel(..., name='gmm2')) or call "
                        "pyro.clear_param_store() before using this one")

    @classmethod
    def init_from_data(cls, x: torch.Tensor, num_components: int, covariance: str = "full",
                       *, seed: int = 0, **kwargs) -> "GaussianMixtureModel":
        """A mixture started from data: means by k-means++ seeding (Arthur & Vassilvitskii
        2007: each next mean is a data point drawn with probability proportional to its
        squared distance to the nearest mean chosen so far), every component's scale the
        data's average per-dimension standard deviation / K, uniform weights.

        Args:
            x: (N, D) float data, N >= num_components.
            num_components, covariance, kwargs: as for the constructor.
            seed: seed of the k-means++ draws (a private generator).
        """
        if x.dim() != 2 or x.shape[0] < num_components:
            raise ValueError(f"x must be (N, D) with N >= num_components={num_components}, "
                             f"got {tuple(x.shape)}")
        gen = torch.Generator().manual_seed(int(seed))
        xd = x.detach().double().cpu()
        first = torch.randint(len(xd), (1,), generator=gen)
        centres = [xd[first[0]]]
        for _ in range(1, num_components):
            d2 = torch.cdist(xd, torch.stack(centres)).pow(2).min(dim=1).values  # (N,)
            nxt = torch.multinomial(d2 / d2.sum(), 1, generator=gen)
            centres.append(xd[nxt[0]])
        locs = torch.stack(centres).to(x.dtype)
        init_scale = float(xd.std(dim=0).mean()) / num_components
        return cls(num_components, x.shape[1], covariance, init_locs=locs,
                   init_scale=kwargs.pop("init_scale", init_scale), **kwargs)

    def _scale_tril(self) -> torch.Tensor:
        """(K, D, D) lower-Cholesky factors of the component covariances."""
        if self.covariance == "full":
            return self.scale_tril
        return torch.diag_embed(self.scale)

    def components(self) -> dist.MultivariateNormal:
        """The K component densities, batch shape (K,), event shape (D,)."""
        return dist.MultivariateNormal(self.locs, scale_tril=self._scale_tril())

    def covariances(self) -> torch.Tensor:
        """(K, D, D) component covariance matrices."""
        tril = self._scale_tril()
        return tril @ tril.transpose(-1, -2)

    def mixture(self) -> dist.MixtureSameFamily:
        """p(x) as one distribution (event shape (D,)): the exact marginal."""
        return dist.MixtureSameFamily(dist.Categorical(probs=self.weights), self.components())

    def _check(self, x: torch.Tensor) -> None:
        if x.dim() != 2 or x.shape[1] != self.dim:
            raise ValueError(f"GaussianMixtureModel expects x of shape (batch, {self.dim}), "
                             f"got {tuple(x.shape)}")
        if not torch.is_floating_point(x):
            raise ValueError(f"x must be floating point, got {x.dtype}; convert with x.float()")
        dtype = self._parameters["locs_unconstrained"].dtype
        if x.dtype != dtype:
            raise ValueError(f"x is {x.dtype} but the model's parameters are {dtype}; convert "
                             f"x (x.to({dtype})) or build the model in {x.dtype} "
                             "(GaussianMixtureModel.init_from_data(x, ...) or init_locs of that "
                             "dtype)")

    def forward(self, x: torch.Tensor, *, num_data: Optional[int] = None,
                idx: Optional[torch.Tensor] = None) -> None:
        self._check(x)
        self._check_param_store()
        weights, locs, tril = self.weights, self.locs, self._scale_tril()
        with data_plate(x, num_data, idx):
            z = pyro.sample(LATENT, dist.Categorical(probs=weights),
                            infer={"enumerate": "parallel"})  # (batch,) or (K, 1) enumerated
            pyro.sample(OBS, dist.MultivariateNormal(locs[z], scale_tril=tril[z]), obs=x)

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """Exact log p(x_i) = log sum_k weights_k N(x_i; locs_k, Sigma_k).

        Args:
            x: (batch, D) float.

        Returns:
            (batch,) nats, in the parameters' dtype.
        """
        self._check(x)
        return self.mixture().log_prob(x)

    def posterior(self, x: torch.Tensor) -> torch.Tensor:
        """Exact responsibilities p(z = k | x_i): (batch, D) -> (batch, K), rows sum to 1."""
        self._check(x)
        lp = self.components().log_prob(x.unsqueeze(-2))  # (batch, K)
        return torch.softmax(lp + self.weights.log(), dim=-1)

    @torch.no_grad()
    def sample(self, num_samples: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Draw (x, z) ~ p(x, z): x (num_samples, D) and z (num_samples,) int64."""
        if num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples}")
        z = dist.Categorical(probs=self.weights).sample((num_samples,))  # (n,)
        x = dist.MultivariateNormal(self.locs[z], scale_tril=self._scale_tril()[z]).sample()
        return x, z
