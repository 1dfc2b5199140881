"""The encoder memo across an evaluation's particle chunks (lvm_pyro.memo) and the CPU
chunk budget: the same numbers as without them, the encoder run once, and a fresh
computation whenever the input or the parameters change."""

import pyro
import pytest
import torch
from torch import nn

from lvm_pyro.inference import iter_log_weights, log_marginal_likelihood
from lvm_pyro.inference.evaluation import (CPU_ELEMENT_BUDGET, DEFAULT_ELEMENT_BUDGET,
                                           default_element_budget)
from lvm_pyro.memo import memoized, reuse_within
from lvm_pyro.training.builders import build_vae

CFG = {"z_dim": 3, "hidden_dim": 16, "num_hidden": 1, "activation": "tanh", "likelihood": "bernoulli"}


def _vae_and_data():
    """A fresh small VAE (empty param store) and 4 fixed binary points of 6 pixels."""
    pyro.clear_param_store()
    model, guide = build_vae(CFG, (6,))
    x = torch.bernoulli(torch.full((4, 6), 0.5), generator=torch.Generator().manual_seed(0))
    return model, guide, x


class Counting(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 2)
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return self.lin(x)


def test_memoized_reuses_only_the_same_unmodified_input_and_parameters():
    net, x = Counting(), torch.randn(5, 4)
    memo = {}
    with torch.no_grad(), reuse_within(memo):
        a = memoized(net, x)
        b = memoized(net, x)
        assert b is a and net.calls == 1
        assert memoized(net, x.clone()) is not a and net.calls == 2  # another tensor
        c = memoized(net, x)  # the one entry now holds the clone: x is computed again
        assert net.calls == 3 and torch.equal(c, a)
        x.add_(1.0)  # in place: a new version of the same tensor
        d = memoized(net, x)
        assert net.calls == 4 and torch.allclose(d, net.lin(x))
        net.lin.weight.mul_(2.0)  # the parameters changed in place
        e = memoized(net, x)
        assert net.calls == 5 and torch.allclose(e, net.lin(x))
        assert len(memo) == 1  # one entry per module
    with torch.no_grad():  # outside reuse_within: always computed
        memoized(net, x), memoized(net, x)
    assert net.calls == 7
    with reuse_within({}):  # with gradients: always computed, nothing stored
        y = memoized(net, x)
        memoized(net, x)
    assert net.calls == 9 and y.requires_grad


@pytest.mark.parametrize("chunk", [1, 3, 20])
def test_evaluation_runs_the_encoder_once_and_matches_unchunked(chunk):
    model, guide, x = _vae_and_data()
    calls = []
    guide.encoder.register_forward_hook(lambda *a: calls.append(1))
    pyro.set_rng_seed(1)
    chunked = log_marginal_likelihood(model, guide, x, num_samples=20, chunk_size=chunk,
                                      max_plate_nesting=1)
    assert len(calls) == 1  # not once per chunk
    # the memo changes no number: the same draws with gradients on (memo bypassed)
    pyro.set_rng_seed(1)
    with torch.no_grad():
        lws = torch.cat([o.log_w for o in iter_log_weights(model, guide, x, 20, chunk_size=chunk,
                                                           max_plate_nesting=1)])
    calls.clear()
    pyro.set_rng_seed(1)
    plain = torch.cat([o.log_w.detach() for o in iter_log_weights(
        model, guide, x, 20, chunk_size=chunk, max_plate_nesting=1)])
    assert len(calls) == -(-20 // chunk)  # with gradients: once per chunk
    assert torch.equal(lws, plain)
    expect = torch.logsumexp(lws, 0) - torch.log(torch.tensor(20.0))
    assert torch.allclose(chunked, expect, atol=1e-6)
    assert lws.shape == (20, 4) and torch.isfinite(lws).all()


def test_encoder_memo_does_not_cross_evaluations_after_a_parameter_update():
    model, guide, x = _vae_and_data()
    pyro.set_rng_seed(0)
    before = log_marginal_likelihood(model, guide, x, num_samples=8, chunk_size=2)
    with torch.no_grad():
        for p in guide.encoder.parameters():
            p.add_(0.5)
    pyro.set_rng_seed(0)
    after = log_marginal_likelihood(model, guide, x, num_samples=8, chunk_size=2)
    assert not torch.allclose(before, after)


def test_the_default_chunk_budget_is_smaller_on_the_cpu():
    assert default_element_budget(torch.device("cpu")) == CPU_ELEMENT_BUDGET == 2 ** 22
    assert default_element_budget(torch.device("cuda")) == DEFAULT_ELEMENT_BUDGET == 2 ** 24
    # 16 MiB of float32: under glibc's largest dynamic mmap threshold (32 MiB)
    assert CPU_ELEMENT_BUDGET * 4 <= 32 * 2 ** 20


def test_memo_keys_on_tag_mode_and_buffers():
    net, x = Counting(), torch.randn(5, 4)
    net.register_buffer("shift", torch.zeros(2))
    memo = {}
    with torch.no_grad(), reuse_within(memo):
        a = memoized(net, x)
        assert memoized(net, x, tag="other") is not a and net.calls == 2  # its own entry
        assert memoized(net, x) is a and memoized(net, x, tag="other") is not a
        assert net.calls == 2
        net.eval()  # train/eval mode is part of the key (dropout, batch norm)
        memoized(net, x)
        assert net.calls == 3
        net.shift.add_(1.0)  # a buffer changed in place
        memoized(net, x)
        assert net.calls == 4
        assert len(memo) == 2


def test_memo_is_bypassed_under_inference_mode():
    net, x = Counting(), torch.randn(5, 4)
    with torch.inference_mode(), reuse_within({}):
        xi = torch.randn(5, 4)  # an inference tensor: no version counter
        memoized(net, xi), memoized(net, xi), memoized(net, x)
    assert net.calls == 3


def test_log_marginal_likelihood_under_inference_mode_matches_no_grad():
    model, guide, x = _vae_and_data()
    pyro.set_rng_seed(3)
    ref = log_marginal_likelihood(model, guide, x, num_samples=12, chunk_size=4)
    with torch.inference_mode():
        xi = x.clone()
        pyro.set_rng_seed(3)
        got = log_marginal_likelihood(model, guide, xi, num_samples=12, chunk_size=4)
    assert torch.allclose(got, ref, atol=1e-6)


def test_memo_is_bypassed_for_dropout_in_training_mode():
    net = nn.Sequential(nn.Dropout(0.5), Counting())
    x = torch.randn(50, 4)
    with torch.no_grad(), reuse_within({}):
        a, b = memoized(net, x), memoized(net, x)
        assert net[1].calls == 2 and not torch.equal(a, b)  # fresh masks
        net.eval()
        memoized(net, x), memoized(net, x)
        assert net[1].calls == 3  # deterministic in eval mode: reused
