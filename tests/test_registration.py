"""CachedPyroModule: outside ``cached_registration`` exactly PyroModule (one param site per
tensor); inside it, one param site per already-registered child module, with the full
registration again whenever the param store or the module's parameters change; and the
Trainer's steps with it give bit-identical parameters to steps without it."""

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.infer import Trace_ELBO
from torch import nn

from lvm_pyro.inference import IWAE_ELBO
from lvm_pyro.registration import CachedPyroModule, cached_registration, registration_cached
from lvm_pyro.training import Trainer
from lvm_pyro.training.builders import build_vae


class Net(CachedPyroModule):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))

    def forward(self, x):
        return pyro.sample("y", dist.Normal(self.body(x), 1.0).to_event(1), obs=x[:, :2])


def _param_sites(fn, *args):
    """The param sites of one run, with Pyro's module divider shown as '.'."""
    tr = poutine.trace(fn).get_trace(*args)
    return [n.replace("$$$", ".") for n, s in tr.nodes.items() if s["type"] == "param"]


def test_outside_the_context_every_tensor_is_a_param_site():
    pyro.clear_param_store()
    net, x = Net(), torch.randn(5, 3)
    assert not registration_cached()
    for _ in range(2):
        assert _param_sites(net, x) == ["body.0.weight", "body.0.bias", "body.2.weight", "body.2.bias"]


def test_inside_the_context_one_site_after_the_first_registration():
    pyro.clear_param_store()
    net, x = Net(), torch.randn(5, 3)
    with cached_registration():
        assert registration_cached()
        first = _param_sites(net, x)
        second = _param_sites(net, x)
    assert len(first) == 4 and second == ["body.0.weight"]
    assert not registration_cached()
    # a new layer (another parameter set): the full registration again
    net.body[2] = nn.Linear(4, 2)
    with cached_registration():
        store = pyro.get_param_store()
        # the store keeps the first tensors under these names (Pyro's setdefault), so the
        # cache never matches the new layer and every call announces every tensor
        assert len(_param_sites(net, x)) == 4
        assert store["body$$$2.weight"] is not net.body[2].weight
    # a cleared store: registered afresh (all tensors), then cached again
    pyro.clear_param_store()
    with cached_registration():
        assert len(_param_sites(net, x)) == 4
        assert _param_sites(net, x) == ["body.0.weight"]


def test_trainer_steps_are_bit_identical_with_and_without_the_cache(monkeypatch):
    import lvm_pyro.training.loop as loop
    import contextlib

    x = torch.rand(64, 1, 4, 4)
    results = []
    for cached in (True, False):
        if not cached:
            monkeypatch.setattr(loop, "cached_registration", contextlib.nullcontext)
        for elbo in (Trace_ELBO(), IWAE_ELBO(num_particles=3),
                     IWAE_ELBO(num_particles=3, gradient="dreg")):
            pyro.clear_param_store()
            torch.manual_seed(0)
            model, guide = build_vae({"z_dim": 2, "hidden_dim": 8, "num_hidden": 1}, (1, 4, 4))
            t = Trainer(model, guide, elbo, batch_size=16, seed=3, progress=False)
            hist = t.fit(x, 2)
            results.append(([h["loss"] for h in hist],
                            {k: v.detach().clone() for k, v in pyro.get_param_store().items()}))
    for (l_a, p_a), (l_b, p_b) in zip(results[:3], results[3:]):
        assert l_a == l_b
        assert p_a.keys() == p_b.keys() and all(torch.equal(p_a[k], p_b[k]) for k in p_a)


def test_only_objectives_that_do_not_look_parameters_up_in_the_traces_opt_in():
    from pyro.infer import TraceGraph_ELBO, TraceMeanField_ELBO

    from lvm_pyro.inference import VIMCO, LeanTrace_ELBO
    from lvm_pyro.registration import objective_allows_cached_registration as allows

    assert allows(LeanTrace_ELBO()) and allows(IWAE_ELBO(num_particles=2)) and allows(VIMCO(2))
    # DReG / STL detach the parameters the param sites name; Pyro's ELBOs are not ours
    assert not allows(IWAE_ELBO(num_particles=2, gradient="dreg"))
    assert not allows(IWAE_ELBO(num_particles=1, gradient="stl"))
    assert not any(allows(e) for e in (Trace_ELBO(), TraceMeanField_ELBO(), TraceGraph_ELBO()))
