"""Non-amortised (local) diagonal-Gaussian guide: one q_i(z) per datapoint.

Lecture section 3: before amortisation, the proposal q is fitted separately for every
x_i. Compared with an encoder q_phi(z | x_i), the family is the same (a diagonal Gaussian)
but nothing is shared between datapoints, so the gap between the two ELBOs is the
amortisation gap (Cremer, Li & Duvenaud 2018, "Inference Suboptimality in Variational
Autoencoders", eq. 5-6).
"""

from __future__ import annotations

from typing import Optional

import pyro
import pyro.distributions as dist
import torch
from pyro.distributions import constraints
from pyro.nn import PyroParam

from ..sites import LATENT, data_plate
from ..registration import CachedPyroModule

__all__ = ["LocalNormalGuide"]


class LocalNormalGuide(CachedPyroModule):
    """Per-datapoint guide::

        q(z | x_i) = N(z; loc[i], diag(scale[i]^2))      site "z", inside the "data" plate

    with ``loc`` and ``scale`` parameters of shape (num_data, z_dim) (``PyroParam``,
    scale constrained positive). Row i belongs to datapoint i of the data set; the
    training loop's minibatch indices ``idx`` select the rows, so the data must be passed
    in the same order on every call (``Trainer.fit`` does).

    Args:
        num_data: N, the number of datapoints (rows).
        z_dim: latent size.
        init_loc: (N, z_dim) initial means (e.g. an encoder's output: a warm start); a
            scalar broadcasts. Default 0 (the prior's mean).
        init_scale: (N, z_dim) or scalar initial scale (> 0). Default 1 (the prior's).
        name: prefix of the parameter names in Pyro's param store (``"<name>.loc"``,
            ``"<name>.scale"``); two local guides alive together need different names.
            As for every ``PyroModule``, values already in the store under these names
            (same shape) are used in place of the initial values at the first call.

    ``forward(x, *, num_data=None, idx=None)``: x (batch, ...) with batch the length of
    ``idx``; with ``idx=None`` x must hold all N datapoints in order (all rows are used).

    Raises:
        ValueError: bad sizes or initial values; the param store holding ``<name>.loc``
            of another shape; at call time, ``idx`` missing while
            ``len(x) != N``, an index outside 0..N-1, or ``num_data`` other than N.
    """

    def __init__(self, num_data: int, z_dim: int, *,
                 init_loc: float | torch.Tensor = 0.0, init_scale: float | torch.Tensor = 1.0,
                 name: str = "local_guide"):
        super().__init__(name)
        if num_data < 1:
            raise ValueError(f"num_data must be >= 1, got {num_data}")
        if z_dim < 1:
            raise ValueError(f"z_dim must be >= 1, got {z_dim}")
        self.num_data, self.z_dim = int(num_data), int(z_dim)
        shape = (self.num_data, self.z_dim)
        loc = torch.as_tensor(init_loc, dtype=torch.get_default_dtype()).detach()
        scale = torch.as_tensor(init_scale, dtype=loc.dtype).detach()
        try:
            loc = loc.expand(shape).clone()
            scale = scale.expand(shape).clone()
        except RuntimeError as e:
            raise ValueError(f"init_loc / init_scale must broadcast to (num_data, z_dim) = "
                             f"{shape}, got {tuple(loc.shape)} / {tuple(scale.shape)}") from e
        if not bool((scale > 0).all()):
            raise ValueError("init_scale must be > 0 everywhere")
        store = pyro.get_param_store()
        for key in (f"{name}.loc" if name else "loc", f"{name}.scale" if name else "scale"):
            if key in store and tuple(store[key].shape) != shape:
                raise ValueError(
                    f"Pyro's param store already holds {key!r} of shape "
                    f"{tuple(store[key].shape)}, not {shape}: another LocalNormalGuide uses "
                    f"name={name!r}; give this one another name (or pyro.clear_param_store())")
        self.loc = PyroParam(loc)
        self.scale = PyroParam(scale, constraints.positive)

    def _rows(self, x: torch.Tensor, num_data: Optional[int],
              idx: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
        if num_data is not None and num_data != self.num_data:
            raise ValueError(f"num_data={num_data} but this LocalNormalGuide has "
                             f"{self.num_data} rows; build it with num_data=len(dataset)")
        if idx is None:
            if x.shape[0] != self.num_data:
                raise ValueError(
                    f"idx is None, so x must hold all {self.num_data} datapoints in order, "
                    f"got a batch of {x.shape[0]}; pass idx (the rows of x in the data set)")
            return None
        idx = torch.as_tensor(idx, device=self.loc.device)
        if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= self.num_data):
            raise ValueError(f"idx must lie in 0..{self.num_data - 1}, got range "
                             f"{int(idx.min())}..{int(idx.max())}")
        return idx

    def loc_scale(self, x: torch.Tensor, idx: Optional[torch.Tensor] = None
                  ) -> tuple[torch.Tensor, torch.Tensor]:
        """(loc, scale) of q(z | x_i) for the rows ``idx`` (all rows when ``None``), each
        (batch, z_dim)."""
        rows = self._rows(x, None, idx)
        loc, scale = self.loc, self.scale
        if rows is None:
            return loc, scale
        return loc[rows], scale[rows]  # (batch, z_dim)

    def forward(self, x: torch.Tensor, *, num_data: Optional[int] = None,
                idx: Optional[torch.Tensor] = None) -> torch.Tensor:
        rows = self._rows(x, num_data, idx)
        loc, scale = self.loc, self.scale
        if rows is not None:
            loc, scale = loc[rows], scale[rows]  # (batch, z_dim)
        with data_plate(x, num_data, idx):
            return pyro.sample(LATENT, dist.Normal(loc, scale).to_event(1))
