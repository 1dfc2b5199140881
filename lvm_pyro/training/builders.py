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
           "build_model", "build_elbo", "build_vae", "build_vqvae", "CALLBACK_BUILDERS",
           "METRIC_BUILDERS", "build_callbacks", "build_metrics"]

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

# -- per-model Trainer callbacks and extra test metrics (VQ-VAE registers both) ---------
CALLBACK_BUILDERS: dict[str, Callable[[dict, Any, Any], list]] = {}
METRIC_BUILDERS: dict[str, Callable[[dict, Any, Any, Any], dict]] = {}


def build_callbacks(config: dict, model, guide) -> list:
    """Trainer callbacks ``cb(trainer, metrics) -> dict | None`` registered for
    ``config["model"]`` (a returned dict is merged into that epoch's history)."""
    fn = CALLBACK_BUILDERS.get(config.get("model", "vae"))
    return [] if fn is None else list(fn(config, model, guide))


def build_metrics(config: dict, model, guide, x) -> dict:
    """Extra test metrics registered for ``config["model"]`` on test data x ({} if none)."""
    fn = METRIC_BUILDERS.get(config.get("model", "vae"))
    return {} if fn is None else dict(fn(config, model, guide, x))


def build_vqvae(config: dict, event_shape: Sequence[int]):
    """VQ-VAE (van den Oord et al. 2017) with the conv encoder / decoder of
    :mod:`lvm_pyro.nn.vq_conv` (``channels`` wide, latent grid H/4 x W/4), a
    :class:`~lvm_pyro.nn.VectorQuantizer` shared by model and guide (``codebook_size``,
    ``embedding_dim``, ``commitment_weight``, ``decay``: 0 learns the codebook by its
    loss, ``dead_code_threshold``) and the likelihood ``likelihood`` (default
    ``discretized_logistic`` with ``num_mixtures`` components; levels from ``num_levels``
    or the data set: 17 for digits, else 256)."""
    from ..guides import VQEncoderGuide
    from ..models import VQVAEModel
    from ..nn import VectorQuantizer, VQConvDecoder, VQConvEncoder

    c, h, w = tuple(event_shape)
    name = config.get("likelihood", "discretized_logistic")
    kwargs = {}
    if name == "discretized_logistic":
        levels = config.get("num_levels") or (17 if config.get("data") == "digits" else 256)
        kwargs = {"num_mixtures": int(config.get("num_mixtures", 1)), "num_levels": int(levels)}
    lik = make_likelihood(name, **kwargs)
    d, ch = int(config.get("embedding_dim", 16)), int(config.get("channels", 64))
    decay = float(config.get("decay", 0.99))
    quantizer = VectorQuantizer(int(config.get("codebook_size", 512)), d,
                                commitment_weight=float(config.get("commitment_weight", 0.25)),
                                decay=decay if decay > 0 else None,
                                dead_code_threshold=float(config.get("dead_code_threshold", 0.0)))
    enc = VQConvEncoder(c, d, channels=ch, res_channels=max(1, ch // 2))
    dec = VQConvDecoder(d, (lik.num_params, c, h, w), channels=ch, res_channels=max(1, ch // 2))
    return (VQVAEModel(dec, quantizer, (h // 4, w // 4), (c, h, w), lik),
            VQEncoderGuide(enc, quantizer))


def _vqvae_callbacks(config: dict, model, guide) -> list:
    quantizer = guide.quantizer

    def codebook_usage(trainer, metrics) -> dict:
        restarts = int(quantizer.epoch_restarts)
        usage = quantizer.usage_summary(reset=True)
        return {"perplexity": usage.perplexity, "dead_codes": usage.dead_codes,
                "restarted_codes": restarts}

    return [codebook_usage]


def _vqvae_metrics(config: dict, model, guide, x, batch_size: int = 100) -> dict:
    import math

    import torch

    from ..nn import codebook_usage

    rec, codes = [], []
    with torch.no_grad():
        for start in range(0, len(x), batch_size):
            out = guide.encode(x[start:start + batch_size])
            rec.append(model.reconstruction_log_prob(x[start:start + batch_size], out.quantized))
            codes.append(out.indices)
    rec_nll = -torch.cat(rec).double()
    usage = codebook_usage(torch.cat(codes), model.codebook_size)
    dims = math.prod(x.shape[1:])
    return {"test_reconstruction_nll": float(rec_nll.mean()),
            "test_reconstruction_nll_se": float(rec_nll.std() / math.sqrt(len(rec_nll))),
            "test_reconstruction_bits_per_dim": float(rec_nll.mean()) / (dims * math.log(2)),
            "codes_prior_nats": model.num_codes * math.log(model.codebook_size),
            "test_perplexity": usage.perplexity, "test_dead_codes": usage.dead_codes,
            "codebook_size": model.codebook_size, "code_grid": list(model.latent_shape)}


register_model("vqvae", build_vqvae)
CALLBACK_BUILDERS["vqvae"] = _vqvae_callbacks
METRIC_BUILDERS["vqvae"] = _vqvae_metrics
register_elbo("trace", lambda c: Trace_ELBO(num_particles=int(c.get("num_particles", 1)),
                                            vectorize_particles=int(c.get("num_particles", 1)) > 1,
                                            max_plate_nesting=1))
register_elbo("meanfield", lambda c: TraceMeanField_ELBO(
    num_particles=int(c.get("num_particles", 1)),
    vectorize_particles=int(c.get("num_particles", 1)) > 1, max_plate_nesting=1))
register_elbo("iwae", lambda c: IWAE_ELBO(num_particles=int(c.get("num_particles", 1)),
                                          gradient=c.get("gradient", "standard")))


# -- sigmoid belief net, score-function objectives, KL weighting (issue 4) ---------------
def build_sbn(config: dict, event_shape: Sequence[int]):
    """Sigmoid belief net (:class:`~lvm_pyro.models.SigmoidBeliefNetModel`) with
    ``num_stochastic_layers`` Bernoulli layers of ``z_dim`` units and a Bernoulli encoder
    guide; every conditional is an MLP with ``num_hidden`` tanh layers of ``hidden_dim``
    (``num_hidden=0``: the classic linear SBN). With ``elbo="tracegraph"`` the guide
    declares NVIL input-dependent baselines (an MLP with one hidden layer of 100)."""
    from ..guides import InputBaseline, SigmoidBeliefNetGuide
    from ..models import SigmoidBeliefNetModel

    event_shape = tuple(event_shape)
    z_dim, layers = int(config["z_dim"]), int(config.get("num_stochastic_layers", 1))
    if layers < 1:
        raise ValueError(f"num_stochastic_layers must be >= 1, got {layers}")
    hidden = [int(config.get("hidden_dim", 200))] * int(config.get("num_hidden", 0))
    act = config.get("activation", "tanh")
    dims = [z_dim] * layers
    dec = MLP((z_dim,), hidden, (1, *event_shape), activation=act)
    between = [MLP((z_dim,), hidden, (z_dim,), activation=act) for _ in range(layers - 1)]
    encoders = [MLP(event_shape, hidden, (z_dim,), activation=act)]
    encoders += [MLP((z_dim,), hidden, (z_dim,), activation=act) for _ in range(layers - 1)]
    baselines = None
    if config.get("elbo") == "tracegraph":
        baselines = [InputBaseline(event_shape, (100,)) for _ in range(layers)]
    return (SigmoidBeliefNetModel(dec, dims, event_shape, between),
            SigmoidBeliefNetGuide(encoders, dims, baselines))


def _build_vimco(c: dict):
    from ..inference import VIMCO

    k = int(c.get("num_particles", 1))
    if k < 2:
        raise ValueError(f"--elbo vimco needs --num-particles K >= 2 (leave-one-out baselines), "
                         f"got {k}")
    return VIMCO(num_particles=k, max_plate_nesting=1)


def _build_tracegraph(c: dict):
    from pyro.infer import TraceGraph_ELBO

    # particles unvectorised: guide-declared baselines have the data plate's shape (batch,)
    return TraceGraph_ELBO(num_particles=int(c.get("num_particles", 1)),
                           vectorize_particles=False, max_plate_nesting=1)


register_model("sbn", build_sbn)
register_elbo("vimco", _build_vimco)
register_elbo("tracegraph", _build_tracegraph)


def apply_kl_weighting(elbo: ELBO, config: dict) -> ELBO:
    """Wrap ``elbo`` with the run's KL weighting: ``free_bits`` lambda > 0 replaces a
    ``trace`` / ``meanfield`` objective by :class:`~lvm_pyro.inference.FreeBits_ELBO`;
    ``beta`` != 1 or ``kl_warmup`` T > 0 (optimiser steps) wraps it in
    :class:`~lvm_pyro.inference.KLWeighted_ELBO` (beta_t = beta * min(1, t / T)).
    The defaults (1, 0, 0) return ``elbo`` unchanged.

    Raises:
        ValueError: free bits with another objective, or beta / warm-up with an
            importance-weighted one (IWAE, VIMCO), whose bound has no KL term to weigh.
    """
    from pyro.infer import TraceEnum_ELBO, TraceGraph_ELBO

    from ..inference import FreeBits_ELBO, KLWeighted_ELBO

    name = config.get("elbo", "trace")
    beta = float(config.get("beta", 1.0))
    warmup = int(config.get("kl_warmup", 0) or 0)
    free_bits = float(config.get("free_bits", 0.0) or 0.0)
    if free_bits > 0:
        if name not in ("trace", "meanfield"):
            raise ValueError(f"--free-bits works with --elbo trace or meanfield (pathwise "
                             f"gradients), not {name!r}")
        elbo = FreeBits_ELBO(free_bits, num_particles=int(config.get("num_particles", 1)),
                             max_plate_nesting=1)
    if beta != 1.0 or warmup > 0:
        if not isinstance(elbo, (Trace_ELBO, TraceGraph_ELBO, TraceEnum_ELBO, FreeBits_ELBO)):
            raise ValueError(f"--beta / --kl-warmup weigh the KL term of an ELBO (--elbo trace, "
                             f"meanfield or tracegraph); {name!r} is an importance-weighted bound "
                             "with no KL term to weigh")
        elbo = KLWeighted_ELBO(elbo, beta=beta, kl_warmup_steps=warmup)
    return elbo


__all__ += ["build_sbn", "apply_kl_weighting"]


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
        ValueError: unknown objective name (lists the registered ones); a ``gradient``
            other than ``"standard"`` with an objective other than ``"iwae"`` (it would
            be silently ignored).
    """
    name = config.get("elbo", "trace")
    if name not in ELBO_BUILDERS:
        raise ValueError(f"unknown elbo {name!r}; registered: {sorted(ELBO_BUILDERS)}")
    if config.get("gradient", "standard") != "standard" and name != "iwae":
        raise ValueError(f"--gradient {config['gradient']} applies to --elbo iwae only "
                         f"(got --elbo {name}); drop it or use --elbo iwae")
    return apply_kl_weighting(ELBO_BUILDERS[name](config), config)
