"""The models' and guides' data checks: once per epoch on the whole training set inside
the Trainer (before any step), on every call everywhere else (lvm_pyro.checks)."""

import pyro
import pytest
import torch
from pyro.infer import Trace_ELBO

from lvm_pyro.checks import data_checks_enabled, skip_data_checks, validate_data
from lvm_pyro.guides import AmortizedNormalGuide
from lvm_pyro.inference import IWAE_ELBO
from lvm_pyro.models import BernoulliLikelihood, GaussianLikelihood, VAEModel
from lvm_pyro.nn import MLP
from lvm_pyro.training import Trainer

EVENT = (1, 4, 4)


def vae(lik):
    return (VAEModel(MLP((2,), [8], (lik.num_params, *EVENT)), 2, EVENT, lik),
            AmortizedNormalGuide(MLP(EVENT, [8], (2, 2)), 2))


def trainer(model, guide, elbo=None, **kw):
    pyro.clear_param_store()
    return Trainer(model, guide, elbo or Trace_ELBO(), lr=1e-2, batch_size=50, seed=0,
                   progress=False, divergence_tolerance=None, **kw)


def bits(n=200):
    return torch.bernoulli(torch.full((n, *EVENT), 0.3), generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("lik, bad, message", [
    (GaussianLikelihood(), float("nan"), "site 'x': the guide's input contains NaN"),
    (BernoulliLikelihood(), 0.5, "site 'x'.*Bernoulli likelihood needs binary data"),
])
@pytest.mark.parametrize("elbo", [Trace_ELBO, lambda: IWAE_ELBO(num_particles=3)])
def test_bad_rows_anywhere_fail_fit_before_any_step(lik, bad, message, elbo):
    x = bits()
    for row in (60, 199):  # outside the discovery batch (rows 0-49), in later minibatches
        x[row, 0, 1, 2] = bad
        model, guide = vae(lik)
        t = trainer(model, guide, elbo(), binarization="none")
        before = {k: v.detach().clone() for k, v in pyro.get_param_store().items()}
        with pytest.raises(ValueError, match=message):
            t.fit(x, 2)
        assert t.step == 0  # refused before the first optimiser step
        after = dict(pyro.get_param_store().items())
        assert all(torch.equal(v, after[k]) for k, v in before.items())
        x[row, 0, 1, 2] = 0.0


def test_direct_calls_still_check_after_training():
    model, guide = vae(GaussianLikelihood())
    trainer(model, guide, binarization="none").fit(bits(), 1)
    assert data_checks_enabled()
    nan = torch.full((3, *EVENT), float("nan"))
    with pytest.raises(ValueError, match="NaN"):
        model(nan)
    with pytest.raises(ValueError, match="site 'x'.*NaN"):
        loc, _ = guide.loc_scale(nan)  # no check: NaN flows through
        assert bool(torch.isnan(loc).all())
    bmodel, _ = vae(BernoulliLikelihood())
    with pytest.raises(ValueError, match="[Bb]inaris"):
        bmodel(torch.full((3, *EVENT), 0.5))


def test_skip_switch_is_explicit_scoped_and_nestable():
    model, guide = vae(GaussianLikelihood())
    nan = torch.full((3, *EVENT), float("nan"))
    with skip_data_checks():
        with skip_data_checks():
            model(nan)  # no check: the caller vouched for the data
        assert not data_checks_enabled()
        loc, _ = guide.loc_scale(nan)  # no check: NaN flows through
        assert bool(torch.isnan(loc).all())
    assert data_checks_enabled()
    with pytest.raises(ValueError, match="NaN"):
        model(nan)
    with pytest.raises(ValueError, match="NaN"):  # check_data ignores the switch
        with skip_data_checks():
            model.check_data(nan)
    assert validate_data((model, guide), bits(4)) is True
    assert validate_data((model, lambda x: None), bits(4)) is False


def _count_checks(monkeypatch):
    calls = {"model": 0, "guide": 0}
    model_check, guide_check = VAEModel.check_data, AmortizedNormalGuide.check_data

    def counted_model(self, x):
        calls["model"] += 1
        return model_check(self, x)

    def counted_guide(self, x):
        calls["guide"] += 1
        return guide_check(self, x)

    monkeypatch.setattr(VAEModel, "check_data", counted_model)
    monkeypatch.setattr(AmortizedNormalGuide, "check_data", counted_guide)
    return calls


def test_steps_run_without_per_batch_checks(monkeypatch):
    calls = _count_checks(monkeypatch)
    model, guide = vae(BernoulliLikelihood())
    t = trainer(model, guide)
    t.fit(bits(), 2)
    assert t.step == 8
    # one discovery pass (checked) + one whole-set check per epoch; none per step
    assert calls == {"model": 3, "guide": 3}


def test_program_without_check_data_keeps_per_step_checks(monkeypatch):
    calls = _count_checks(monkeypatch)
    model, guide = vae(BernoulliLikelihood())

    def wrapped(x, *, num_data=None, idx=None):  # a user's program: no check_data
        return model(x, num_data=num_data, idx=idx)

    t = trainer(wrapped, guide, modules={"model": model, "guide": guide})
    t.fit(bits(), 2)
    # every step checks (the discovery pass may trace a plain function more than once)
    assert calls["model"] >= 1 + 8 and calls["guide"] >= 1 + 8, calls


def test_sbn_checks_once_per_epoch_and_direct_calls_still_check(monkeypatch):
    from lvm_pyro.guides import SigmoidBeliefNetGuide
    from lvm_pyro.models import SigmoidBeliefNetModel

    def sbn():
        torch.manual_seed(0)
        return (SigmoidBeliefNetModel(MLP((3,), (), (1, *EVENT)), [3], EVENT, []),
                SigmoidBeliefNetGuide([MLP(EVENT, (), (3,))], [3]))

    x = bits()
    x[120, 0, 0, 0] = 0.5
    model, guide = sbn()
    t = trainer(model, guide, binarization="none")
    with pytest.raises(ValueError, match="site 'x'.*Bernoulli likelihood needs binary data"):
        t.fit(x, 1)
    assert t.step == 0
    with pytest.raises(ValueError, match="[Bb]inaris"):
        model(x[100:130])
    calls = {"n": 0}
    check = SigmoidBeliefNetModel.check_data

    def counted(self, data):
        calls["n"] += 1
        return check(self, data)

    monkeypatch.setattr(SigmoidBeliefNetModel, "check_data", counted)
    x[120, 0, 0, 0] = 1.0
    model, guide = sbn()
    t = trainer(model, guide, binarization="none")
    t.fit(x, 2)
    assert t.step == 8 and calls["n"] == 1 + 2  # discovery + one per epoch, none per step


def test_validate_data_in_chunks_finds_a_bad_last_row():
    model, guide = vae(GaussianLikelihood())
    x = bits(10)
    x[9, 0, 3, 3] = float("inf")
    for max_elements in (1, 16, 17, 100, 10 ** 6):  # 1 row, 1 row, 1 row, 6 rows, all
        with pytest.raises(ValueError, match="NaN or infinite"):
            validate_data((model, guide), x, max_elements=max_elements)
    x[9, 0, 3, 3] = 0.0
    assert validate_data((model, guide), x, max_elements=17) is True
    with pytest.raises(ValueError, match="max_elements"):
        validate_data((model, guide), x, max_elements=0)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_all_finite_agrees_with_isfinite(bad, dtype):
    from lvm_pyro.checks import all_finite

    x = torch.rand(7, 5, dtype=torch.float64).to(dtype)
    assert all_finite(x) is True
    for i in (0, 17, 34):  # first, middle, last entry
        y = x.clone()
        y.view(-1)[i] = bad
        assert all_finite(y) is False
        assert not bool(torch.isfinite(y).all())
    assert all_finite(torch.arange(5)) is True
    assert all_finite(torch.empty(0, 3, dtype=dtype)) is True
