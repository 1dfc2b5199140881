"""Typed run configurations: the only home of defaults, validated on construction, the CLI
generated from them, ``config.json`` holding only the fields of the run's model; and the
one bits/dim rule, so that every report of one bound agrees."""

import dataclasses
import json
import math
import sys

import pytest
import torch

from lvm_pyro.cli import build_parser, main
from lvm_pyro.inference import bits_per_dim_offset, nll_report
from lvm_pyro.training import builders
from lvm_pyro.training.config import (DATA_DEFAULTS, MODEL_CONFIGS, OBJECTIVE_CONFIGS,
                                      ConfigError, DataConfig, ModelConfig, RunConfig,
                                      TrainConfig, VAEConfig, VQVAEConfig,
                                      config_from_namespace)

TINY = ["--epochs", "1", "--num-samples", "2", "--num-test", "20", "--no-progress"]
TINY_VAE = ["--z-dim", "2", "--hidden-dim", "8", "--num-hidden", "1"]


def parse(*argv) -> RunConfig:
    return config_from_namespace(build_parser().parse_args(["fit", *argv]))


# -- one source of defaults ----------------------------------------------------------
def test_cli_defaults_are_the_dataclass_defaults():
    assert parse() == RunConfig()
    for name, cls in MODEL_CONFIGS.items():
        for obj, ocls in OBJECTIVE_CONFIGS.items():
            cfg = parse("--model", name, "--elbo", obj)
            assert type(cfg.model) is cls and type(cfg.objective) is ocls
            assert cfg == RunConfig(cls(), ocls())


def test_data_dependent_defaults_come_from_one_table():
    for data, d in DATA_DEFAULTS.items():
        cfg = RunConfig(data=DataConfig(data=data))
        assert (cfg.model.z_dim, cfg.train.epochs) == (d.z_dim, d.epochs)
    assert (DATA_DEFAULTS["digits"].z_dim, DATA_DEFAULTS["digits"].epochs) == (10, 60)
    assert (DATA_DEFAULTS["fashion-mnist"].z_dim, DATA_DEFAULTS["fashion-mnist"].epochs) == (50, 10)
    # explicit values win over the table
    assert parse("--data", "fashion-mnist", "--z-dim", "3", "--epochs", "2").model.z_dim == 3


def test_vqvae_defaults_to_the_discretised_logistic_over_the_data_levels():
    cfg = parse("--model", "vqvae")
    assert cfg.model.likelihood == "discretized_logistic"
    assert cfg.data.binarization == "none"  # raw levels, not Bernoulli draws
    assert cfg.model.num_levels == 17
    assert parse("--model", "vqvae", "--data", "mnist").model.num_levels == 256
    model, _ = builders.build_model(cfg, (1, 8, 8))
    assert type(model.likelihood).__name__ == "DiscretizedLogisticLikelihood"
    assert model.likelihood.num_levels == 17
    # and the builder, given a plain dict, agrees with the CLI
    assert builders.build_vqvae({}, (1, 8, 8))[0].likelihood.num_levels == 17
    # a continuous likelihood defaults to dequantised data (a bound on the discrete NLL)
    assert parse("--likelihood", "gaussian").data.binarization == "dequantize"


@pytest.mark.parametrize("argv,flag", [
    (["--z-dim", "-2"], "--z-dim"), (["--free-bits", "-1"], "--free-bits"),
    (["--beta", "-0.5"], "--beta"), (["--kl-warmup", "-1"], "--kl-warmup"),
    (["--lr", "0"], "--lr"), (["--batch-size", "0"], "--batch-size"),
    (["--num-particles", "0"], "--num-particles"), (["--hidden-dim", "0"], "--hidden-dim"),
    (["--model", "vqvae", "--decay", "1.0"], "--decay"),
    (["--model", "vqvae", "--codebook-size", "0"], "--codebook-size"),
    (["--model", "sbn", "--num-stochastic-layers", "0"], "--num-stochastic-layers"),
    (["--elbo", "vimco", "--num-particles", "1"], "--num-particles"),
    (["--codebook-size", "8"], "--codebook-size"),  # not a VAE field
    (["--elbo", "iwae", "--beta", "2"], "--beta"),  # no KL term in the IWAE bound
    (["--gradient", "dreg"], "--gradient"),  # trace has no gradient option
    (["--data-root", "/tmp"], "--data-root"),  # digits are bundled
    (["--device", "tpu"], "--device"),
])
def test_bad_flags_give_one_line_naming_the_flag(tmp_path, capsys, argv, flag):
    out = tmp_path / "r"
    assert main(["fit", *argv, "--out", str(out), *TINY]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"lvm-pyro: error: {flag} ") and err.count("\n") == 1, err
    assert not out.exists()


def test_library_errors_name_fields_not_flags():
    with pytest.raises(ConfigError, match=r"^z_dim must be >= 1, got -2$") as e:
        VAEConfig(z_dim=-2)
    assert e.value.field == "z_dim" and isinstance(e.value, ValueError)
    with pytest.raises(ConfigError, match="free_bits must be >= 0"):
        RunConfig.from_dict({"free_bits": -1.0})
    with pytest.raises(dataclasses.FrozenInstanceError):
        VAEConfig().z_dim = 3


def test_json_round_trip_holds_only_the_fields_of_the_model():
    for name, cls in MODEL_CONFIGS.items():
        for obj, ocls in OBJECTIVE_CONFIGS.items():
            cfg = RunConfig(cls(), ocls())
            d = json.loads(json.dumps(cfg.to_dict()))
            assert RunConfig.from_dict(d) == cfg
            own = {f.name for g in (cls, ocls, DataConfig, TrainConfig)
                   for f in dataclasses.fields(g)} | {"model", "elbo"}
            assert set(d) <= own
    vae = RunConfig().to_dict()
    assert "codebook_size" not in vae and "num_stochastic_layers" not in vae
    assert "gradient" not in vae and "data_root" not in vae
    # a config.json of an older version held every key at its default: still readable
    old = {**vae, "codebook_size": 512, "gradient": "standard", "num_stochastic_layers": 1}
    assert RunConfig.from_dict(old, strict=False) == RunConfig()
    with pytest.raises(ConfigError, match="codebook_size does not apply"):
        RunConfig.from_dict({**vae, "codebook_size": 8}, strict=False)  # not silently dropped
    # the config.json an older version wrote for `fit --model vqvae` (every key)
    old_vq = {"activation": "tanh", "batch_size": 100, "beta": 1.0, "binarization": "none",
              "channels": 8, "codebook_size": 8, "commitment_weight": 0.25, "data": "digits",
              "data_root": None, "dead_code_threshold": 1.0, "decay": 0.99, "device": "cpu",
              "elbo": "trace", "embedding_dim": 4, "epochs": 1, "free_bits": 0.0,
              "gradient": "standard", "hidden_dim": 200, "kl_warmup": 0,
              "likelihood": "discretized_logistic", "lr": 0.001, "model": "vqvae",
              "network": "mlp", "num_hidden": 2, "num_mixtures": 1, "num_particles": 1,
              "num_stochastic_layers": 1, "seed": 0, "z_dim": 10}
    cfg = RunConfig.from_dict(old_vq, strict=False)
    assert cfg.model == VQVAEConfig(codebook_size=8, embedding_dim=4, channels=8, num_levels=17)
    assert "z_dim" not in cfg.to_dict() and "hidden_dim" not in cfg.to_dict()


def test_builders_refuse_unknown_keys_naming_them_and_the_fields(tmp_path):
    """A dict given to a builder used to drop a misspelt key silently (``build_vae({"zdim":
    3})`` built z_dim 10): now one ConfigError names the key, a close match and the
    fields."""
    cases = [(builders.build_vae, {"zdim": 3}, "z_dim"),
             (builders.build_vqvae, {"codebok_size": 8}, "codebook_size"),
             (builders.build_sbn, {"num_stochastic_layer": 2}, "num_stochastic_layers"),
             (builders.build_pixelvae, {"decoder_layer": 2}, "decoder_layers"),
             (builders.build_flow, {"num_scale": 1}, "num_scales"),
             (builders.build_model, {"model": "vae", "hiden_dim": 8}, "hidden_dim")]
    for build, values, close in cases:
        key = next(k for k in values if k != "model")
        with pytest.raises(ConfigError, match=f"^{key} is not a configuration field "
                                              f"\\(did you mean '{close}'[ ?]") as e:
            build(values, (1, 8, 8))
        assert e.value.field == key and close in e.value.problem.split("fields are:")[1]
    with pytest.raises(ConfigError, match=r"^bta is not .*mean 'beta'.*objective 'trace': "
                                          r"num_particles, beta, "):
        builders.build_objective({"bta": 2.0})
    with pytest.raises(ConfigError, match=r"^colour is not a configuration field; the fields "
                                          r"are: model 'vae': z_dim, hidden_dim, .*; training: "
                                          r"batch_size, lr, epochs"):
        builders.build_vae({"colour": "red"}, (1, 8, 8))
    with pytest.raises(ConfigError, match="zdim is not a configuration field"):
        RunConfig.from_dict({"zdim": 3})  # strict: the same message, not "does not apply"
    # a config.json with a key of no configuration is named too (not silently read)
    from lvm_pyro.training.run import read_run_config

    (tmp_path / "config.json").write_text(json.dumps({**RunConfig().to_dict(), "zdim": 3}))
    with pytest.raises(ConfigError, match="zdim is not a configuration field"):
        read_run_config(tmp_path)
    # the keys that are known stay accepted: a field of another model at its default
    # (older config.json files) and the record-only data_source
    assert builders.build_vae({"codebook_size": 512, "data_source": "x", "z_dim": 3},
                              (1, 8, 8))[1].z_dim == 3


def test_register_model_with_its_config_class_adds_flags():
    @dataclasses.dataclass(frozen=True)
    class TinyConfig(ModelConfig):
        width: int = 3

        def __post_init__(self):
            if self.width < 1:
                raise ConfigError("width", f"must be >= 1, got {self.width}")

    def build_tiny(cfg, event_shape):
        assert isinstance(cfg, TinyConfig)
        return builders.build_vae(VAEConfig(z_dim=cfg.width, hidden_dim=4, num_hidden=1), event_shape)

    try:
        builders.register_model("tiny", build_tiny, TinyConfig)
        cfg = parse("--model", "tiny", "--width", "4")
        assert cfg.model == TinyConfig(width=4) and cfg.to_dict()["width"] == 4
        model, guide = builders.build_model(cfg, (1, 8, 8))
        assert model.z_dim == 4
        with pytest.raises(ConfigError, match="width"):
            parse("--model", "tiny", "--width", "0")
        with pytest.raises(ValueError, match="ModelConfig"):
            builders.register_model("bad", build_tiny, dict)
    finally:
        builders.MODEL_BUILDERS.pop("tiny", None)
        MODEL_CONFIGS.pop("tiny", None)


def test_objective_is_built_in_one_place_with_its_kl_weighting():
    from pyro.infer import Trace_ELBO

    from lvm_pyro.inference import IWAE_ELBO, KLWeighted_ELBO

    assert type(builders.build_objective(RunConfig())) is Trace_ELBO
    e = builders.build_objective(parse("--beta", "0.5", "--kl-warmup", "7"))
    assert isinstance(e, KLWeighted_ELBO) and (e.beta, e.kl_warmup_steps) == (0.5, 7)
    e = builders.build_objective(parse("--elbo", "iwae", "--num-particles", "4", "--gradient", "dreg"))
    assert isinstance(e, IWAE_ELBO) and e.num_particles == 4


def test_python_m_lvm_pyro_cli_runs_the_same_main(monkeypatch, capsys):
    """``python -m lvm_pyro.cli`` runs lvm_pyro/cli/__main__.py (in-process here: runpy)."""
    import runpy

    monkeypatch.setattr(sys, "argv", ["lvm_pyro.cli", "fit", "--z-dim", "-2"])
    with pytest.raises(SystemExit) as e:
        runpy.run_module("lvm_pyro.cli", run_name="__main__")
    assert e.value.code == 2 and "--z-dim must be >= 1" in capsys.readouterr().err


# -- one evaluation rule -------------------------------------------------------------
def test_bits_per_dim_offset_cases():
    class Lik:
        def __init__(self, discrete):
            self.discrete = discrete

    D = 64
    off = bits_per_dim_offset(Lik(True), "dynamic", 17, D)
    assert off.offset_nats == 0.0
    off = bits_per_dim_offset(Lik(False), "dequantize", 17, D)
    assert off.offset_nats == pytest.approx(D * math.log(17))
    for mode in ("none", "dynamic", "static"):
        assert bits_per_dim_offset(Lik(False), mode, 256, D).offset_nats is None
    with pytest.raises(ValueError, match="discrete likelihood on dequantised"):
        bits_per_dim_offset(True, "dequantize", 17, D)
    # the report: (nll + offset) / (D ln 2), and no bits/dim without a bound
    log_px = torch.tensor([-10.0, -12.0, -14.0])
    r = nll_report(log_px, bits_per_dim_offset(False, "dequantize", 17, D))
    assert r.nll == pytest.approx(12.0 + D * math.log(17))
    assert r.bits_per_dim == pytest.approx((12.0 + D * math.log(17)) / (D * math.log(2)))
    assert r.nll_se == pytest.approx(2.0 / math.sqrt(3)) and r.nll_density == pytest.approx(12.0)
    assert nll_report(log_px, bits_per_dim_offset(False, "none", 17, D)).bits_per_dim is None


def test_fit_evaluate_and_fit_prior_report_one_bound_alike(tmp_path):
    """VQ-VAE, Gaussian likelihood, dequantised digits: the uniform-prior bound that
    ``fit`` writes as test_nll, ``evaluate`` writes again and ``fit-prior`` writes as
    uniform_prior_nll is one number in nats and in bits/dim (before: 5.4 vs 1.3 bits/dim,
    fit-prior dropped the D log L offset)."""
    run = tmp_path / "run"
    assert main(["fit", "--model", "vqvae", "--likelihood", "gaussian", "--binarization",
                 "dequantize", "--codebook-size", "8", "--embedding-dim", "4", "--channels", "8",
                 "--out", str(run), *TINY]) == 0
    assert main(["evaluate", str(run), "--num-samples", "2", "--num-test", "20"]) == 0
    assert main(["fit-prior", str(run), "--epochs", "1", "--channels", "4", "--num-layers", "1",
                 "--num-train", "50", "--num-test", "20", "--num-samples", "4",
                 "--no-progress"]) == 0
    fit = json.loads((run / "metrics.json").read_text())
    ev = json.loads((run / "evaluation.json").read_text())
    prior = json.loads((run / "prior_metrics.json").read_text())
    offset = 64 * math.log(17)
    for m in (fit, ev, prior):
        assert m["bits_per_dim_offset_nats"] == pytest.approx(offset)
    reports = [(fit["test_nll"], fit["test_bits_per_dim"]), (ev["test_nll"], ev["test_bits_per_dim"]),
               (prior["uniform_prior_nll"], prior["uniform_prior_bits_per_dim"])]
    for nll, bpd in reports:
        assert nll == pytest.approx(reports[0][0], rel=1e-5)
        assert bpd == pytest.approx(nll / (64 * math.log(2)), rel=1e-9)
    # the reconstruction term is one bound too: VQ metrics and fit-prior agree
    assert prior["reconstruction_nll"] == pytest.approx(fit["test_reconstruction_nll"], rel=1e-5)
    assert prior["reconstruction_bits_per_dim"] == pytest.approx(
        fit["test_reconstruction_bits_per_dim"], rel=1e-5)
    assert prior["two_stage_nll"] == pytest.approx(prior["reconstruction_nll"] + prior["prior_nll"],
                                                   abs=1e-3)


@pytest.mark.parametrize("model", ["vqvae", "vqvae2", "flow", "sbn"])
def test_aggressive_encoder_is_refused_for_models_without_a_gaussian_z(model):
    """Aggressive training judges encoder steps by I_q(x; z): a model with no Gaussian 'z'
    is refused when the configuration is built, before a run directory is written."""
    from lvm_pyro.training.config import MODEL_CONFIGS, ConfigError, RunConfig, TrainConfig

    with pytest.raises(ConfigError, match="aggressive_encoder.*Gaussian latent 'z'"):
        RunConfig(model=MODEL_CONFIGS[model](), train=TrainConfig(aggressive_encoder=True))
    RunConfig(model=MODEL_CONFIGS["vae"](), train=TrainConfig(aggressive_encoder=True))
