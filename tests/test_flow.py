"""The multi-scale pixel flow: log-determinants against torch.func.jacrev, invertibility,
log p(y) as a change of variables, and FlowModel's dequantised log weights."""

import math

import pyro
import pytest
import torch
from pyro.infer import Trace_ELBO

from lvm_pyro.data import load_dataset
from lvm_pyro.guides import UniformDequantizer, VariationalDequantizer
from lvm_pyro.inference import log_weights
from lvm_pyro.models import FlowModel, PixelFlowDensity
from lvm_pyro.nn import ChannelSubset, Squeeze2d


@pytest.fixture(autouse=True)
def _float64():
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


def _random_flow(shape=(2, 4, 4), **kw):
    flow = PixelFlowDensity(shape, num_scales=2, num_couplings=2, hidden_channels=4, **kw)
    with torch.no_grad():  # couplings start as identities: make them non-trivial
        for m in flow.couplings:
            last = m.nn.net[-1]
            last.weight.normal_(0.0, 0.3)
            last.bias.normal_(0.0, 0.3)
    return flow


def _call(t, v):
    """t applied to one event (under jacrev: a cache hit is impossible, as every call
    gets a new tensor)."""
    return t(v)


def test_squeeze_is_a_permutation_with_zero_log_det():
    t = Squeeze2d()
    x = torch.randn(3, 2, 4, 6)
    y = t(x)
    assert y.shape == (3, 8, 2, 3)
    assert torch.equal(t._inverse(y.clone()), x)
    assert torch.equal(torch.sort(y.flatten(1)).values, torch.sort(x.flatten(1)).values)
    assert y[0, 4 * 1 + 2 * 1 + 0, 1, 2].item() == x[0, 1, 3, 4].item()  # channel 4c + 2a + b
    jac = torch.func.jacrev(lambda v: _call(t, v))(x[0]).reshape(48, 48)
    assert torch.linalg.slogdet(jac).logabsdet.abs() < 1e-12
    assert torch.equal(t.log_abs_det_jacobian(x, y), torch.zeros(3))
    with pytest.raises(ValueError, match="even H and W"):
        t(torch.randn(1, 3, 3))


def test_channel_subset_log_det_against_jacrev():
    flow = _random_flow((2, 4, 4))
    inner = flow.transform.parts[-1]  # the multi-scale part after the logit
    sub = next(p for p in inner.parts if isinstance(p, ChannelSubset))
    x = torch.randn(8, 2, 2)
    jac = torch.func.jacrev(lambda v: _call(sub, v))(x).reshape(32, 32)
    y = sub(x)
    assert abs(float(sub.log_abs_det_jacobian(x, y).detach()) - float(torch.linalg.slogdet(jac.detach()).logabsdet)) < 1e-9
    assert torch.equal(y[4:], x[4:])  # the factored-out half passes unchanged


@pytest.mark.parametrize("shape", [(1, 4, 4), (2, 4, 4)])
def test_flow_log_det_against_jacrev_and_log_prob(shape):
    flow = _random_flow(shape)
    f = flow.transform
    D = math.prod(shape)
    y = 0.05 + 0.9 * torch.rand(shape)

    def to_latent(v):
        for t in f.parts:
            v = _call(t, v)
        return v

    jac = torch.func.jacrev(to_latent)(y).reshape(D, D)
    log_det = torch.linalg.slogdet(jac).logabsdet
    e = f(y)
    assert abs(float(f.log_abs_det_jacobian(y, e).detach()) - float(log_det.detach())) < 1e-8
    # log p(y) = log N(f(y); 0, I) + log |det df/dy|
    expected = torch.distributions.Normal(0.0, 1.0).log_prob(to_latent(y)).sum() + log_det
    assert abs(float(flow.distribution().log_prob(y.clone()).detach()) - float(expected.detach())) < 1e-8


def test_flow_is_invertible():
    flow = _random_flow((2, 8, 8))
    y = 0.02 + 0.96 * torch.rand(5, 2, 8, 8)
    f = flow.transform
    e = f(y)
    back = f.inv(e.clone())  # a fresh tensor: no cached inverse
    assert (back - y).abs().max() < 1e-5
    z = torch.randn(5, 2, 8, 8)
    assert (f(f.inv(z).clone()) - z).abs().max() < 1e-5
    assert flow.distribution().sample((4,)).shape == (4, 2, 8, 8)


def test_flow_model_log_weight_is_density_at_k_plus_u():
    """With uniform noise, log w = log p_y((k + u) / L) - D log L, u the guide's draw."""
    model = FlowModel((1, 4, 4), num_levels=16, num_scales=1, num_couplings=2, hidden_channels=4)
    with torch.no_grad():
        for m in model.flow.couplings:
            m.nn.net[-1].weight.normal_(0.0, 0.3)
    x = torch.randint(0, 16, (6, 1, 4, 4)).double() / 15
    out = log_weights(model, UniformDequantizer(), x, 3)
    u = out.guide_trace.nodes["u"]["value"]  # (3, 6, 1, 4, 4)
    y = (torch.round(x * 15) + u) / 16
    expected = model.flow.distribution().log_prob(y) - 16 * math.log(16)
    assert torch.allclose(out.log_w, expected, atol=1e-9)
    s = model.sample(3)
    assert s.shape == (3, 1, 4, 4) and torch.equal(s, torch.round(s * 15) / 15)


def test_flow_model_trains_with_variational_dequantizer_on_digits():
    torch.set_default_dtype(torch.float32)
    data = load_dataset("digits", "train")
    x = data.images[:16]  # (16, 1, 8, 8) on the grid k / 16
    model = FlowModel((1, 8, 8), num_levels=data.levels, num_scales=2, num_couplings=1,
                      hidden_channels=8)
    guide = VariationalDequantizer((1, 8, 8), num_levels=data.levels, autoregressive="affine")
    svi = pyro.infer.SVI(model, guide, pyro.optim.Adam({"lr": 1e-2}), Trace_ELBO())
    first = [svi.step(x) for _ in range(3)]
    for _ in range(8):
        last = svi.step(x)
    assert last < min(first)
    names = list(pyro.get_param_store().keys())
    assert any("couplings" in n for n in names) and any("marginal" in n for n in names)


def test_flow_bad_arguments():
    with pytest.raises(ValueError, match="divisible"):
        PixelFlowDensity((1, 6, 6), num_scales=2)
    with pytest.raises(ValueError, match="alpha"):
        PixelFlowDensity((1, 4, 4), alpha=0.5)
    with pytest.raises(ValueError, match=r"\(C, H, W\)"):
        PixelFlowDensity((4, 4))
    with pytest.raises(ValueError, match="expects x of shape"):
        PixelFlowDensity((1, 4, 4), num_scales=1)(torch.zeros(2, 1, 2, 2))
