"""Sigmoid belief net: densities against exact enumeration over all latent states,
importance-sampled log p(x) against the enumerated marginal, short VIMCO / NVIL training,
the run builders and the CLI flags of issue 4."""

import itertools
import math

import pyro
import pyro.distributions as dist
import pytest
import torch

from lvm_pyro.cli import build_parser
from lvm_pyro.guides import InputBaseline, SigmoidBeliefNetGuide
from lvm_pyro.inference import (VIMCO, FreeBits_ELBO, KLWeighted_ELBO, log_marginal_likelihood,
                                log_weights)
from lvm_pyro.models import SigmoidBeliefNetModel
from lvm_pyro.nn import MLP
from lvm_pyro.training.builders import build_elbo, build_model
from lvm_pyro.training.config import ConfigError, config_from_namespace

EVENT = (1, 2, 3)  # 6 binary pixels


def tiny_sbn(layers: int, z: int = 3, seed: int = 0):
    torch.manual_seed(seed)
    dec = MLP((z,), (), (1, *EVENT))
    between = [MLP((z,), (), (z,)) for _ in range(layers - 1)]
    model = SigmoidBeliefNetModel(dec, [z] * layers, EVENT, between)
    with torch.no_grad():
        model.prior_logits.copy_(torch.randn(z))
        for p in model.parameters():
            p.mul_(2.0)
    encs = [MLP(EVENT, (), (z,))] + [MLP((z,), (), (z,)) for _ in range(layers - 1)]
    return model, SigmoidBeliefNetGuide(encs, [z] * layers)


def exact_log_px(model, x):
    """log p(x) = log sum over every joint latent state, by hand from the networks."""
    z_dim, L = model.z_dims[0], len(model.z_dims)
    states = torch.tensor(list(itertools.product([0.0, 1.0], repeat=z_dim)))  # (8, z)
    terms = []
    with torch.no_grad():
        for combo in itertools.product(range(len(states)), repeat=L):
            zs = [states[i] for i in combo]  # zs[0]: layer next to x, zs[-1]: top
            lp = dist.Bernoulli(logits=model.prior_logits).log_prob(zs[-1]).sum()
            for l in range(L - 1):
                lp = lp + dist.Bernoulli(logits=model.layers[l](zs[l + 1])).log_prob(zs[l]).sum()
            logits = model.decoder(zs[0])[0]  # (*EVENT)
            terms.append(lp + dist.Bernoulli(logits=logits).log_prob(x).flatten(1).sum(-1))
    return torch.logsumexp(torch.stack(terms), 0)


def data(n=5, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.bernoulli(torch.full((n, *EVENT), 0.4), generator=g)


@pytest.mark.parametrize("layers", [1, 2])
def test_sites_shapes_and_joint_density(layers):
    model, guide = tiny_sbn(layers)
    x = data()
    gt = pyro.poutine.trace(guide).get_trace(x)
    mt = pyro.poutine.trace(pyro.poutine.replay(model, trace=gt)).get_trace(x)
    names = ["z"] + (["z2"] if layers == 2 else [])
    assert model.site_names == names == guide.site_names
    for n in names:
        v = gt.nodes[n]["value"]
        assert v.shape == (5, 3) and set(v.unique().tolist()) <= {0.0, 1.0}
        assert not gt.nodes[n]["fn"].has_rsample
    # joint log density from the trace == by-hand formula
    mt.compute_log_prob()
    zs = [gt.nodes[n]["value"] for n in names]
    lp = dist.Bernoulli(logits=model.prior_logits).log_prob(zs[-1]).sum(-1)
    for l in range(layers - 1):
        lp = lp + dist.Bernoulli(logits=model.layers[l](zs[l + 1])).log_prob(zs[l]).sum(-1)
    lp = lp + dist.Bernoulli(logits=model.decoder(zs[0])[:, 0]).log_prob(x).sum((-1, -2, -3))
    total = sum(mt.nodes[s]["log_prob"] for s in names + ["x"])
    torch.testing.assert_close(total, lp.detach())
    with pytest.raises(ValueError, match="binary data"):
        model(x * 0.5)


@pytest.mark.parametrize("layers", [1, 2])
def test_importance_sampled_log_px_matches_enumeration(layers):
    """log p(x) by importance sampling with the (untrained) guide, K = 50000, lies within
    5 standard errors (delta method: sd(w) / (mean(w) sqrt(K)), from a second draw) of the
    exact sum over all 8^L latent states; the standard errors are below 0.05 nats."""
    model, guide = tiny_sbn(layers)
    x = data()
    exact = exact_log_px(model, x)
    K = 50000
    est = log_marginal_likelihood(model, guide, x, num_samples=K)
    w = log_weights(model, guide, x, K).log_w.detach().double()  # (K, batch)
    w = (w - w.max(0).values).exp()
    se = w.std(0) / w.mean(0) / math.sqrt(K)
    assert float(se.max()) < 0.05
    assert bool(((est - exact).abs() < 5 * se + 1e-4).all()), (est, exact, se)


def _fit(elbo, model, guide, x, steps):
    params = None
    for _ in range(steps):
        elbo.loss_and_grads(model, guide, x)
        if params is None:
            params = [p.unconstrained() for p in pyro.get_param_store().values()]
            opt = torch.optim.Adam(params, lr=0.05)
        opt.step()
        opt.zero_grad()


@pytest.mark.parametrize("objective", ["vimco", "nvil"])
def test_short_training_raises_the_exact_likelihood(objective):
    """60 Adam steps on 40 binary vectors raise the exact mean log p(x) by > 0.3 nats."""
    model, guide = tiny_sbn(2, seed=3)
    if objective == "nvil":
        from pyro.infer import TraceGraph_ELBO
        guide = SigmoidBeliefNetGuide(list(guide.encoders), guide.z_dims,
                                      [InputBaseline(EVENT, (8,)) for _ in range(2)])
        elbo = TraceGraph_ELBO(max_plate_nesting=1)
    else:
        elbo = VIMCO(num_particles=4, max_plate_nesting=1)
    x = torch.bernoulli(torch.tensor([0.9, 0.1, 0.8, 0.2, 0.9, 0.1]).reshape(EVENT).expand(40, *EVENT),
                        generator=torch.Generator().manual_seed(0))
    before = float(exact_log_px(model, x).mean())
    _fit(elbo, model, guide, x, 60)
    after = float(exact_log_px(model, x).mean())
    assert after > before + 0.3, (before, after)


def test_builders_and_cli_flags():
    def parse(*argv):
        return config_from_namespace(build_parser().parse_args(["fit", *argv]))

    cfg = parse("--model", "sbn", "--elbo", "tracegraph", "--num-hidden", "0", "--z-dim", "7",
                "--num-stochastic-layers", "2", "--beta", "2", "--kl-warmup", "100")
    assert (cfg.objective.beta, cfg.objective.kl_warmup) == (2.0, 100)
    model, guide = build_model(cfg, EVENT)
    assert isinstance(model, SigmoidBeliefNetModel) and model.z_dims == [7, 7]
    assert guide.baselines is not None and len(guide.baselines) == 2
    with pytest.raises(ConfigError, match="free_bits does not apply"):
        parse("--model", "sbn", "--elbo", "tracegraph", "--free-bits", "0.5")  # pathwise only
    elbo = build_elbo(cfg)
    assert isinstance(elbo, KLWeighted_ELBO) and elbo.beta == 2.0 and elbo.kl_warmup_steps == 100
    fb = build_elbo({"elbo": "trace", "free_bits": 0.5, "beta": 1.0})
    assert isinstance(fb, FreeBits_ELBO) and fb.free_bits == 0.5
    assert isinstance(build_elbo({"elbo": "vimco", "num_particles": 5}), VIMCO)
    with pytest.raises(ConfigError, match="num_particles must be >= 2"):
        build_elbo({"elbo": "vimco", "num_particles": 1})
    with pytest.raises(ConfigError, match="beta does not apply"):
        build_elbo({"elbo": "vimco", "num_particles": 5, "beta": 0.5})
    assert build_model({"model": "sbn", "elbo": "vimco", "z_dim": 7}, EVENT)[1].baselines is None


def test_train_run_and_reload(tmp_path):
    """One epoch of --model sbn --elbo tracegraph on digits; the reloaded run evaluates the
    same (baseline networks are part of the guide, so the checkpoint matches)."""
    from lvm_pyro.training.run import evaluate_run, train_run

    cfg = {"model": "sbn", "data": "digits", "z_dim": 8, "num_hidden": 0, "elbo": "tracegraph",
           "epochs": 1, "batch_size": 200, "beta": 1.0, "kl_warmup": 3}
    pyro.set_rng_seed(0)
    m = train_run(cfg, tmp_path, progress=False, num_samples=20, num_test=30)
    assert math.isfinite(m["test_nll"]) and m["test_nll"] > 0
    pyro.set_rng_seed(5)
    again = evaluate_run(tmp_path, num_samples=20, num_test=30)
    assert again["test_nll"] == pytest.approx(m["test_nll"], abs=2.0)
