"""Registries that turn a run configuration (a JSON-able dict) into a model, a guide and
an objective. The only place where names such as ``"vae"`` or ``"trace"`` are mapped to
code; later models and objectives register themselves here (:func:`register_model`,
:func:`register_elbo`)."""

from __future__ import annotations

from typing import Any, Callable, Sequence

from pyro.infer import ELBO, Trace_ELBO, TraceMeanField_ELBO

from ..guides import AmortizedNormalGuide
from ..inference.iwae import IWAE_ELBO
from ..models import VAEModel, make_likelihood
from ..nn import MLP, ConvDecoder, ConvEncoder

__all__ = ["MODEL_BUILDERS", "ELBO_BUILDERS", "register_model", "register_elbo",
           "build_model", "build_elbo", "build_vae"]

ModelBuilder = Callable[[dict, Sequence[int]], tuple[Any, Any]]
MODEL_BUILDERS: dict[str, ModelBuilder] = {}
ELBO_BUILDERS: dict[str, Callable[[dict], ELBO]] = {}


def register_model(name: str, builder: ModelBuilder) -> None:
    """Register ``builder(config, event_shape) -> (model, guide)`` under ``name``."""
    MODEL_BUILDERS[name] = builder


def register_elbo(name: str, builder: Callable[[dict], ELBO]) -> None:
    """Register ``builder(config) -> ELBO`` under ``name``."""
    ELBO_BUILDERS[name] = builder


def build_vae(config: dict, event_shape: Sequence[int]):
    """VAE with an MLP (``network="mlp"``: ``num_hidden`` tanh layers of ``hidden_dim``,
    the IWAE paper's one-stochastic-layer net with 2 x 200 and z_dim 50) or a small conv
    net (``network="conv"``)."""
    z_dim = int(config["z_dim"])
    lik = make_likelihood(config.get("likelihood", "bernoulli"))
    hidden = [int(config.get("hidden_dim", 200))] * int(config.get("num_hidden", 2))
    act = config.get("activation", "tanh")
    event_shape = tuple(event_shape)
    if config.get("network", "mlp") == "conv":
        enc = ConvEncoder(event_shape, (2, z_dim), hidden_dim=hidden[0] if hidden else 256)
        dec = ConvDecoder(z_dim, (lik.num_params, *event_shape), hidden_dim=hidden[0] if hidden else 256)
    else:
        enc = MLP(event_shape, hidden, (2, z_dim), activation=act)
        dec = MLP((z_dim,), hidden, (lik.num_params, *event_shape), activation=act)
    return VAEModel(dec, z_dim, event_shape, lik), AmortizedNormalGuide(enc, z_dim)


register_model("vae", build_vae)
register_elbo("trace", lambda c: Trace_ELBO(num_particles=int(c.get("num_particles", 1)),
                                            vectorize_particles=int(c.get("num_particles", 1)) > 1,
                                            max_plate_nesting=1))
register_elbo("meanfield", lambda c: TraceMeanField_ELBO(
    num_particles=int(c.get("num_particles", 1)),
    vectorize_particles=int(c.get("num_particles", 1)) > 1, max_plate_nesting=1))
register_elbo("iwae", lambda c: IWAE_ELBO(num_particles=int(c.get("num_particles", 1)),
                                          gradient=c.get("gradient", "standard")))


def build_model(config: dict, event_shape: Sequence[int]):
    """(model, guide) for ``config["model"]``.

    Raises:
        ValueError: unknown model name (lists the registered ones).
    """
    name = config.get("model", "vae")
    if name not in MODEL_BUILDERS:
        raise ValueError(f"unknown model {name!r}; registered: {sorted(MODEL_BUILDERS)}")
    return MODEL_BUILDERS[name](config, event_shape)


def build_elbo(config: dict) -> ELBO:
    """The objective for ``config["elbo"]``.

    Raises:
        ValueError: unknown objective name (lists the registered ones).
    """
    name = config.get("elbo", "trace")
    if name not in ELBO_BUILDERS:
        raise ValueError(f"unknown elbo {name!r}; registered: {sorted(ELBO_BUILDERS)}")
    return ELBO_BUILDERS[name](config)
