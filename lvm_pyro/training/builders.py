"""Registries that turn a typed run configuration (:mod:`lvm_pyro.training.config`) into a
model, a guide and an objective. The only place where names such as ``"vae"`` or
``"trace"`` are mapped to code; users add models and objectives with
:func:`register_model` / :func:`register_elbo`, each with its configuration dataclass.

Builders also take a plain dict (a flat ``config.json``-style mapping): it is turned into
the typed configuration first (:meth:`~lvm_pyro.training.config.RunConfig.from_dict`), so
defaults still come from the dataclasses only; a key that is a field of no configuration
(``{"zdim": 3}``) is a :class:`~lvm_pyro.training.config.ConfigError` naming it, a close
match and the run's fields.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Mapping, Optional, Sequence

from pyro.infer import ELBO, Trace_ELBO, TraceMeanField_ELBO

from ..guides import AmortizedNormalGuide
from ..inference.evaluation import nll_report
from ..inference.iwae import IWAE_ELBO
from ..models import VAEModel, make_likelihood
from ..nn import MLP, ConvDecoder, ConvEncoder
from .config import (MODEL_CONFIGS, OBJECTIVE_CONFIGS, ConfigError, FlowConfig, IWAEConfig,
                     MeanFieldConfig, ModelConfig, ObjectiveConfig, PixelVAEConfig, RunConfig,
                     SBNConfig, TCVAEConfig, TraceConfig, TraceGraphConfig, UserModelConfig,
                     VAEConfig, VIMCOConfig, VQVAE2Config, VQVAEConfig)

__all__ = ["MODEL_BUILDERS", "ELBO_BUILDERS", "register_model", "register_elbo",
           "build_model", "build_elbo", "build_objective", "build_vae", "build_vqvae",
           "CALLBACK_BUILDERS", "METRIC_BUILDERS", "build_callbacks", "build_metrics",
           "as_run_config", "resolve_model", "import_builder", "ENTRY_POINT_GROUP"]

ModelBuilder = Callable[[Any, Sequence[int]], tuple[Any, Any]]
MODEL_BUILDERS: dict[str, ModelBuilder] = {}
ELBO_BUILDERS: dict[str, Callable[[Any], ELBO]] = {}


def _check_config_cls(name: str, config_cls: type, base: type) -> None:
    if not (isinstance(config_cls, type) and dataclasses.is_dataclass(config_cls)
            and issubclass(config_cls, base)):
        raise ValueError(f"config_cls for {name!r} must be a dataclass subclassing "
                         f"{base.__name__}, got {config_cls!r}")
    if getattr(config_cls, "name", "") not in ("", name):
        raise ValueError(f"config_cls {config_cls.__name__} names {config_cls.name!r}, "
                         f"registered as {name!r}")
    config_cls.name = name


def register_model(name: str, builder: ModelBuilder, config_cls: type) -> None:
    """Register ``builder(config, event_shape) -> (model, guide)`` under ``name``;
    ``config_cls`` is its frozen configuration dataclass (a
    :class:`~lvm_pyro.training.config.ModelConfig` subclass; its fields become ``fit``
    flags and ``config.json`` keys). The builder receives a ``config_cls`` instance.

    Raises:
        ValueError: ``config_cls`` is not a ``ModelConfig`` dataclass, or names another
            model.
    """
    _check_config_cls(name, config_cls, ModelConfig)
    MODEL_BUILDERS[name] = builder
    MODEL_CONFIGS[name] = config_cls


def register_elbo(name: str, builder: Callable[[Any], ELBO], config_cls: type) -> None:
    """Register ``builder(objective_config) -> ELBO`` under ``name`` with its configuration
    dataclass (an :class:`~lvm_pyro.training.config.ObjectiveConfig` subclass). KL
    weighting is applied by :func:`build_objective` from the config's ``beta`` /
    ``kl_warmup`` / ``free_bits`` fields, when it has them.

    Raises:
        ValueError: ``config_cls`` is not an ``ObjectiveConfig`` dataclass.
    """
    _check_config_cls(name, config_cls, ObjectiveConfig)
    ELBO_BUILDERS[name] = builder
    OBJECTIVE_CONFIGS[name] = config_cls


#: entry-point group through which installed packages register model names:
#: ``[project.entry-points."lvm_pyro.models"] my_vae = "my_package.my_module:build"``
ENTRY_POINT_GROUP = "lvm_pyro.models"


def import_builder(path: str) -> tuple[ModelBuilder, type]:
    """Import the builder named by ``"package.module:attribute"`` and its configuration
    class: the module's ``CONFIG`` (a frozen :class:`~lvm_pyro.training.config.ModelConfig`
    dataclass) when it exports one, else a fresh subclass of
    :class:`~lvm_pyro.training.config.UserModelConfig`. The module is imported from
    ``sys.path``; when it is not found there, the current directory is added to
    ``sys.path`` and the import tried again (as ``python -m`` does), so that
    ``lvm-pyro fit --model examples.hierarchical_vae:build`` works from the repository
    root.

    Raises:
        ConfigError: ``path`` is not ``module:attribute``, the module cannot be imported,
            the attribute is missing or not callable, or ``CONFIG`` is not a ModelConfig
            dataclass.
    """
    import importlib
    import os
    import sys

    module_name, colon, attr = path.partition(":")
    if not colon or not module_name or not attr:
        raise ConfigError("model", f"a builder path must be 'package.module:builder', got {path!r}")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        cwd = os.getcwd()
        if e.name is None or not module_name.startswith(e.name) or cwd in sys.path:
            raise ConfigError("model", f"cannot import {module_name!r} ({e})") from e
        sys.path.insert(0, cwd)
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as e2:
            sys.path.remove(cwd)
            raise ConfigError("model", f"cannot import {module_name!r} from sys.path or the "
                                       f"current directory {cwd} ({e2}); install the package "
                                       "or run from the folder that holds it") from e2
    builder = module
    for part in attr.split("."):
        builder = getattr(builder, part, None)
    if not callable(builder):
        raise ConfigError("model", f"{module_name!r} has no callable {attr!r}; the builder is "
                                   "builder(config, event_shape) -> (model, guide)")
    config_cls = getattr(module, "CONFIG", None)
    if config_cls is None:
        config_cls = dataclasses.make_dataclass(
            "UserModelConfig", [], bases=(UserModelConfig,), frozen=True,
            namespace={"__doc__": UserModelConfig.__doc__, "name": "",
                       "__hash__": UserModelConfig.__hash__})
    elif not (isinstance(config_cls, type) and issubclass(config_cls, ModelConfig)
              and dataclasses.is_dataclass(config_cls)):
        raise ConfigError("model", f"{module_name}.CONFIG must be a frozen dataclass "
                                   f"subclassing lvm_pyro.training.config.ModelConfig, got "
                                   f"{config_cls!r}")
    return builder, config_cls


def resolve_model(name: str) -> bool:
    """Register the model ``name`` if it is not registered yet: a builder path
    ``"package.module:builder"`` (registered under that path, which ``config.json``
    records so that :func:`~lvm_pyro.training.run.load_run` rebuilds the model) or the
    name of an entry point in the :data:`ENTRY_POINT_GROUP` group of an installed
    package. Returns whether ``name`` is registered now (an unknown plain name is left
    to the caller's error).

    Raises:
        ConfigError: see :func:`import_builder`.
    """
    if name in MODEL_BUILDERS:
        return True
    if ":" in name:
        builder, config_cls = import_builder(name)
    else:
        from importlib.metadata import entry_points

        eps = [ep for ep in entry_points(group=ENTRY_POINT_GROUP) if ep.name == name]
        if not eps:
            return False
        builder, config_cls = import_builder(eps[0].value)
    if config_cls.name not in ("", name):  # a CONFIG shared by several builder paths
        config_cls = dataclasses.make_dataclass(config_cls.__name__, [], bases=(config_cls,),
                                                frozen=True, namespace={"name": ""})
    register_model(name, builder, config_cls)
    return True


def as_run_config(config: Any) -> RunConfig:
    """A :class:`RunConfig` from a ``RunConfig`` or a flat mapping (non-strict: keys of
    other models / objectives are ignored at their defaults).

    Raises:
        ConfigError: invalid values, a non-default value that would be ignored, or a key
            that is a field of no configuration (named, with a close match).
    """
    if isinstance(config, RunConfig):
        return config
    if isinstance(config, Mapping):
        return RunConfig.from_dict(config, strict=False)
    raise TypeError(f"expected a RunConfig or a mapping, got {type(config).__name__}")


def _model_config(config: Any, cls: type) -> Any:
    """``config`` as a ``cls`` instance (a RunConfig's model, or a mapping resolved as a
    run of this model, so data-dependent defaults apply)."""
    if isinstance(config, cls):
        return config
    if isinstance(config, Mapping):
        config = RunConfig.from_dict({**config, "model": cls.name}, strict=False)
    if isinstance(config, RunConfig) and isinstance(config.model, cls):
        return config.model
    raise TypeError(f"expected a {cls.__name__}, a RunConfig of model {cls.name!r} or a "
                    f"mapping, got {type(config).__name__}")


def build_vae(config: VAEConfig | Mapping, event_shape: Sequence[int]):
    """VAE with an MLP (``network="mlp"``: ``num_hidden`` tanh layers of ``hidden_dim``,
    the IWAE paper's one-stochastic-layer net with 2 x 200 and z_dim 50) or a small conv
    net (``network="conv"``). ``likelihood="gaussian_full"`` (vector data only) decodes a
    full-covariance Gaussian from its Cholesky factor
    (:class:`~lvm_pyro.models.likelihoods.FullCovarianceGaussianLikelihood`).

    Args:
        config: a :class:`~lvm_pyro.training.config.VAEConfig` (or a flat mapping).
        event_shape: (C, H, W) of one example.
    """
    cfg = _model_config(config, VAEConfig)
    if cfg.dequantization != "none":
        return _dequantized_vae(cfg, event_shape)
    z_dim = cfg.z_dim
    if cfg.likelihood == "gaussian_full":  # full covariance over vector data (D,)
        if len(event_shape) != 1 or cfg.network != "mlp":
            raise ConfigError("likelihood", f"gaussian_full needs vector data (event shape "
                                            f"(D,)) and --network mlp; got event shape "
                                            f"{tuple(event_shape)}, network {cfg.network}")
        lik = make_likelihood(cfg.likelihood, dim=event_shape[0])
    else:
        lik = make_likelihood(cfg.likelihood)
    hidden = [cfg.hidden_dim] * cfg.num_hidden
    act = cfg.activation
    event_shape = tuple(event_shape)
    if cfg.network == "conv":
        enc = ConvEncoder(event_shape, (2, z_dim), hidden_dim=hidden[0] if hidden else 256)
        dec = ConvDecoder(z_dim, (lik.num_params, *event_shape), hidden_dim=hidden[0] if hidden else 256)
    else:
        enc = MLP(event_shape, hidden, (2, z_dim), activation=act)
        dec = MLP((z_dim,), hidden, (lik.num_params, *event_shape), activation=act)
    return VAEModel(dec, z_dim, event_shape, lik), AmortizedNormalGuide(enc, z_dim)


def _dequantizer(kind: str, event_shape: Sequence[int], num_levels: int):
    """q(u | x): :class:`~lvm_pyro.guides.UniformDequantizer` (Theis et al. 2016) or
    :class:`~lvm_pyro.guides.VariationalDequantizer` (Flow++, Ho et al. 2019; an
    affine-autoregressive flow on a CNN context for images)."""
    from ..guides import UniformDequantizer, VariationalDequantizer

    if kind == "uniform":
        return UniformDequantizer()
    context = "cnn" if len(event_shape) == 3 else "mlp"
    return VariationalDequantizer(event_shape, num_levels, autoregressive="affine",
                                  context=context)


def _dequantized_vae(cfg: VAEConfig, event_shape: Sequence[int]):
    """The VAE of ``cfg`` with a continuous likelihood as the density of a
    :class:`~lvm_pyro.models.DequantizedModel` over the data's ``num_levels`` levels, and
    a :class:`~lvm_pyro.guides.CompositeGuide` of q(u | x) and the encoder q(z | x)."""
    from ..guides import CompositeGuide
    from ..models import DequantizedModel

    model, guide = build_vae(dataclasses.replace(cfg, dequantization="none"), event_shape)
    levels = _num_levels(cfg)
    return (DequantizedModel(model, levels),
            CompositeGuide(_dequantizer(cfg.dequantization, tuple(event_shape), levels), guide))


def _num_levels(cfg: Any) -> int:
    """The data's intensity levels L (resolved from the data set by ``RunConfig``)."""
    if cfg.num_levels is None:
        raise ConfigError("num_levels", "must be given (the data's intensity levels) when the "
                                        "model config is not part of a RunConfig")
    return int(cfg.num_levels)


register_model("vae", build_vae, VAEConfig)


def build_pixelvae(config: PixelVAEConfig | Mapping, event_shape: Sequence[int]):
    """:class:`~lvm_pyro.models.PixelCNNDecoderVAE` (PixelVAE, Gulrajani et al. 2016) with
    an MLP :class:`~lvm_pyro.guides.AmortizedNormalGuide` (``num_hidden`` tanh layers of
    ``hidden_dim``); the decoder has ``decoder_layers`` gated layers of kernel
    ``decoder_kernel``, ``channels`` wide, and the likelihood ``likelihood`` (a
    discretised logistic over ``num_levels`` levels, or Bernoulli).

    Args:
        config: a :class:`~lvm_pyro.training.config.PixelVAEConfig` (or a flat mapping).
        event_shape: (1, H, W) of one example.

    Raises:
        ValueError: an event shape with more than one channel.
    """
    from ..models import PixelCNNDecoderVAE

    cfg = _model_config(config, PixelVAEConfig)
    event_shape = tuple(event_shape)
    lik = (make_likelihood("discretized_logistic", num_levels=cfg.num_levels)
           if cfg.likelihood == "discretized_logistic" else make_likelihood("bernoulli"))
    model = PixelCNNDecoderVAE(cfg.z_dim, event_shape, lik, channels=cfg.channels,
                               num_layers=cfg.decoder_layers, kernel_size=cfg.decoder_kernel)
    enc = MLP(event_shape, [cfg.hidden_dim] * cfg.num_hidden, (2, cfg.z_dim), activation="tanh")
    return model, AmortizedNormalGuide(enc, cfg.z_dim)


def build_flow(config: FlowConfig | Mapping, event_shape: Sequence[int]):
    """:class:`~lvm_pyro.models.FlowModel` (a dequantised multi-scale pixel flow over the
    data's L levels) with the guide q(u | x) of ``dequantization``: uniform or
    :class:`~lvm_pyro.guides.VariationalDequantizer` (Flow++). Its log weights are
    log p(k + u) - log q(u | x) in nats of the discrete data: no bits/dim offset.

    Raises:
        ConfigError: ``num_levels`` unresolved (build through a ``RunConfig``).
        ValueError: H or W not divisible by 2 ** num_scales.
    """
    from ..models import FlowModel

    cfg = _model_config(config, FlowConfig)
    event_shape = tuple(event_shape)
    levels = _num_levels(cfg)
    model = FlowModel(event_shape, levels, num_scales=cfg.num_scales,
                      num_couplings=cfg.num_couplings, hidden_channels=cfg.hidden_channels)
    return model, _dequantizer(cfg.dequantization, event_shape, levels)


register_model("pixelvae", build_pixelvae, PixelVAEConfig)
register_model("flow", build_flow, FlowConfig)

# -- per-model Trainer callbacks and extra test metrics (VQ-VAE registers both) ---------
CALLBACK_BUILDERS: dict[str, Callable[[dict, Any, Any], list]] = {}
METRIC_BUILDERS: dict[str, Callable[[dict, Any, Any, Any], dict]] = {}


def build_callbacks(config: RunConfig | Mapping, model, guide) -> list:
    """Trainer callbacks ``cb(trainer, metrics) -> dict | None`` registered for the run's
    model (a returned dict is merged into that epoch's history)."""
    config = as_run_config(config)
    fn = CALLBACK_BUILDERS.get(config.model_name)
    return [] if fn is None else list(fn(config, model, guide))


def build_metrics(config: RunConfig | Mapping, model, guide, x) -> dict:
    """Extra test metrics registered for the run's model on test data x ({} if none)."""
    config = as_run_config(config)
    fn = METRIC_BUILDERS.get(config.model_name)
    return {} if fn is None else dict(fn(config, model, guide, x))


def build_vqvae(config: VQVAEConfig | Mapping, event_shape: Sequence[int]):
    """VQ-VAE (van den Oord et al. 2017) with the conv encoder / decoder of
    :mod:`lvm_pyro.nn.vq_conv` (``channels`` wide, latent grid H/4 x W/4), a
    :class:`~lvm_pyro.nn.VectorQuantizer` shared by model and guide (``codebook_size``,
    ``embedding_dim``, ``commitment_weight``, ``decay``: 0 learns the codebook by its
    loss, ``dead_code_threshold``) and the likelihood ``likelihood`` (default
    ``discretized_logistic`` with ``num_mixtures`` components over ``num_levels`` levels,
    the data set's by default: 17 for digits, else 256); every default is
    :class:`~lvm_pyro.training.config.VQVAEConfig`'s."""
    from ..guides import VQEncoderGuide
    from ..models import VQVAEModel
    from ..nn import VectorQuantizer, VQConvDecoder, VQConvEncoder

    cfg = _model_config(config, VQVAEConfig)
    c, h, w = tuple(event_shape)
    kwargs = {}
    if cfg.likelihood == "discretized_logistic":
        kwargs = {"num_mixtures": cfg.num_mixtures, "num_levels": cfg.num_levels}
    lik = make_likelihood(cfg.likelihood, **kwargs)
    d, ch = cfg.embedding_dim, cfg.channels
    quantizer = VectorQuantizer(cfg.codebook_size, d, commitment_weight=cfg.commitment_weight,
                                decay=cfg.decay if cfg.decay > 0 else None,
                                dead_code_threshold=cfg.dead_code_threshold)
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


def _vqvae_metrics(config: RunConfig, model, guide, x, batch_size: int = 100) -> dict:
    import math

    import torch

    from ..nn import codebook_usage
    from .run import test_bits_offset

    rec, codes = [], []
    with torch.no_grad():
        for start in range(0, len(x), batch_size):
            out = guide.encode(x[start:start + batch_size])
            rec.append(model.reconstruction_log_prob(x[start:start + batch_size], out.quantized))
            codes.append(out.indices)
    r = nll_report(torch.cat(rec), test_bits_offset(config, x))
    usage = codebook_usage(torch.cat(codes), model.codebook_size)
    return {"test_reconstruction_nll": r.nll, "test_reconstruction_nll_se": r.nll_se,
            "test_reconstruction_bits_per_dim": r.bits_per_dim,
            "codes_prior_nats": model.num_codes * math.log(model.codebook_size),
            "test_perplexity": usage.perplexity, "test_dead_codes": usage.dead_codes,
            "codebook_size": model.codebook_size, "code_grid": list(model.latent_shape)}


register_model("vqvae", build_vqvae, VQVAEConfig)
CALLBACK_BUILDERS["vqvae"] = _vqvae_callbacks
METRIC_BUILDERS["vqvae"] = _vqvae_metrics
def build_vqvae2(config: VQVAE2Config | Mapping, event_shape: Sequence[int]):
    """VQ-VAE-2 (Razavi et al. 2019): :class:`~lvm_pyro.models.VQVAE2Model` and
    :class:`~lvm_pyro.guides.VQVAE2Guide` with :class:`~lvm_pyro.nn.VQVAE2Encoder` /
    :class:`~lvm_pyro.nn.VQVAE2Decoder` (``channels`` wide, residual stacks of
    ``num_res_blocks`` blocks of ``channels // 2``, the image padded by ``pad`` on each
    side), one :class:`~lvm_pyro.nn.VectorQuantizer` per level shared by model and guide,
    uniform code priors (``lvm-pyro fit-prior`` fits both levels' priors), and the
    likelihood ``likelihood`` over the unpadded image; every default is
    :class:`~lvm_pyro.training.config.VQVAE2Config`'s.

    Args:
        config: a :class:`~lvm_pyro.training.config.VQVAE2Config` (or a flat mapping).
        event_shape: (C, H, W) of one example.

    Raises:
        ConfigError: an event shape that is not (C, H, W), or H + 2 pad, W + 2 pad not
            divisible by 2^(bottom_downsample + 1) (names ``pad``).
    """
    from ..guides import VQVAE2Guide
    from ..models import VQVAE2Model
    from ..nn import VectorQuantizer, VQVAE2Decoder, VQVAE2Encoder

    cfg = _model_config(config, VQVAE2Config)
    if len(tuple(event_shape)) != 3:
        raise ConfigError("model", f"vqvae2 needs images (C, H, W), got event shape "
                                   f"{tuple(event_shape)}")
    c, h, w = tuple(event_shape)
    f = 2 ** cfg.bottom_downsample
    hp, wp = h + 2 * cfg.pad, w + 2 * cfg.pad
    if hp % (2 * f) or wp % (2 * f):
        raise ConfigError("pad", f"must make the padded image divisible by {2 * f} (the top "
                                 f"grid is 1/{2 * f} of it): {h}x{w} padded by {cfg.pad} is "
                                 f"{hp}x{wp}; e.g. --pad 2 for 28x28 images")
    kwargs = {}
    if cfg.likelihood == "discretized_logistic":
        kwargs = {"num_mixtures": cfg.num_mixtures, "num_levels": cfg.num_levels}
    lik = make_likelihood(cfg.likelihood, **kwargs)
    d, ch = cfg.embedding_dim, cfg.channels
    nets = {"channels": ch, "res_channels": max(1, ch // 2), "num_res_blocks": cfg.num_res_blocks,
            "bottom_downsample": cfg.bottom_downsample, "pad": cfg.pad}
    quantizers = [VectorQuantizer(k, d, commitment_weight=cfg.commitment_weight,
                                  decay=cfg.decay if cfg.decay > 0 else None,
                                  dead_code_threshold=cfg.dead_code_threshold)
                  for k in (cfg.codebook_size_top, cfg.codebook_size_bottom)]
    enc = VQVAE2Encoder(c, d, **nets)
    dec = VQVAE2Decoder(d, (lik.num_params, c, h, w), **nets)
    bottom = (hp // f, wp // f)
    model = VQVAE2Model(dec, *quantizers, (bottom[0] // 2, bottom[1] // 2), bottom, (c, h, w), lik)
    return model, VQVAE2Guide(enc, *quantizers)


def _vqvae2_callbacks(config: dict, model, guide) -> list:
    levels = (("top", guide.quantizer_top), ("bottom", guide.quantizer_bottom))

    def codebook_usage(trainer, metrics) -> dict:
        out = {}
        for level, quantizer in levels:
            restarts = int(quantizer.epoch_restarts)
            usage = quantizer.usage_summary(reset=True)
            out.update({f"perplexity_{level}": usage.perplexity,
                        f"dead_codes_{level}": usage.dead_codes,
                        f"restarted_codes_{level}": restarts})
        return out

    return [codebook_usage]


def _vqvae2_metrics(config: RunConfig, model, guide, x, batch_size: int = 100) -> dict:
    """Reconstruction NLL and bits/dim of the test data, the uniform code cost of both
    levels (nats per example) and each level's codebook usage on the test codes."""
    import torch

    from ..nn import codebook_usage
    from .run import test_bits_offset

    rec, top, bottom = [], [], []
    with torch.no_grad():
        for start in range(0, len(x), batch_size):
            xb = x[start:start + batch_size]
            out = guide.encode(xb)
            rec.append(model.reconstruction_log_prob(xb, out.top.quantized, out.bottom.quantized))
            top.append(out.top.indices)
            bottom.append(out.bottom.indices)
    r = nll_report(torch.cat(rec), test_bits_offset(config, x))
    metrics = {"test_reconstruction_nll": r.nll, "test_reconstruction_nll_se": r.nll_se,
               "test_reconstruction_bits_per_dim": r.bits_per_dim,
               "code_bits": model.code_bits, "codes_prior_nats": model.code_bits * math.log(2)}
    for level, codes, q, grid in (("top", top, model.quantizer_top, model.top_shape),
                                  ("bottom", bottom, model.quantizer_bottom, model.bottom_shape)):
        usage = codebook_usage(torch.cat(codes), q.codebook_size)
        metrics.update({f"test_perplexity_{level}": usage.perplexity,
                        f"test_dead_codes_{level}": usage.dead_codes,
                        f"codebook_size_{level}": q.codebook_size,
                        f"code_grid_{level}": list(grid)})
    return metrics


register_model("vqvae2", build_vqvae2, VQVAE2Config)
CALLBACK_BUILDERS["vqvae2"] = _vqvae2_callbacks
METRIC_BUILDERS["vqvae2"] = _vqvae2_metrics
__all__ += ["build_vqvae2"]
register_elbo("trace", lambda c: Trace_ELBO(num_particles=c.num_particles,
                                            vectorize_particles=c.num_particles > 1,
                                            max_plate_nesting=1), TraceConfig)
register_elbo("meanfield", lambda c: TraceMeanField_ELBO(
    num_particles=c.num_particles, vectorize_particles=c.num_particles > 1,
    max_plate_nesting=1), MeanFieldConfig)
register_elbo("iwae", lambda c: IWAE_ELBO(num_particles=c.num_particles, gradient=c.gradient),
              IWAEConfig)


# -- sigmoid belief net, score-function objectives, KL weighting (issue 4) ---------------
def build_sbn(config: SBNConfig | Mapping, event_shape: Sequence[int]):
    """Sigmoid belief net (:class:`~lvm_pyro.models.SigmoidBeliefNetModel`) with
    ``num_stochastic_layers`` Bernoulli layers of ``z_dim`` units and a Bernoulli encoder
    guide; every conditional is an MLP with ``num_hidden`` tanh layers of ``hidden_dim``
    (``num_hidden=0``: the classic linear SBN). With ``baselines`` (the default with the
    tracegraph objective) the guide declares NVIL input-dependent baselines (an MLP with
    one hidden layer of 100)."""
    from ..guides import InputBaseline, SigmoidBeliefNetGuide
    from ..models import SigmoidBeliefNetModel

    cfg = _model_config(config, SBNConfig)
    event_shape = tuple(event_shape)
    z_dim, layers = cfg.z_dim, cfg.num_stochastic_layers
    hidden = [cfg.hidden_dim] * cfg.num_hidden
    act = cfg.activation
    dims = [z_dim] * layers
    dec = MLP((z_dim,), hidden, (1, *event_shape), activation=act)
    between = [MLP((z_dim,), hidden, (z_dim,), activation=act) for _ in range(layers - 1)]
    encoders = [MLP(event_shape, hidden, (z_dim,), activation=act)]
    encoders += [MLP((z_dim,), hidden, (z_dim,), activation=act) for _ in range(layers - 1)]
    baselines = None
    if cfg.baselines:
        baselines = [InputBaseline(event_shape, (100,)) for _ in range(layers)]
    return (SigmoidBeliefNetModel(dec, dims, event_shape, between),
            SigmoidBeliefNetGuide(encoders, dims, baselines))


def _build_vimco(c: VIMCOConfig):
    from ..inference import VIMCO

    return VIMCO(num_particles=c.num_particles, max_plate_nesting=1)


def _build_tracegraph(c: TraceGraphConfig):
    from pyro.infer import TraceGraph_ELBO

    # particles unvectorised: guide-declared baselines have the data plate's shape (batch,)
    return TraceGraph_ELBO(num_particles=c.num_particles, vectorize_particles=False,
                           max_plate_nesting=1)


register_model("sbn", build_sbn, SBNConfig)
register_elbo("vimco", _build_vimco, VIMCOConfig)
register_elbo("tracegraph", _build_tracegraph, TraceGraphConfig)

__all__ += ["build_sbn"]


def build_model(config: RunConfig | Mapping, event_shape: Sequence[int]):
    """(model, guide) for the run's model.

    Args:
        config: a :class:`RunConfig` or a flat mapping (``"model"`` names it, default
            ``"vae"``).
        event_shape: (C, H, W) of one example.

    Raises:
        ConfigError: unknown model name (lists the registered ones) or invalid fields.
    """
    config = as_run_config(config)
    return MODEL_BUILDERS[config.model_name](config.model, event_shape)


def build_objective(config: RunConfig | ObjectiveConfig | Mapping, *,
                    num_data: Optional[int] = None) -> ELBO:
    """The run's training objective, built in one place: the registered objective for the
    objective config, then its KL weighting. Free bits lambda > 0 (Kingma et al. 2016,
    eq. 15) replaces a trace / meanfield objective by
    :class:`~lvm_pyro.inference.FreeBits_ELBO`; beta != 1 or a schedule other than the
    constant 1 wraps it in :class:`~lvm_pyro.inference.KLWeighted_ELBO` with the schedule
    of :func:`kl_schedule` (``kl_schedule``: constant beta; linear warm-up over
    ``kl_warmup`` optimiser steps, beta_t = beta * min(1, t / T), Bowman et al. 2015;
    cyclical annealing, Fu et al. 2019). ``capacity_max`` (Burgess et al. 2018, eq. 8)
    replaces a trace / meanfield objective by :class:`~lvm_pyro.inference.Capacity_ELBO`
    with ``CapacitySchedule(capacity_max, capacity_steps)`` and weight
    ``capacity_weight``. The defaults return the plain objective.
    Importance-weighted objectives (IWAE, VIMCO) have no KL term: their configs have no
    such fields. A builder that takes a ``num_data`` keyword (beta-TCVAE) gets the
    training-set size.

    Args:
        config: a run / objective configuration or a flat mapping.
        num_data: N, the training-set size (needed by ``tcvae``; with a ``RunConfig``, the
            cyclical schedule's cycle length is epochs * ceil(N / B) / kl_cycles steps).

    Raises:
        ConfigError: unknown objective name or invalid fields; ``num_data`` missing for an
            objective or schedule that needs it.
    """
    import inspect

    from ..inference import Capacity_ELBO, CapacitySchedule, FreeBits_ELBO, KLWeighted_ELBO

    run = None if isinstance(config, ObjectiveConfig) else as_run_config(config)
    obj = config if run is None else run.objective
    builder = ELBO_BUILDERS[type(obj).name]
    if "num_data" in inspect.signature(builder).parameters:
        if num_data is None:
            raise ConfigError("num_data", f"is needed by the {type(obj).name} objective (the "
                                          "training-set size): pass build_objective(..., "
                                          "num_data=N)")
        elbo = builder(obj, num_data=num_data)
    else:
        elbo = builder(obj)
    free_bits = getattr(obj, "free_bits", 0.0)
    if free_bits > 0:
        elbo = FreeBits_ELBO(free_bits, num_particles=obj.num_particles, max_plate_nesting=1)
    if getattr(obj, "capacity_max", None) is not None:  # validated: beta 1, no schedule
        return Capacity_ELBO(CapacitySchedule(obj.capacity_max, obj.capacity_steps),
                             obj.capacity_weight, num_particles=obj.num_particles,
                             max_plate_nesting=1)
    if hasattr(obj, "kl_schedule") and (obj.beta != 1.0 or obj.kl_schedule != "constant"):
        total = None
        if run is not None and num_data is not None:
            total = run.train.epochs * math.ceil(num_data / run.train.batch_size)
        elbo = KLWeighted_ELBO(elbo, schedule=kl_schedule(obj, total_steps=total))
    return elbo


def kl_schedule(obj: ObjectiveConfig, *, total_steps: Optional[int] = None):
    """The KL weight schedule of a KL-weighted objective config
    (:mod:`lvm_pyro.inference.schedules`): ``constant`` -> ``ConstantSchedule(beta)``,
    ``linear`` -> ``LinearWarmup(beta, kl_warmup)``, ``cyclical`` ->
    ``CyclicalSchedule(beta, period=ceil(total_steps / kl_cycles), kl_ramp_fraction)``.

    Args:
        obj: an objective config with ``beta``, ``kl_schedule``, ``kl_warmup``,
            ``kl_cycles`` and ``kl_ramp_fraction``.
        total_steps: optimiser steps of the whole run (needed by ``cyclical``).

    Raises:
        ConfigError: ``cyclical`` without ``total_steps``.
    """
    from ..inference import ConstantSchedule, CyclicalSchedule, LinearWarmup

    if obj.kl_schedule == "linear":
        return LinearWarmup(obj.beta, obj.kl_warmup)
    if obj.kl_schedule == "cyclical":
        if total_steps is None:
            raise ConfigError("kl_schedule", "cyclical needs the run's number of optimiser "
                                             "steps: build it from a RunConfig with num_data")
        period = max(1, math.ceil(total_steps / obj.kl_cycles))
        return CyclicalSchedule(obj.beta, period, obj.kl_ramp_fraction)
    return ConstantSchedule(obj.beta)


def _build_tcvae(c: TCVAEConfig, *, num_data: int):
    from ..inference import TCVAE_ELBO

    return TCVAE_ELBO(num_data, alpha=c.alpha, beta=c.beta, gamma=c.gamma,
                      estimator=c.tc_estimator, num_particles=c.num_particles,
                      max_plate_nesting=1)


register_elbo("tcvae", _build_tcvae, TCVAEConfig)
__all__ += ["build_pixelvae", "build_flow", "kl_schedule"]


#: the name the notebooks and earlier code use
build_elbo = build_objective
