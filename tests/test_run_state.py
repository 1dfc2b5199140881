"""Run state: schedules, everything that drives training in the checkpoint (bit-exact
resume for every objective, schedule and data transform), data-keyed caches, seeded running
statistics, gradient clipping over every parameter group, and bad input with one clear
line at once."""

import json
import warnings

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import Trace_ELBO, TraceGraph_ELBO, TraceMeanField_ELBO

from lvm_pyro.data import Binarizer, load_dataset
from lvm_pyro.guides import AmortizedNormalGuide, SigmoidBeliefNetGuide, VQEncoderGuide
from lvm_pyro.inference import (IWAE_ELBO, VIMCO, Capacity_ELBO, CapacitySchedule, FreeBits_ELBO,
                                KLWeighted_ELBO)
from lvm_pyro.inference.score_function import ScoreFunctionGuide
from lvm_pyro.models import (BernoulliLikelihood, GaussianLikelihood, SigmoidBeliefNetModel,
                             VAEModel, VQVAEModel)
from lvm_pyro.models.likelihoods import DiscretizedLogisticLikelihood
from lvm_pyro.nn import MLP, VectorQuantizer, VQConvDecoder, VQConvEncoder
from lvm_pyro.training import Trainer

EVENT = (1, 8, 8)


def digits(n=100):
    return load_dataset("digits", "train").images[:n]


def vae(lik=None, z=2):
    lik = lik or BernoulliLikelihood()
    enc, dec = MLP(EVENT, [16], (2, z)), MLP((z,), [16], (lik.num_params, *EVENT))
    return VAEModel(dec, z, EVENT, lik), AmortizedNormalGuide(enc, z)


def sbn(baselines=False):
    from lvm_pyro.guides import InputBaseline

    dec, enc = MLP((3,), [], (1, *EVENT)), MLP(EVENT, [], (3,))
    base = [InputBaseline(EVENT, (8,))] if baselines else None
    return SigmoidBeliefNetModel(dec, [3], EVENT), SigmoidBeliefNetGuide([enc], [3], base)


def vqvae():
    lik = DiscretizedLogisticLikelihood(num_mixtures=1, num_levels=17)
    q = VectorQuantizer(8, 4, dead_code_threshold=0.5)
    enc = VQConvEncoder(1, 4, channels=8, res_channels=4)
    dec = VQConvDecoder(4, (lik.num_params, *EVENT), channels=8, res_channels=4)
    return VQVAEModel(dec, q, (2, 2), EVENT, lik), VQEncoderGuide(enc, q)


def _warmup(inner):
    from lvm_pyro.inference.schedules import LinearWarmup

    return KLWeighted_ELBO(inner, schedule=LinearWarmup(2.0, 10))


def _cyclical():
    from lvm_pyro.inference.schedules import CyclicalSchedule

    return KLWeighted_ELBO(TraceMeanField_ELBO(max_plate_nesting=1),
                           schedule=CyclicalSchedule(1.0, period=6, ramp_fraction=0.5))


def _score_vae():
    model, guide = vae()
    return model, ScoreFunctionGuide(guide, baseline="decaying_avg")


# name -> (make (model, guide, elbo), binarization); n = 100 points in batches of 30, so
# every epoch ends on a smaller batch of 10
OBJECTIVES = {
    "trace": (lambda: (*vae(), Trace_ELBO(max_plate_nesting=1)), "dynamic"),
    "meanfield_static": (lambda: (*vae(), TraceMeanField_ELBO(max_plate_nesting=1)), "static"),
    "kl_warmup": (lambda: (*vae(), KLWeighted_ELBO(Trace_ELBO(max_plate_nesting=1), beta=1.0,
                                                   kl_warmup_steps=10)), "dynamic"),
    "linear_warmup_schedule": (lambda: (*vae(), _warmup(TraceMeanField_ELBO(max_plate_nesting=1))),
                               "dynamic"),
    "cyclical": (lambda: (*vae(), _cyclical()), "dynamic"),
    "free_bits_warmup": (lambda: (*vae(), _warmup(FreeBits_ELBO(0.5, max_plate_nesting=1))),
                         "dynamic"),
    "capacity": (lambda: (*vae(), Capacity_ELBO(CapacitySchedule(5.0, 10), weight=2.0,
                                                max_plate_nesting=1)), "dynamic"),
    "iwae_dreg": (lambda: (*vae(), IWAE_ELBO(num_particles=3, gradient="dreg")), "dynamic"),
    "dequantize_gaussian": (lambda: (*vae(GaussianLikelihood()), Trace_ELBO(max_plate_nesting=1)),
                            "dequantize"),
    "vimco_sbn": (lambda: (*sbn(), VIMCO(num_particles=3, max_plate_nesting=1)), "dynamic"),
    "nvil_sbn": (lambda: (*sbn(baselines=True), TraceGraph_ELBO(max_plate_nesting=1)), "dynamic"),
    "score_decaying_avg": (lambda: (*_score_vae(), TraceGraph_ELBO(max_plate_nesting=1)), "dynamic"),
    "vqvae_ema_restarts": (lambda: (*vqvae(), Trace_ELBO(max_plate_nesting=1)), "none"),
}


def _state():
    out = {k: v.detach().clone() for k, v in pyro.get_param_store().items()}
    return out


def _fit(make, binarization, path, epochs, resume=False):
    """Fresh objects built from seed 0 (as a new process would), trained to ``epochs``."""
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    model, guide, elbo = make()
    if resume:
        pyro.set_rng_seed(12345)  # a resumed run may not depend on the RNG state it starts in
    t = Trainer(model, guide, elbo, lr=1e-2, batch_size=30, seed=1, progress=False,
                binarization=binarization, checkpoint_path=path, divergence_tolerance=None)
    hist = t.fit(digits(), epochs=epochs, resume=resume)
    buffers = {f"{name}.{k}": v.clone() for name, m in t.modules.items()
               for k, v in m.state_dict().items()}
    return _state(), buffers, [h["loss"] for h in hist]


@pytest.mark.parametrize("name", list(OBJECTIVES))
def test_resume_is_bit_exact_for_every_objective_schedule_and_transform(name, tmp_path):
    make, binarization = OBJECTIVES[name]
    params, buffers, losses = _fit(make, binarization, tmp_path / "a.pt", 3)
    _fit(make, binarization, tmp_path / "b.pt", 1)  # interrupted after one epoch
    params2, buffers2, losses2 = _fit(make, binarization, tmp_path / "b.pt", 3, resume=True)
    assert losses2 == losses
    assert set(params) == set(params2)
    for k in params:
        assert torch.equal(params[k], params2[k]), k
    for k in buffers:
        assert torch.equal(buffers[k], buffers2[k]), k


def test_kl_warmup_resumes_where_it_stopped(tmp_path):
    """The named case: KL warm-up over 10 steps, interrupted after 4 steps (one epoch).
    Before, the resumed objective restarted at beta = 0 and the parameters ended ~5e-3
    away from the uninterrupted run; now they are equal bit for bit."""
    make = lambda: (*vae(), KLWeighted_ELBO(Trace_ELBO(max_plate_nesting=1), beta=1.0,  # noqa: E731
                                            kl_warmup_steps=10))
    params, _, _ = _fit(make, "dynamic", tmp_path / "a.pt", 3)
    _fit(make, "dynamic", tmp_path / "b.pt", 1)
    params2, _, _ = _fit(make, "dynamic", tmp_path / "b.pt", 3, resume=True)
    for k in params:
        assert torch.equal(params[k], params2[k]), k


# -- schedules -------------------------------------------------------------------------
def test_schedules_values_validation_and_json():
    from lvm_pyro.inference.schedules import (ConstantSchedule, CyclicalSchedule, LinearWarmup,
                                              schedule_from_dict, schedule_to_dict)

    assert [ConstantSchedule(0.5)(t) for t in (0, 7, 10**9)] == [0.5, 0.5, 0.5]
    assert [LinearWarmup(2.0, 4)(t) for t in (0, 1, 2, 3, 4, 100)] == [0.0, 0.5, 1.0, 1.5, 2.0, 2.0]
    assert LinearWarmup(3.0, 0)(0) == 3.0
    # Fu et al. 2019: period 8, ramp over the first half: 0, .25, .5, .75, then 1 for
    # four steps, then the next cycle starts again at 0
    c = CyclicalSchedule(1.0, period=8, ramp_fraction=0.5)
    assert [c(t) for t in range(10)] == [0.0, 0.25, 0.5, 0.75, 1.0, 1.0, 1.0, 1.0, 0.0, 0.25]
    assert CyclicalSchedule(2.0, period=4, ramp_fraction=1.0)(3) == 1.5
    for s in (ConstantSchedule(0.5), LinearWarmup(2.0, 4), c):
        d = schedule_to_dict(s)
        assert schedule_from_dict(json.loads(json.dumps(d))) == s
    with pytest.raises(ValueError, match="warmup_steps"):
        LinearWarmup(1.0, -1)
    with pytest.raises(ValueError, match="value"):
        ConstantSchedule(-0.1)
    with pytest.raises(ValueError, match="ramp_fraction"):
        CyclicalSchedule(1.0, 10, 0.0)
    with pytest.raises(ValueError, match="period"):
        CyclicalSchedule(1.0, 0, 0.5)
    with pytest.raises(ValueError, match="unknown schedule"):
        schedule_from_dict({"type": "Sideways"})
    with pytest.raises(dataclasses_frozen_error()):
        c.period = 3  # frozen: a schedule is never changed after construction


def dataclasses_frozen_error():
    import dataclasses

    return dataclasses.FrozenInstanceError


def test_kl_weighted_elbo_takes_its_schedule_at_construction():
    from lvm_pyro.inference.schedules import ConstantSchedule, LinearWarmup

    e = KLWeighted_ELBO(Trace_ELBO(), beta=2.0)
    assert e.schedule == ConstantSchedule(2.0) and e.current_beta == 2.0
    e = KLWeighted_ELBO(Trace_ELBO(), beta=2.0, kl_warmup_steps=4)
    assert e.schedule == LinearWarmup(2.0, 4) and (e.beta, e.kl_warmup_steps) == (2.0, 4)
    with pytest.raises(ValueError, match="either schedule"):
        KLWeighted_ELBO(Trace_ELBO(), beta=2.0, schedule=ConstantSchedule(1.0))
    with pytest.raises(ValueError, match="Schedule"):
        KLWeighted_ELBO(Trace_ELBO(), schedule=lambda t: 1.0)
    e.step = 3
    state = e.state_dict()
    assert state["step"] == 3 and json.dumps(state["schedule"])
    other = KLWeighted_ELBO(Trace_ELBO(), schedule=LinearWarmup(2.0, 4))
    other.load_state_dict(state)
    assert other.current_beta == 1.5
    with pytest.raises(ValueError, match="same schedule"):
        KLWeighted_ELBO(Trace_ELBO(), schedule=LinearWarmup(2.0, 5)).load_state_dict(state)


# -- caches and running statistics ------------------------------------------------------
def test_static_binarization_is_keyed_on_the_data():
    p = torch.full((50, 1, 4, 4), 0.5)
    b = Binarizer("static", seed=1)
    first = b(p)
    assert torch.equal(b(p), first)  # the same data: the same fixed draw
    zeros = torch.zeros_like(p)  # same shape, other data: its own bits (all zero)
    assert torch.equal(b(zeros), zeros)
    assert torch.equal(b(p.clone()), first)  # equal data: the same draw
    ones = p.clone()
    b(ones)
    ones.fill_(1.0)  # modified in place after the draw
    assert torch.equal(b(ones), torch.ones_like(p))


def test_second_fit_on_new_data_of_the_same_size_binarises_the_new_data():
    model, guide = vae()
    t = Trainer(model, guide, Trace_ELBO(max_plate_nesting=1), batch_size=50, progress=False,
                binarization="static")
    x1 = digits(100)
    t.fit(x1, epochs=1)
    seen = []
    transform = t.transform
    t.transform = lambda x: seen.append(transform(x)) or seen[-1]
    x2 = torch.zeros_like(x1)
    t.fit(x2, epochs=2)
    assert torch.equal(seen[-1], x2)


def test_quantizer_first_dead_code_check_is_seeded_with_the_first_counts():
    """kmeans_init=False: the usage average starts at the first step's counts, so a code
    used 10 times in that step is not 'dead' (before: 0.01 * 10 < threshold 1, restarted)."""
    q = VectorQuantizer(4, 2, kmeans_init=False, dead_code_threshold=1.0, auto_update=False)
    q.train()
    z = q.codebook[0].detach().expand(10, 2).clone().requires_grad_(True)
    out = q(z)
    assert bool((out.indices == 0).all())
    kept = q.codebook[0].clone()
    restarted = q.update()
    assert restarted == 3  # the three unused codes, not code 0
    assert float(q.usage_ema[0]) == 10.0
    # code 0 moved only by its EMA step towards its assigned vectors (themselves)
    assert torch.allclose(q.codebook[0], kept, atol=1e-6)


def test_gradient_clipping_covers_every_parameter_group():
    calls = {"n": 0}

    def model(x):
        calls["n"] += 1
        w = pyro.param("w", torch.tensor(0.0))
        loc = w
        if calls["n"] > 1:  # a parameter that appears only after the discovery pass
            loc = loc + pyro.param("late", torch.tensor(0.0))
        with pyro.plate("data", len(x)):
            pyro.sample("x", dist.Normal(loc, 1.0), obs=x)

    norms, groups = [], []

    def record(opt, args, kwargs):
        grads = [p.grad for g in opt.param_groups for p in g["params"] if p.grad is not None]
        norms.append(float(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads]))))
        groups.append(len(opt.param_groups))

    from torch.optim.optimizer import register_optimizer_step_pre_hook

    handle = register_optimizer_step_pre_hook(record)
    try:
        Trainer(model, lambda x: None, Trace_ELBO(), lr=0.1, batch_size=10, binarization="none",
                progress=False, clip_norm=0.01).fit(torch.full((20,), 50.0), epochs=1)
    finally:
        handle.remove()
    assert groups[-1] == 2
    assert max(norms) <= 0.01 * (1 + 1e-5)


# -- bad input: one clear line at once ---------------------------------------------------
def _trainer(**kw):
    model, guide = vae()
    kw.setdefault("batch_size", 50)
    return Trainer(model, guide, Trace_ELBO(max_plate_nesting=1), progress=False, **kw)


def test_empty_data_is_refused():
    with pytest.raises(ValueError, match="empty"):
        _trainer().fit(digits()[:0], epochs=1)


def test_float64_data_is_one_clear_error_and_integer_data_is_refused():
    """float64 pixels for float32 networks: one line naming the fix (never a silent cast,
    never torch's 'mat1 and mat2 must have the same dtype'); integer pixels: refused."""
    x = digits(100)
    with pytest.raises(ValueError, match="x is torch.float64 but the .*parameters are torch.float32"):
        _trainer(seed=2).fit(x.double(), epochs=1)
    with pytest.raises(ValueError, match="dtype torch.uint8"):
        _trainer().fit((x * 16).to(torch.uint8), epochs=1)


def test_nan_pixel_with_dynamic_binarisation_names_nan():
    x = digits(100).clone()
    x[3, 0, 2, 5] = float("nan")
    with pytest.raises(ValueError, match="NaN.*index \\(3, 0, 2, 5\\)"):
        _trainer(binarization="dynamic").fit(x, epochs=1)


def test_decaying_average_baseline_on_a_data_set_not_a_multiple_of_the_batch():
    model, guide = _score_vae()
    t = Trainer(model, guide, TraceGraph_ELBO(max_plate_nesting=1), batch_size=30,
                progress=False)
    hist = t.fit(digits(100), epochs=2)  # batches 30, 30, 30, 10
    assert len(hist) == 2
    avg = pyro.get_param_store()["__baseline_avg_downstream_cost_z"]
    assert avg.shape == (10,) and bool(torch.isfinite(avg).all())


def test_diverging_training_warns_and_a_healthy_run_does_not():
    from lvm_pyro.training.loop import DivergenceWarning, loss_rose

    assert loss_rose([3.0, 3.1, 2.9], [9.0, 9.2, 8.8], 0.5)
    lr10 = [46.0, 1281.3, 27045.8, 2177.2, 6069.2, 6498.1, 3145.1, 1728.9, 2705.0, 4106.8, 2962.9,
            5796.8, 2816.0, 3211.8, 3315.9]  # first epoch at lr = 10 (digits, batch 100)
    assert loss_rose(lr10[:1], lr10, 0.5)
    assert not loss_rose([3.0, 3.1, 2.9], [3.05, 3.1, 4.0], 0.5)  # within the tolerance
    assert not loss_rose([0.01, 0.02], [0.03, 0.05, -0.02, 0.06, 0.0], 0.5)  # within the noise
    assert not loss_rose([3.0], [9.0], 0.5)  # one step: cannot tell
    x = digits(1500)
    with pytest.warns(DivergenceWarning, match="rose for a whole epoch.*lower the learning rate"):
        _trainer(lr=10.0, batch_size=100).fit(x, epochs=1)
    pyro.clear_param_store()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _trainer(lr=1e-2, batch_size=100).fit(x, epochs=4)


@pytest.mark.slow  # three CLI runs with evaluation and pictures (~30 s)
def test_cli_resume_continues_the_kl_warmup_exactly(tmp_path):
    """The same through the command line: 2 epochs at once, or 1 then --resume to 2."""
    from lvm_pyro.cli import main

    args = ["fit", "--no-progress", "--num-samples", "2", "--num-test", "5", "--z-dim", "2",
            "--hidden-dim", "8", "--num-hidden", "1", "--kl-warmup", "20", "--batch-size", "100"]
    assert main(args + ["--out", str(tmp_path / "a"), "--epochs", "2"]) == 0
    assert main(args + ["--out", str(tmp_path / "b"), "--epochs", "1"]) == 0
    assert main(args + ["--out", str(tmp_path / "b"), "--epochs", "2", "--resume"]) == 0
    a = torch.load(tmp_path / "a" / "checkpoint.pt", weights_only=True)
    b = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=True)
    assert a["objective"]["step"] == b["objective"]["step"] == 30  # 1500 digits / 100, twice
    for k in a["params"]:
        assert torch.equal(a["params"][k], b["params"][k]), k


def test_checkpoint_from_before_data_transforms_still_resumes(tmp_path):
    """A checkpoint that kept the binariser's generator under rng/binarizer (no
    'transform' entry) resumes exactly as well."""
    from lvm_pyro.training.checkpoint import load_checkpoint, save_checkpoint

    make, binarization = OBJECTIVES["trace"]
    params, _, _ = _fit(make, binarization, tmp_path / "a.pt", 2)
    _fit(make, binarization, tmp_path / "b.pt", 1)
    payload = load_checkpoint(tmp_path / "b.pt")
    legacy = {k: v for k, v in payload.items() if k not in ("format", "transform")}
    legacy["rng"] = {**payload["rng"], "binarizer": payload["transform"]["generator"]}
    save_checkpoint(tmp_path / "b.pt", legacy)
    params2, _, _ = _fit(make, binarization, tmp_path / "b.pt", 2, resume=True)
    for k in params:
        assert torch.equal(params[k], params2[k]), k


def test_no_divergence_warning_while_the_kl_weight_changes():
    """A KL warm-up raises the loss by design: the check compares only steps with one
    weight; once the weight is constant, a diverging run warns again."""
    from lvm_pyro.training.loop import DivergenceWarning

    x = digits(1500)
    model, guide = vae()
    warm = KLWeighted_ELBO(Trace_ELBO(max_plate_nesting=1), beta=1.0, kl_warmup_steps=10**6)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Trainer(model, guide, warm, lr=10.0, batch_size=100, progress=False).fit(x, epochs=2)
    pyro.clear_param_store()
    model, guide = vae()
    const = KLWeighted_ELBO(Trace_ELBO(max_plate_nesting=1), beta=1.0)
    with pytest.warns(DivergenceWarning):
        Trainer(model, guide, const, lr=10.0, batch_size=100, progress=False).fit(x, epochs=1)
