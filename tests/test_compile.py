"""``--compile``: which modules are compiled (fast, with ``nn.Module.compile`` recorded
instead of run), and (slow) a compiled tiny VAE is deterministic per seed, resumes
bit-exactly in the same process and agrees with the eager run to float32 rounding."""

import pyro
import pytest
import torch
from pyro.infer import Trace_ELBO
from torch import nn

from lvm_pyro.training import Trainer
from lvm_pyro.training.builders import build_vae
from lvm_pyro.training.compile import compile_networks, networks_of
from lvm_pyro.training.config import ConfigError, TrainConfig

TINY = {"z_dim": 2, "hidden_dim": 8, "num_hidden": 1}


def test_the_networks_are_the_plain_children_of_the_programs():
    model, guide = build_vae(TINY, (1, 4, 4))
    assert list(networks_of(model, guide)) == ["model.decoder", "guide.encoder"]
    assert networks_of(lambda x: None, None) == {}


def test_the_vector_quantiser_stays_eager(monkeypatch):
    from lvm_pyro.training.builders import build_model

    compiled = []
    monkeypatch.setattr(nn.Module, "compile", lambda self, **kw: compiled.append(type(self).__name__))
    model, guide = build_model({"model": "vqvae", "codebook_size": 8, "embedding_dim": 4},
                               (1, 28, 28))
    names = compile_networks(model, guide)
    assert names and not any("quantizer" in n for n in names)
    assert "VectorQuantizer" not in compiled and len(compiled) == len(names)


def test_programs_without_networks_warn_that_nothing_is_compiled():
    def model(x):
        pass

    with pytest.warns(UserWarning, match="no network to compile"):
        Trainer(model, model, Trace_ELBO(), compile_networks=True, progress=False)


def test_the_flag_is_a_boolean_of_the_training_config():
    assert TrainConfig(compile=True).compile is True
    with pytest.raises(ConfigError, match="compile"):
        TrainConfig(compile="yes")


def _fit(tmp_path, name, epochs, compiled, resume=False):
    pyro.clear_param_store()
    torch.manual_seed(0)
    model, guide = build_vae(TINY, (1, 4, 4))
    t = Trainer(model, guide, Trace_ELBO(), batch_size=16, seed=1, progress=False,
                checkpoint_path=tmp_path / name, compile_networks=compiled,
                divergence_tolerance=None)
    x = torch.rand(40, 1, 4, 4, generator=torch.Generator().manual_seed(2))
    hist = t.fit(x, epochs, resume=resume)
    return [h["loss"] for h in hist], {k: v.detach().clone() for k, v in pyro.get_param_store().items()}


@pytest.mark.slow
def test_compiled_training_is_deterministic_resumes_exactly_and_matches_eager(tmp_path):
    torch._dynamo.reset()
    losses, params = _fit(tmp_path, "a.pt", 2, True)
    again, params_again = _fit(tmp_path, "b.pt", 2, True)
    assert losses == again and all(torch.equal(params[k], params_again[k]) for k in params)
    _fit(tmp_path, "c.pt", 1, True)
    resumed, params_resumed = _fit(tmp_path, "c.pt", 2, True, resume=True)
    assert resumed == losses and all(torch.equal(params[k], params_resumed[k]) for k in params)
    eager, params_eager = _fit(tmp_path, "d.pt", 2, False)
    assert eager == pytest.approx(losses, rel=1e-4)
    for k in params:
        assert torch.allclose(params[k], params_eager[k], atol=1e-4), k
