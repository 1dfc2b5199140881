"""Typed run configurations: the only place a default lives.

A run is described by four frozen dataclasses (the shape of nanoGPT's ``GPTConfig``),
each validated in ``__post_init__`` (:class:`ConfigError`, a ``ValueError`` naming the
field and the allowed range):

* a model configuration, one class per registered model (:class:`VAEConfig`,
  :class:`VQVAEConfig`, :class:`SBNConfig`; users add theirs with
  :func:`lvm_pyro.training.builders.register_model`);
* an objective configuration, one class per registered objective
  (:class:`TraceConfig`, :class:`MeanFieldConfig`, :class:`IWAEConfig`,
  :class:`VIMCOConfig`, :class:`TraceGraphConfig`);
* :class:`DataConfig` (data set, its folder, the training-data transform);
* :class:`TrainConfig` (optimiser, epochs, seed, device).

:class:`RunConfig` bundles them and resolves the defaults that depend on the data set
(:data:`DATA_DEFAULTS`: ``z_dim`` 10 on digits and 50 otherwise, ``epochs`` 60 / 10; the
number of intensity levels from :data:`lvm_pyro.data.datasets.DATASET_LEVELS`) or on the
likelihood (the training-data transform, :func:`default_transform`). It is written to a
run's ``config.json`` as one flat JSON object holding only the fields that apply to the
run's model and objective (:meth:`RunConfig.to_dict`, :meth:`RunConfig.from_dict`).

The command line is generated from the same dataclasses (:func:`add_config_arguments`,
:func:`config_from_namespace`): a field ``z_dim`` is the flag ``--z-dim``, with the field's
type, help and default.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Iterable, Mapping, NamedTuple, Optional

from ..data.datasets import DATASET_LEVELS, DATASETS

__all__ = ["ConfigError", "DATA_DEFAULTS", "FILE_DEFAULTS", "DataDefaults", "TRANSFORMS",
           "ModelConfig", "VAEConfig", "VQVAEConfig", "VQVAE2Config", "SBNConfig", "PixelVAEConfig", "FlowConfig",
           "UserModelConfig", "ObjectiveConfig", "TraceConfig", "MeanFieldConfig", "IWAEConfig",
           "VIMCOConfig", "TraceGraphConfig", "TCVAEConfig", "KL_SCHEDULES", "DEQUANTIZATIONS",
           "DataConfig", "TrainConfig", "RunConfig", "PriorConfig", "ClassifierConfig", "DiagnoseConfig",
           "MODEL_CONFIGS", "OBJECTIVE_CONFIGS",
           "RECORD_KEYS", "default_transform", "add_config_arguments",
           "config_from_namespace", "model_arguments", "option", "given_options"]


class ConfigError(ValueError):
    """A configuration value (or a command's argument, e.g. ``num_samples``) is out of
    range or does not apply.

    Attributes:
        field: the configuration field (``"z_dim"``); the command line names it
            ``--z-dim``.
        problem: what is wrong, without the field's name (``"must be >= 1, got -2"``).
    """

    def __init__(self, field_name: str, problem: str):
        self.field, self.problem = field_name, problem
        super().__init__(f"{field_name} {problem}")


class DataDefaults(NamedTuple):
    """Defaults that depend on the data set: latent size and training epochs."""

    z_dim: int
    epochs: int


#: data-dependent defaults, single-sourced: small bundled digits train longer with fewer
#: latents; the 28x28 sets use the IWAE paper's z_dim 50 and a 10-epoch budget
DATA_DEFAULTS: dict[str, DataDefaults] = {
    "digits": DataDefaults(z_dim=10, epochs=60),
    "fashion-mnist": DataDefaults(z_dim=50, epochs=10),
    "mnist": DataDefaults(z_dim=50, epochs=10),
    "dsprites": DataDefaults(z_dim=10, epochs=20),  # beta-VAE papers use 10 latents
}

#: defaults for a user's data file or folder (``--data PATH``)
FILE_DEFAULTS = DataDefaults(z_dim=10, epochs=20)

#: training-data transforms (per epoch); the test split gets the matching fixed one
TRANSFORMS = ("dynamic", "static", "none", "dequantize")

#: keys of ``config.json`` that record facts about a run rather than configure it
RECORD_KEYS = ("data_source",)


def option(default: Any, help: str, *, choices: Optional[Iterable[Any]] = None,
           cli: bool = True) -> Any:
    """A dataclass field with its command-line help (``choices`` limit the flag's values;
    ``cli=False`` keeps the field off the command line)."""
    return field(default=default, metadata={"help": help, "choices": None if choices is None
                                            else tuple(choices), "cli": cli})


# -- validation helpers (each raises ConfigError naming the field) ---------------------
def _at_least(cfg: Any, name: str, low: float, *, allow_none: bool = False) -> None:
    v = getattr(cfg, name)
    if v is None and allow_none:
        return
    if v is None or isinstance(v, bool) or not isinstance(v, (int, float)) or not v >= low:
        raise ConfigError(name, f"must be >= {low}, got {v!r}")


def _integer(cfg: Any, name: str, low: int, *, allow_none: bool = False) -> None:
    v = getattr(cfg, name)
    if v is None and allow_none:
        return
    if isinstance(v, bool) or not isinstance(v, int):
        raise ConfigError(name, f"must be an integer >= {low}, got {v!r}")
    _at_least(cfg, name, low)


def _positive(cfg: Any, name: str) -> None:
    v = getattr(cfg, name)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not (v > 0 and math.isfinite(v)):
        raise ConfigError(name, f"must be a finite number > 0, got {v!r}")


def _interval(cfg: Any, name: str, low: float, high: float, *, high_open: bool = False) -> None:
    v = getattr(cfg, name)
    ok = isinstance(v, (int, float)) and not isinstance(v, bool) and low <= v and (
        v < high if high_open else v <= high)
    if not ok:
        raise ConfigError(name, f"must be in [{low}, {high}{')' if high_open else ']'}, got {v!r}")


def _choice(cfg: Any, name: str, allowed: Iterable[Any], *, allow_none: bool = False) -> None:
    v = getattr(cfg, name)
    if v is None and allow_none:
        return
    allowed = tuple(allowed)
    if v not in allowed:
        raise ConfigError(name, f"must be one of {', '.join(map(str, allowed))}; got {v!r}")


def _likelihood(cfg: Any, name: str = "likelihood") -> None:
    from ..models.likelihoods import LIKELIHOODS

    _choice(cfg, name, sorted(LIKELIHOODS))


def _is_discrete(likelihood: str) -> bool:
    from ..models.likelihoods import LIKELIHOODS

    return bool(getattr(LIKELIHOODS[likelihood], "discrete", True))


#: dequantisation noise of a dequantised model (site "u"): the guide's q(u | x)
DEQUANTIZATIONS = ("uniform", "variational")

#: KL weight schedules of the KL-weighted objectives (lvm_pyro.inference.schedules)
KL_SCHEDULES = ("constant", "linear", "cyclical")


def _same(a: Any, b: Any) -> bool:
    return a is b or (type(a) in (int, float) and type(b) in (int, float) and a == b) or (
        type(a) is type(b) and a == b)


def _fields(cls: type) -> tuple[dataclasses.Field, ...]:
    return dataclasses.fields(cls)


def _field_names(cls: type) -> list[str]:
    return [f.name for f in _fields(cls)]


def _from_mapping(cls: type, values: Mapping[str, Any]) -> Any:
    """``cls(**values restricted to cls's fields)``."""
    names = set(_field_names(cls))
    return cls(**{k: v for k, v in values.items() if k in names})


# -- models -------------------------------------------------------------------------
@dataclass(frozen=True)
class ModelConfig:
    """Base of model configurations; a subclass names its model in ``name``."""

    name: ClassVar[str] = ""


@dataclass(frozen=True)
class VAEConfig(ModelConfig):
    """The VAE of :func:`lvm_pyro.training.builders.build_vae` (Kingma & Welling 2013):
    an MLP (the IWAE paper's one-stochastic-layer net, 2 x 200 tanh) or a small conv net.

    Raises:
        ConfigError: a field out of range (named with the allowed range).
    """

    name: ClassVar[str] = "vae"
    z_dim: Optional[int] = option(None, "latent size (default: DATA_DEFAULTS, 10 on digits, "
                                        "50 otherwise)")
    hidden_dim: int = option(200, "width of each hidden layer")
    num_hidden: int = option(2, "hidden layers of encoder and decoder")
    network: str = option("mlp", "encoder / decoder networks", choices=("mlp", "conv"))
    activation: str = option("tanh", "hidden activation", choices=("tanh", "relu", "elu", "gelu"))
    likelihood: str = option("bernoulli", "observation model p(x | z)")
    dequantization: str = option(
        "none", "dequantisation noise u as a latent of the model (Flow++, Ho et al. 2019): "
                "uniform q(u) = U[0, 1)^D or a learned q(u | x); needs a continuous likelihood "
                "and raw (not binarised) data", choices=DEQUANTIZATIONS + ("none",))
    num_levels: Optional[int] = option(None, "intensity levels L of the dequantised data "
                                             "(default: the data set's, 17 for digits, 256 "
                                             "otherwise)")

    def __post_init__(self) -> None:
        _integer(self, "z_dim", 1, allow_none=True)
        _integer(self, "hidden_dim", 1)
        _integer(self, "num_hidden", 0)
        _choice(self, "network", ("mlp", "conv"))
        _choice(self, "activation", ("tanh", "relu", "elu", "gelu"))
        _likelihood(self)
        _choice(self, "dequantization", DEQUANTIZATIONS + ("none",))
        _integer(self, "num_levels", 2, allow_none=True)
        if self.dequantization != "none" and _is_discrete(self.likelihood):
            raise ConfigError("dequantization", f"needs a continuous likelihood (e.g. gaussian): "
                                                f"{self.likelihood} is discrete, and a discrete "
                                                "likelihood needs no dequantisation")


@dataclass(frozen=True)
class VQVAEConfig(ModelConfig):
    """The VQ-VAE of :func:`lvm_pyro.training.builders.build_vqvae` (van den Oord et al.
    2017): conv encoder / decoder ``channels`` wide, a codebook of ``codebook_size``
    vectors of ``embedding_dim`` (EMA updates with ``decay``; 0 learns it by the codebook
    loss, eq. 3), commitment weight beta (eq. 3), a discretised logistic likelihood over
    the data's ``num_levels`` intensity levels (Salimans et al. 2017, eq. 2).

    Raises:
        ConfigError: a field out of range.
    """

    name: ClassVar[str] = "vqvae"
    likelihood: str = option("discretized_logistic", "observation model p(x | z_q)")
    num_mixtures: int = option(1, "logistic components per pixel (discretized_logistic)")
    num_levels: Optional[int] = option(None, "intensity levels of the discretised likelihood "
                                             "(default: the data set's, 17 for digits, 256 "
                                             "otherwise)")
    codebook_size: int = option(512, "K, codes in the codebook")
    embedding_dim: int = option(16, "D, size of each code vector")
    commitment_weight: float = option(0.25, "beta, weight of the commitment loss")
    decay: float = option(0.99, "EMA decay of the codebook in [0, 1); 0 learns it by the "
                                "codebook loss")
    dead_code_threshold: float = option(1.0, "restart codes used fewer times per step "
                                             "(moving average); 0: never")
    channels: int = option(64, "conv width of the encoder and decoder")

    def __post_init__(self) -> None:
        _likelihood(self)
        _integer(self, "num_mixtures", 1)
        _integer(self, "num_levels", 2, allow_none=True)
        _integer(self, "codebook_size", 1)
        _integer(self, "embedding_dim", 1)
        _at_least(self, "commitment_weight", 0.0)
        _interval(self, "decay", 0.0, 1.0, high_open=True)
        _at_least(self, "dead_code_threshold", 0.0)
        _integer(self, "channels", 1)


@dataclass(frozen=True)
class VQVAE2Config(ModelConfig):
    """The two-level VQ-VAE of :func:`lvm_pyro.training.builders.build_vqvae2` (VQ-VAE-2,
    Razavi et al. 2019): :class:`lvm_pyro.nn.VQVAE2Encoder` / ``VQVAE2Decoder``
    ``channels`` wide, the image zero-padded by ``pad`` pixels on each side (2: 28x28 read
    as 32x32), a bottom grid of (H + 2 pad) / 2^bottom_downsample and a top grid of half
    that (32x32, ``bottom_downsample`` 1: bottom 16x16, top 8x8); one
    :class:`lvm_pyro.nn.VectorQuantizer` per level (``codebook_size_top``,
    ``codebook_size_bottom``, shared ``embedding_dim``, EMA ``decay``, commitment weight
    beta, dead-code restarts); a discretised logistic likelihood over the data's
    ``num_levels`` levels (Salimans et al. 2017, eq. 2) of the unpadded image.

    Raises:
        ConfigError: a field out of range.
    """

    name: ClassVar[str] = "vqvae2"
    likelihood: str = option("discretized_logistic", "observation model p(x | z_q)")
    num_mixtures: int = option(1, "logistic components per pixel (discretized_logistic)")
    num_levels: Optional[int] = option(None, "intensity levels of the discretised likelihood "
                                             "(default: the data set's, 17 for digits, 256 "
                                             "otherwise)")
    codebook_size_top: int = option(512, "K_t, codes in the top codebook")
    codebook_size_bottom: int = option(512, "K_b, codes in the bottom codebook")
    embedding_dim: int = option(16, "D, size of each code vector")
    commitment_weight: float = option(0.25, "beta, weight of the commitment loss")
    decay: float = option(0.99, "EMA decay of the codebook in [0, 1); 0 learns it by the "
                                "codebook loss")
    dead_code_threshold: float = option(1.0, "restart codes used fewer times per step "
                                             "(moving average); 0: never")
    channels: int = option(64, "conv width of the encoder and decoder")
    num_res_blocks: int = option(2, "residual blocks per stack of the VQ-VAE-2 nets")
    bottom_downsample: int = option(1, "stride-2 layers from the (padded) image to the "
                                       "bottom grid; the top grid is half the bottom")
    pad: int = option(0, "zero pixels added on each side of the image by the encoder (2: "
                         "28x28 read as 32x32, top 8x8, bottom 16x16)")

    def __post_init__(self) -> None:
        _likelihood(self)
        _integer(self, "num_mixtures", 1)
        _integer(self, "num_levels", 2, allow_none=True)
        _integer(self, "codebook_size_top", 1)
        _integer(self, "codebook_size_bottom", 1)
        _integer(self, "embedding_dim", 1)
        _at_least(self, "commitment_weight", 0.0)
        _interval(self, "decay", 0.0, 1.0, high_open=True)
        _at_least(self, "dead_code_threshold", 0.0)
        _integer(self, "channels", 2)
        _integer(self, "num_res_blocks", 1)
        _integer(self, "bottom_downsample", 1)
        _integer(self, "pad", 0)


@dataclass(frozen=True)
class SBNConfig(ModelConfig):
    """The sigmoid belief net of :func:`lvm_pyro.training.builders.build_sbn` (Neal 1992;
    Mnih & Gregor 2014): ``num_stochastic_layers`` layers of ``z_dim`` Bernoulli units,
    conditionals with ``num_hidden`` tanh layers (0: the linear SBN).

    Raises:
        ConfigError: a field out of range.
    """

    name: ClassVar[str] = "sbn"
    z_dim: Optional[int] = option(None, "Bernoulli units per layer (default: DATA_DEFAULTS, "
                                        "10 on digits, 50 otherwise)")
    num_stochastic_layers: int = option(1, "Bernoulli layers")
    hidden_dim: int = option(200, "width of each hidden layer")
    num_hidden: int = option(0, "hidden layers of every conditional (0: linear SBN)")
    activation: str = option("tanh", "hidden activation", choices=("tanh", "relu", "elu", "gelu"))
    baselines: Optional[bool] = option(None, "NVIL input-dependent baselines in the guide "
                                             "(default: on with the tracegraph objective)")

    def __post_init__(self) -> None:
        _integer(self, "z_dim", 1, allow_none=True)
        _integer(self, "num_stochastic_layers", 1)
        _integer(self, "hidden_dim", 1)
        _integer(self, "num_hidden", 0)
        _choice(self, "activation", ("tanh", "relu", "elu", "gelu"))
        _choice(self, "baselines", (True, False), allow_none=True)


@dataclass(frozen=True)
class PixelVAEConfig(ModelConfig):
    """The PixelCNN-decoder VAE of :func:`lvm_pyro.training.builders.build_pixelvae`
    (PixelVAE, Gulrajani et al. 2016): an MLP encoder (``num_hidden`` tanh layers of
    ``hidden_dim``) and a gated PixelCNN decoder of ``decoder_layers`` layers with
    ``decoder_kernel`` x ``decoder_kernel`` kernels, ``channels`` wide, conditioned on z
    (van den Oord et al. 2016, Eq. 4). One or two layers of kernel 3 or 5 is the VLAE-style
    local decoder (Chen et al. 2016); the receptive field reaches
    (decoder_kernel // 2) * decoder_layers pixels up, left and right.

    Raises:
        ConfigError: a field out of range (an even kernel, a likelihood other than
            bernoulli / discretized_logistic).
    """

    name: ClassVar[str] = "pixelvae"
    z_dim: Optional[int] = option(None, "latent size (default: DATA_DEFAULTS, 10 on digits, "
                                        "50 otherwise)")
    hidden_dim: int = option(200, "width of each hidden layer of the MLP encoder")
    num_hidden: int = option(2, "hidden layers of the MLP encoder")
    decoder_layers: int = option(5, "gated PixelCNN layers of the decoder (1-2 with a small "
                                    "kernel: the VLAE local decoder)")
    decoder_kernel: int = option(3, "odd kernel size (>= 3) of the decoder's gated layers")
    channels: int = option(32, "channels of the decoder's gated stacks")
    likelihood: str = option("bernoulli", "pixel model of the PixelCNN decoder: bernoulli "
                                          "(binarised data) or discretized_logistic (raw levels)")
    num_levels: Optional[int] = option(None, "intensity levels of the discretised likelihood "
                                             "(default: the data set's, 17 for digits, 256 "
                                             "otherwise)")

    def __post_init__(self) -> None:
        _integer(self, "z_dim", 1, allow_none=True)
        _integer(self, "hidden_dim", 1)
        _integer(self, "num_hidden", 0)
        _integer(self, "decoder_layers", 1)
        _integer(self, "decoder_kernel", 3)
        if self.decoder_kernel % 2 == 0:
            raise ConfigError("decoder_kernel", f"must be odd, got {self.decoder_kernel}")
        _integer(self, "channels", 1)
        _choice(self, "likelihood", ("bernoulli", "discretized_logistic"))
        _integer(self, "num_levels", 2, allow_none=True)


@dataclass(frozen=True)
class FlowConfig(ModelConfig):
    """The dequantised multi-scale pixel flow of
    :func:`lvm_pyro.training.builders.build_flow` (:class:`lvm_pyro.models.FlowModel`,
    RealNVP-style; Dinh et al. 2017) with uniform (Theis et al. 2016) or variational
    (Flow++, Ho et al. 2019) dequantisation noise q(u | x) as its guide. It models the raw
    intensity levels (no binarisation); its bound is on log P(k) itself.

    Raises:
        ConfigError: a field out of range.
    """

    name: ClassVar[str] = "flow"
    dequantization: str = option("uniform", "dequantisation noise q(u | x): uniform or a "
                                            "learned conditional flow", choices=DEQUANTIZATIONS)
    num_scales: int = option(2, "scales of the multi-scale flow (squeeze + split per scale)")
    num_couplings: int = option(2, "affine coupling layers per scale")
    hidden_channels: int = option(32, "channels of each coupling network")
    num_levels: Optional[int] = option(None, "intensity levels L of the data (default: the "
                                             "data set's, 17 for digits, 256 otherwise)")

    def __post_init__(self) -> None:
        _choice(self, "dequantization", DEQUANTIZATIONS)
        _integer(self, "num_levels", 2, allow_none=True)
        _integer(self, "num_scales", 1)
        _integer(self, "num_couplings", 1)
        _integer(self, "hidden_channels", 1)


@dataclass(frozen=True)
class UserModelConfig(ModelConfig):
    """Configuration of a user's model loaded by path (``lvm-pyro fit --model
    package.module:build``) whose module exports no ``CONFIG`` dataclass of its own: the
    usual sizes plus a free JSON-able dict ``options`` (``--model-arg key=value``, the value
    read as JSON, else kept as a string). The builder receives an instance and reads
    ``config.z_dim``, ``config.hidden_dim``, ``config.likelihood`` and
    ``config.options.get(...)``.

    Raises:
        ConfigError: a field out of range, or ``options`` not a JSON-able dict with
            string keys.
    """

    name: ClassVar[str] = ""
    z_dim: Optional[int] = option(None, "latent size (default: DATA_DEFAULTS, 10 on digits, "
                                        "50 otherwise)")
    hidden_dim: int = option(200, "width of each hidden layer")
    likelihood: str = option("bernoulli", "observation model p(x | z)")
    options: dict = field(default_factory=dict, metadata={
        "help": "free options of a user model (--model-arg key=value)", "cli": False})

    def __post_init__(self) -> None:
        import json

        _integer(self, "z_dim", 1, allow_none=True)
        _integer(self, "hidden_dim", 1)
        _likelihood(self)
        if not isinstance(self.options, dict) or not all(isinstance(k, str) for k in self.options):
            raise ConfigError("options", f"must be a dict with string keys, got {self.options!r}")
        try:
            json.dumps(self.options, allow_nan=False)
        except (TypeError, ValueError) as e:
            raise ConfigError("options", f"must be JSON-able ({e})") from None

    def __hash__(self) -> int:  # frozen, but ``options`` is a dict
        return hash((type(self), self.z_dim, self.hidden_dim, self.likelihood,
                     tuple(sorted(self.options))))


# -- objectives ---------------------------------------------------------------------
@dataclass(frozen=True)
class ObjectiveConfig:
    """Base of objective configurations: ``num_particles`` K >= 1 per datapoint."""

    name: ClassVar[str] = ""
    num_particles: int = option(1, "particles K per datapoint")

    def __post_init__(self) -> None:
        _integer(self, "num_particles", 1)


@dataclass(frozen=True)
class _KLWeightedConfig(ObjectiveConfig):
    """beta (Higgins et al. 2017) and a linear KL warm-up over ``kl_warmup`` optimiser
    steps (Bowman et al. 2015): beta_t = beta * min(1, t / kl_warmup)."""

    beta: float = option(1.0, "weight of the KL term (beta-VAE; 1: the plain ELBO)")
    kl_warmup: int = option(0, "KL warm-up length in OPTIMISER STEPS (0: none)")
    kl_schedule: Optional[str] = option(
        None, "KL weight schedule: constant beta, linear warm-up over --kl-warmup steps "
              "(Bowman et al. 2015), or cyclical annealing over --kl-cycles cycles of the whole "
              "run (Fu et al. 2019) (default: linear with --kl-warmup > 0, else constant)",
        choices=KL_SCHEDULES)
    kl_cycles: int = option(4, "cycles M of the cyclical schedule over the run's optimiser steps")
    kl_ramp_fraction: float = option(0.5, "part R in (0, 1] of each cycle spent increasing the "
                                          "weight (cyclical schedule)")

    def __post_init__(self) -> None:
        super().__post_init__()
        _at_least(self, "beta", 0.0)
        if not math.isfinite(self.beta):
            raise ConfigError("beta", f"must be finite, got {self.beta!r}")
        _integer(self, "kl_warmup", 0)
        _choice(self, "kl_schedule", KL_SCHEDULES, allow_none=True)
        _integer(self, "kl_cycles", 1)
        _interval(self, "kl_ramp_fraction", 0.0, 1.0)
        if self.kl_ramp_fraction == 0:
            raise ConfigError("kl_ramp_fraction", "must be in (0, 1], got 0")
        if self.kl_schedule is None:
            object.__setattr__(self, "kl_schedule", "linear" if self.kl_warmup > 0 else "constant")
        if self.kl_schedule == "linear" and self.kl_warmup == 0:
            raise ConfigError("kl_schedule", "linear needs --kl-warmup T > 0 optimiser steps")
        if self.kl_schedule != "linear" and self.kl_warmup > 0:
            raise ConfigError("kl_warmup", f"applies to the linear schedule only, not "
                                           f"{self.kl_schedule}")


@dataclass(frozen=True)
class TraceConfig(_KLWeightedConfig):
    """Pyro's ``Trace_ELBO`` (Kingma & Welling 2013, eq. 3) with beta, warm-up and free
    bits lambda (Kingma et al. 2016, eq. 15: the KL term sum_j max(lambda, E_batch KL_j)),
    or the controlled capacity of Burgess et al. 2018 (eq. 8: the KL term
    gamma |E_batch KL - C_t|, C_t = capacity_max * min(1, t / capacity_steps)).

    Raises:
        ConfigError: a field out of range; ``capacity_steps`` without ``capacity_max``;
            ``capacity_max`` with beta != 1, a KL schedule or free bits.
    """

    name: ClassVar[str] = "trace"
    free_bits: float = option(0.0, "free bits lambda, nats per latent dimension (0: off)")
    capacity_max: Optional[float] = option(
        None, "controlled capacity (Burgess et al. 2018, eq. 8): train on E log p(x|z) - "
              "gamma |KL - C_t| with the KL target C_t rising linearly from 0 to this many "
              "nats per datapoint (default: off)")
    capacity_steps: int = option(0, "OPTIMISER STEPS over which the capacity C_t rises to "
                                    "--capacity-max (0: C_max from the start)")
    capacity_weight: float = option(1000.0, "gamma of the capacity objective (Burgess et al. "
                                            "use 1000 on dSprites)")

    def __post_init__(self) -> None:
        super().__post_init__()
        _at_least(self, "free_bits", 0.0)
        if not math.isfinite(self.free_bits):
            raise ConfigError("free_bits", f"must be finite, got {self.free_bits!r}")
        _at_least(self, "capacity_max", 0.0, allow_none=True)
        if self.capacity_max is not None and not math.isfinite(self.capacity_max):
            raise ConfigError("capacity_max", f"must be finite, got {self.capacity_max!r}")
        _integer(self, "capacity_steps", 0)
        _positive(self, "capacity_weight")
        if self.capacity_max is None:
            if self.capacity_steps != 0:
                raise ConfigError("capacity_steps", "applies only with --capacity-max C_max")
            return
        if self.beta != 1.0 or self.kl_schedule != "constant" or self.free_bits > 0:
            raise ConfigError("capacity_max", "replaces the KL weighting: it does not combine "
                                              "with --beta != 1, a KL schedule or --free-bits "
                                              "(its weight is --capacity-weight)")


@dataclass(frozen=True)
class MeanFieldConfig(TraceConfig):
    """Pyro's ``TraceMeanField_ELBO`` (analytic KL where torch registers it)."""

    name: ClassVar[str] = "meanfield"


@dataclass(frozen=True)
class IWAEConfig(ObjectiveConfig):
    """:class:`~lvm_pyro.inference.IWAE_ELBO` (Burda et al. 2015, eq. 8) with its gradient
    estimator: ``standard``, ``dreg`` (Tucker et al. 2018) or ``stl`` (Roeder et al.
    2017; biased for K > 1)."""

    name: ClassVar[str] = "iwae"
    gradient: str = option("standard", "gradient estimator", choices=("standard", "dreg", "stl"))

    def __post_init__(self) -> None:
        super().__post_init__()
        _choice(self, "gradient", ("standard", "dreg", "stl"))


@dataclass(frozen=True)
class VIMCOConfig(ObjectiveConfig):
    """:class:`~lvm_pyro.inference.VIMCO` (Mnih & Rezende 2016): the IWAE bound with
    leave-one-out baselines, which need K >= 2 particles."""

    name: ClassVar[str] = "vimco"
    num_particles: int = option(5, "particles K per datapoint (>= 2)")

    def __post_init__(self) -> None:
        _integer(self, "num_particles", 2)


@dataclass(frozen=True)
class TraceGraphConfig(_KLWeightedConfig):
    """Pyro's ``TraceGraph_ELBO`` (score-function gradients with the guide's baselines;
    Mnih & Gregor 2014), with beta and warm-up."""

    name: ClassVar[str] = "tracegraph"


@dataclass(frozen=True)
class TCVAEConfig(ObjectiveConfig):
    """:class:`~lvm_pyro.inference.TCVAE_ELBO` (beta-TCVAE, Chen et al. 2018, Eq. 4):
    index-code MI, total correlation and dimension-wise KL weighted by alpha, beta and
    gamma, log q(z) estimated by minibatch stratified (``mss``) or weighted (``mws``)
    sampling; the training-set size N comes from the data.

    Raises:
        ConfigError: a negative or non-finite weight, an unknown estimator.
    """

    name: ClassVar[str] = "tcvae"
    alpha: float = option(1.0, "weight of the index-code mutual information")
    beta: float = option(6.0, "weight of the total correlation")
    gamma: float = option(1.0, "weight of the dimension-wise KL")
    tc_estimator: str = option("mss", "minibatch estimator of log q(z): stratified (mss) or "
                                      "weighted (mws) sampling", choices=("mss", "mws"))

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("alpha", "beta", "gamma"):
            _at_least(self, name, 0.0)
            if not math.isfinite(getattr(self, name)):
                raise ConfigError(name, f"must be finite, got {getattr(self, name)!r}")
        _choice(self, "tc_estimator", ("mss", "mws"))


# -- data and training --------------------------------------------------------------
def default_transform(likelihood: Optional[str]) -> str:
    """The training-data transform that matches a likelihood: ``"dynamic"`` binarisation
    for Bernoulli (IWAE paper, sec. 5), ``"dequantize"`` for a continuous density (Theis
    et al. 2016, so that the NLL bounds the discrete one), ``"none"`` for another discrete
    likelihood (e.g. the discretised logistic over the raw levels)."""
    if likelihood in (None, "bernoulli"):
        return "dynamic"
    from ..models.likelihoods import LIKELIHOODS

    cls = LIKELIHOODS.get(likelihood)
    return "none" if cls is None or getattr(cls, "discrete", True) else "dequantize"


@dataclass(frozen=True)
class DataConfig:
    """Data set, where its files are, and the per-epoch training-data transform.

    Raises:
        ConfigError: unknown data set or transform; ``data_root`` with the bundled digits.
    """

    data: str = option("digits", "data set (" + ", ".join(DATASETS) + "; digits is bundled "
                                 "with scikit-learn) or PATH: a .npy / .npz / .pt array (N, ...) "
                                 "or a folder of images (recorded as an absolute path)")
    data_root: Optional[str] = option(None, "folder holding FashionMNIST/raw/ or MNIST/raw/ "
                                            "(recorded as an absolute path)")
    binarization: Optional[str] = option(
        None, "training-data transform per epoch: dynamic / static Bernoulli draws (binary "
              "likelihoods), none, or uniform dequantisation (continuous likelihoods); default "
              "from the likelihood: bernoulli dynamic, continuous dequantize, other none",
        choices=TRANSFORMS)
    split_seed: int = option(0, "seed of the train / test split of a --data PATH")
    test_fraction: float = option(0.2, "test share of a --data PATH, in (0, 1)")

    @property
    def is_file(self) -> bool:
        """Whether ``data`` is a user's file or folder rather than a named data set."""
        return self.data not in DATASETS

    def __post_init__(self) -> None:
        if not isinstance(self.data, str) or not self.data:
            raise ConfigError("data", f"must be a data set name or a path, got {self.data!r}")
        if self.data not in DATASETS:
            path = Path(self.data).expanduser()
            if not path.exists():
                raise ConfigError("data", f"is neither a data set ({', '.join(DATASETS)}) nor "
                                          f"an existing file or folder: {self.data!r}")
            object.__setattr__(self, "data", str(path.resolve()))
        _choice(self, "binarization", TRANSFORMS, allow_none=True)
        _integer(self, "split_seed", 0)
        _interval(self, "test_fraction", 0.0, 1.0, high_open=True)
        if self.test_fraction == 0.0:
            raise ConfigError("test_fraction", "must be in (0, 1), got 0.0")
        if self.data_root is not None:
            if self.data == "digits" or self.is_file:
                raise ConfigError("data_root", "does not apply to the bundled digits or a data "
                                               "path (it is for fashion-mnist and mnist)")
            object.__setattr__(self, "data_root", str(Path(self.data_root).expanduser().resolve()))


@dataclass(frozen=True)
class TrainConfig:
    """Adam on minibatches (Kingma & Ba 2015), epochs, seed and device.

    Raises:
        ConfigError: a field out of range.
    """

    batch_size: int = option(100, "minibatch size B")
    lr: float = option(1e-3, "Adam learning rate")
    epochs: Optional[int] = option(None, "epochs (default: DATA_DEFAULTS, 60 on digits, 10 "
                                         "otherwise)")
    seed: int = option(0, "seed of parameters, shuffling and binarisation")
    device: str = option("cpu", "torch device: cpu or cuda")
    aggressive_encoder: bool = option(False, "aggressive inference-network training (He et "
                                             "al. 2019): encoder-only steps until the loss "
                                             "stops improving, then one decoder step, until "
                                             "I_q(x; z) on held-out points stops rising")
    aggressive_max_inner_steps: int = option(100, "cap on the encoder-only steps per training "
                                                  "step of aggressive training")
    aggressive_heldout: int = option(500, "held-out points (the first test points) for the "
                                          "I_q(x; z) rule of aggressive training")
    compile: bool = option(False, "compile the networks with torch.compile (the first steps "
                                  "pay the compilation, tens of seconds on a CPU; results "
                                  "deterministic per seed, last bits differ from eager; a "
                                  "resume in a new process agrees to rounding only)")

    def __post_init__(self) -> None:
        _integer(self, "batch_size", 1)
        _choice(self, "aggressive_encoder", (True, False))
        _choice(self, "compile", (True, False))
        _integer(self, "aggressive_max_inner_steps", 1)
        _integer(self, "aggressive_heldout", 2)
        _positive(self, "lr")
        _integer(self, "epochs", 0, allow_none=True)
        _integer(self, "seed", 0)
        if not isinstance(self.device, str) or self.device.split(":")[0] not in ("cpu", "cuda"):
            raise ConfigError("device", f"must be cpu or cuda (optionally cuda:N), got {self.device!r}")


@dataclass(frozen=True)
class PriorConfig:
    """The Gated PixelCNN prior over a VQ-VAE's codes (van den Oord et al. 2016) and its
    Adam fit (``lvm-pyro fit-prior``): a small prior that trains in minutes on 2 cores.

    Raises:
        ConfigError: a field out of range.
    """

    channels: int = option(64, "channels of the PixelCNN stacks")
    num_layers: int = option(6, "gated layers")
    kernel_size: int = option(3, "odd kernel size of the gated layers")
    epochs: int = option(10, "epochs of the prior fit")
    batch_size: int = option(128, "minibatch size")
    lr: float = option(1e-3, "Adam learning rate")
    seed: int = option(0, "seed of the prior's parameters, shuffling and samples")

    def __post_init__(self) -> None:
        _integer(self, "channels", 1)
        _integer(self, "num_layers", 1)
        _integer(self, "kernel_size", 1)
        if self.kernel_size % 2 == 0:
            raise ConfigError("kernel_size", f"must be odd, got {self.kernel_size}")
        _integer(self, "epochs", 0)
        _integer(self, "batch_size", 1)
        _positive(self, "lr")
        _integer(self, "seed", 0)


@dataclass(frozen=True)
class ClassifierConfig:
    """The two small CNN classifiers of a run's real training images
    (``lvm-pyro fit-classifier``, :mod:`lvm_pyro.training.classifiers`): the rejection
    classifier (architecture ``"a"`` of :class:`lvm_pyro.nn.SmallCNNClassifier`, seed
    ``seed``) and the independent evaluation classifier (architecture ``"b"``, seed
    ``seed + 1``: other weights and another data order); Adam on the cross-entropy.

    Raises:
        ConfigError: a field out of range.
    """

    epochs: int = option(3, "epochs over the training images")
    batch_size: int = option(128, "minibatch size")
    lr: float = option(1e-3, "Adam learning rate")
    seed: int = option(0, "seed of the rejection classifier (the evaluation one uses seed + 1)")

    def __post_init__(self) -> None:
        _integer(self, "epochs", 1)
        _integer(self, "batch_size", 1)
        _positive(self, "lr")
        _integer(self, "seed", 0)


@dataclass(frozen=True)
class DiagnoseConfig:
    """Settings of the posterior diagnostics of a run (``lvm-pyro diagnose``,
    :func:`lvm_pyro.training.diagnose.diagnose_run`).

    Raises:
        ConfigError: a field out of range.
    """

    num_test: int = option(1000, "test points for k-hat / ESS / log p(x) and the KL per dimension")
    num_samples: int = option(1000, "guide draws per test point (>= 25: the Pareto fit needs "
                                    "5 tail draws)")
    num_mi_points: int = option(2000, "test points M of the aggregate posterior (MI <= log M)")
    num_au_points: Optional[int] = option(None, "test points for active units (default: all)")
    nuts_points: int = option(4, "test points with a NUTS reference (0: skip)")
    nuts_chains: int = option(4, "NUTS chains per point (run one after another)")
    nuts_warmup: int = option(300, "NUTS warm-up steps per chain")
    nuts_samples: int = option(300, "NUTS draws kept per chain")
    sbc_simulations: int = option(1000, "simulations of simulation-based calibration (0: skip)")
    sbc_draws: int = option(99, "guide draws per SBC simulation (draws + 1 divisible by 10)")
    seed: int = option(0, "seeds Pyro's RNGs once at the start")

    def __post_init__(self) -> None:
        _integer(self, "num_test", 1)
        _integer(self, "num_samples", 25)
        _integer(self, "num_mi_points", 2)
        _integer(self, "num_au_points", 2, allow_none=True)
        for name in ("nuts_points", "sbc_simulations", "nuts_warmup", "seed"):
            _integer(self, name, 0)
        _integer(self, "nuts_chains", 1)
        _integer(self, "nuts_samples", 4)
        _integer(self, "sbc_draws", 1)


#: registered configuration classes (filled by lvm_pyro.training.builders.register_model
#: / register_elbo)
MODEL_CONFIGS: dict[str, type] = {}
OBJECTIVE_CONFIGS: dict[str, type] = {}


def _model_cls(name: str) -> type:
    if name not in MODEL_CONFIGS and isinstance(name, str):
        # a builder path "package.module:build" or an installed entry point registers
        # itself on first use (lvm_pyro.training.builders.resolve_model)
        from .builders import resolve_model

        resolve_model(name)
    if name not in MODEL_CONFIGS:
        raise ConfigError("model", f"must be a registered model ({', '.join(sorted(MODEL_CONFIGS))}); "
                                   f"got {name!r}")
    return MODEL_CONFIGS[name]


def _objective_cls(name: str) -> type:
    if name not in OBJECTIVE_CONFIGS:
        raise ConfigError("elbo", f"must be a registered objective "
                                  f"({', '.join(sorted(OBJECTIVE_CONFIGS))}); got {name!r}")
    return OBJECTIVE_CONFIGS[name]


#: Registered models without a Gaussian latent "z", for which aggressive inference-network
#: training (He et al. 2019, Algorithm 1: encoder-only steps judged by I_q(x; z)) is undefined.
NO_GAUSSIAN_Z_MODELS = ("flow", "sbn", "vqvae", "vqvae2")


@dataclass(frozen=True)
class RunConfig:
    """A whole run: model, objective, data and training configurations, with every
    data- or likelihood-dependent default resolved on construction (``z_dim`` and
    ``epochs`` from :data:`DATA_DEFAULTS`, ``num_levels`` from the data set, the transform
    from :func:`default_transform`, SBN ``baselines`` on with ``tracegraph``).

    Raises:
        ConfigError: an invalid combination (e.g. a transform that does not suit the
            likelihood is allowed, but the model / objective must be registered).
    """

    model: Any = field(default_factory=VAEConfig)
    objective: Any = field(default_factory=TraceConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        defaults = DATA_DEFAULTS.get(self.data.data, FILE_DEFAULTS)
        model_fields = set(_field_names(type(self.model)))
        repl: dict[str, Any] = {}
        if "z_dim" in model_fields and self.model.z_dim is None:
            repl["z_dim"] = defaults.z_dim
        if "num_levels" in model_fields and self.model.num_levels is None:
            repl["num_levels"] = DATASET_LEVELS.get(self.data.data, 256)
        if "baselines" in model_fields and self.model.baselines is None:
            repl["baselines"] = self.objective.name == "tracegraph"
        if repl:
            object.__setattr__(self, "model", dataclasses.replace(self.model, **repl))
        if self.train.epochs is None:
            object.__setattr__(self, "train", dataclasses.replace(self.train, epochs=defaults.epochs))
        dequantized = getattr(self.model, "dequantization", "none") != "none"
        if self.data.binarization is None and dequantized:  # the model adds the noise u
            object.__setattr__(self, "data", dataclasses.replace(self.data, binarization="none"))
        elif dequantized and self.data.binarization != "none":
            raise ConfigError("binarization", f"must be none with --dequantization "
                                              f"{self.model.dequantization}: the model adds "
                                              "the noise u to the raw levels itself")
        if self.train.aggressive_encoder and self.model_name in NO_GAUSSIAN_Z_MODELS:
            raise ConfigError("aggressive_encoder", f"needs a model with a Gaussian latent "
                                                    f"'z' (vae, pixelvae, a user model); "
                                                    f"{self.model_name} has none: drop "
                                                    "--aggressive-encoder")
        if self.data.binarization is None:
            likelihood = getattr(self.model, "likelihood", None)
            transform = default_transform(likelihood)
            if self.data.is_file and transform == "dequantize":
                transform = "none"  # real-valued user data: no pixel levels to dequantise
            object.__setattr__(self, "data", dataclasses.replace(self.data, binarization=transform))

    @property
    def model_name(self) -> str:
        return type(self.model).name

    @property
    def objective_name(self) -> str:
        return type(self.objective).name

    def groups(self) -> tuple[Any, Any, DataConfig, TrainConfig]:
        return (self.model, self.objective, self.data, self.train)

    def to_dict(self) -> dict[str, Any]:
        """One flat JSON-able dict: ``model``, the model's fields, ``elbo``, the
        objective's fields, then data and training fields. Only fields that apply to the
        run; ``data_root`` only when set, ``split_seed`` / ``test_fraction`` only for a
        data path."""
        out: dict[str, Any] = {"model": self.model_name, "elbo": self.objective_name}
        for group in self.groups():
            for f in _fields(type(group)):
                v = getattr(group, f.name)
                if f.name == "data_root" and v is None:
                    continue
                if f.name in ("split_seed", "test_fraction") and not self.data.is_file:
                    continue  # the split of a --data PATH only
                out[f.name] = v
        return out

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], *, strict: bool = True) -> "RunConfig":
        """Inverse of :meth:`to_dict`; missing fields take their defaults.

        Args:
            values: flat dict (``"model"`` and ``"elbo"`` name the registered classes,
                default ``"vae"`` and ``"trace"``).
            strict: reject keys that apply to neither this model, this objective, the
                data nor the training (``False`` ignores them, e.g. to read a
                ``config.json`` written by an older version that held every key).

        Raises:
            ConfigError: unknown model / objective; a key that is a field of no
                registered configuration (named with a close match and this run's fields,
                strict or not); a key that does not apply (strict), or an invalid value.
        """
        values = {k: v for k, v in values.items() if k not in RECORD_KEYS}
        model_cls = _model_cls(values.pop("model", "vae"))
        obj_cls = _objective_cls(values.pop("elbo", "trace"))
        groups = (model_cls, obj_cls, DataConfig, TrainConfig)
        known = set().union(*(_field_names(g) for g in groups))
        others: dict[str, list[Any]] = {}  # fields of the other registered classes
        for g in (*MODEL_CONFIGS.values(), *OBJECTIVE_CONFIGS.values()):
            for f in _fields(g):
                others.setdefault(f.name, []).append(f.default)
        data_defaults = DATA_DEFAULTS.get(values.get("data", "digits"), FILE_DEFAULTS)
        for g in (*MODEL_CONFIGS.values(), *OBJECTIVE_CONFIGS.values()):
            for f in _fields(g):
                if f.default is None and f.name in data_defaults._fields:  # resolved per data set
                    others[f.name].append(getattr(data_defaults, f.name))
        vocabulary = known | set(others) | {"model", "elbo", *RECORD_KEYS}
        for k, v in values.items():
            if k in known:
                continue
            if k not in vocabulary:  # a typo or a field of no configuration: never ignored
                raise ConfigError(k, _unknown_field(k, vocabulary, groups))
            # non-strict: a key of another model / objective is ignored only at one of its
            # defaults (an old config.json held every key); any other value would be
            # silently dropped, so it is an error either way
            if strict or (k in others and not any(_same(v, d) for d in others[k])):
                raise ConfigError(k, f"does not apply to model {model_cls.name!r} with "
                                     f"objective {obj_cls.name!r}")
        return cls(*(_from_mapping(g, values) for g in groups))

    def replace(self, **values: Any) -> "RunConfig":
        """A copy with flat fields replaced (``RunConfig.from_dict({**self.to_dict(), ...})``)."""
        return RunConfig.from_dict({**self.to_dict(), **values})


def _unknown_field(key: str, vocabulary: Iterable[str],
                   groups: tuple[type, type, type, type]) -> str:
    """The problem text for a configuration key that names no field: the closest field
    names (difflib; this run's fields first, then any registered configuration's) and the
    fields of the run's model, objective, data and training."""
    import difflib

    model, objective, data, train = (_field_names(g) for g in groups)
    close = (difflib.get_close_matches(key, model + objective + data + train, n=2, cutoff=0.7)
             or difflib.get_close_matches(key, sorted(vocabulary), n=2, cutoff=0.7))
    hint = f" (did you mean {' or '.join(map(repr, close))}?)" if close else ""
    m, o = (getattr(g, "name", "") for g in groups[:2])
    return (f"is not a configuration field{hint}; the fields are: model {m!r}: "
            f"{', '.join(model)}; objective {o!r}: {', '.join(objective)}; data: "
            f"{', '.join(data)}; training: {', '.join(train)}")


# -- command line generated from the dataclasses ------------------------------------
def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _base_type(cls: type, f: dataclasses.Field) -> Any:
    hint = typing.get_type_hints(cls)[f.name]
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    return args[0] if args else hint


def add_config_arguments(parser: argparse.ArgumentParser, classes: Iterable[type],
                         *, title: Optional[str] = None) -> None:
    """Add one flag per field of ``classes`` (``z_dim`` -> ``--z-dim``; a field shared by
    several classes is one flag whose help lists each class's default). Flags default
    to "not given" (``argparse.SUPPRESS``), so :func:`config_from_namespace` can tell a
    value the user typed from the dataclass default and reject flags that do not apply."""
    classes = list(classes)
    seen: dict[str, list[tuple[type, dataclasses.Field]]] = {}
    for cls in classes:
        for f in _fields(cls):
            if f.metadata.get("cli", True) and f.init:
                seen.setdefault(f.name, []).append((cls, f))
    group = parser.add_argument_group(title) if title else parser
    for name, owners in seen.items():
        cls, f = owners[0]
        typ = _base_type(cls, f)
        defaults = [(getattr(c, "name", "") or c.__name__, fld.default) for c, fld in owners]
        if len({repr(d) for _, d in defaults}) == 1:
            dtext = "" if defaults[0][1] is None else f" (default: {defaults[0][1]})"
        else:
            dtext = " (default: " + ", ".join(f"{d} for {n}" for n, d in defaults
                                              if d is not None) + ")"
        if 1 < len(classes) and len(owners) < len(classes):
            dtext += " [" + ", ".join(n for n, _ in defaults) + "]"
        kwargs: dict[str, Any] = {"default": argparse.SUPPRESS, "dest": name,
                                  "help": f.metadata.get("help", "") + dtext}
        if typ is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            kwargs["type"] = typ
            if f.metadata.get("choices"):
                kwargs["choices"] = f.metadata["choices"]
        group.add_argument(_flag(name), **kwargs)


def given_options(ns: argparse.Namespace, classes: Iterable[type]) -> dict[str, Any]:
    """The fields of ``classes`` the user gave on the command line (flags left out of
    ``ns`` took no value)."""
    names = set().union(*(_field_names(c) for c in classes))
    return {k: v for k, v in vars(ns).items() if k in names}


def config_from_namespace(ns: argparse.Namespace) -> RunConfig:
    """The :class:`RunConfig` of ``lvm-pyro fit``'s parsed flags (``ns.model``,
    ``ns.elbo`` and any config flag given).

    Raises:
        ConfigError: a flag that does not apply to the chosen model / objective, or an
            invalid value.
    """
    model_cls = _model_cls(getattr(ns, "model", "vae"))  # a user model registers itself here
    classes = [*MODEL_CONFIGS.values(), *OBJECTIVE_CONFIGS.values(), DataConfig, TrainConfig]
    values = given_options(ns, classes)
    values["model"] = getattr(ns, "model", "vae")
    values["elbo"] = getattr(ns, "elbo", "trace")
    values.update(model_arguments(getattr(ns, "model_arg", None) or [], model_cls))
    return RunConfig.from_dict(values, strict=True)


def model_arguments(pairs: Iterable[str], model_cls: type) -> dict[str, Any]:
    """Flat config values from ``--model-arg key=value`` pairs: each value is read as JSON
    (``3``, ``0.5``, ``true``, ``[1, 2]``, ``"text"``), else kept as a string. A key that is
    a field of ``model_cls`` sets that field; any other key goes into the ``options`` dict
    of a :class:`UserModelConfig`.

    Raises:
        ConfigError: a pair without ``=``, or a key that is not a field of a model
            configuration without ``options``.
    """
    import json

    names = set(_field_names(model_cls))
    out: dict[str, Any] = {}
    options: dict[str, Any] = {}
    for pair in pairs:
        key, eq, text = pair.partition("=")
        if not eq or not key:
            raise ConfigError("model_arg", f"must be KEY=VALUE, got {pair!r}")
        try:
            value = json.loads(text)
        except ValueError:
            value = text
        if key in names and key != "options":
            out[key] = value
        elif "options" in names:
            options[key] = value
        else:
            raise ConfigError("model_arg", f"{key!r} is not a field of {model_cls.__name__} "
                                           f"({', '.join(sorted(names))})")
    if options:
        out["options"] = options
    return out
