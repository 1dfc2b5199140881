"""VectorQuantizer: lookup identity, hand-computed straight-through and loss gradients,
EMA only in training and once per optimiser step, dead-code restarts, perplexity,
k-means initialisation."""

import math

import pyro
import pytest
import torch
from pyro.infer import Trace_ELBO

from lvm_pyro.guides import VQEncoderGuide
from lvm_pyro.models import DiscretizedLogisticLikelihood, VQVAEModel
from lvm_pyro.nn import VectorQuantizer, codebook_usage
from lvm_pyro.nn.quantizer import perplexity


def _quantizer(codebook, **kw):
    k, d = codebook.shape
    q = VectorQuantizer(k, d, kmeans_init=False, **kw).double()
    with torch.no_grad():
        q.codebook.copy_(codebook)
        if q.uses_ema:
            q.ema_embed_sum.copy_(codebook)  # cluster sizes start at 1
    return q


def _step(params=None):
    """One optimiser step of an unrelated torch optimiser (fires the post-step hook)."""
    p = torch.nn.Parameter(torch.zeros(1)) if params is None else params
    opt = torch.optim.SGD([p], lr=0.1)
    p.grad = torch.ones_like(p)
    opt.step()


@pytest.mark.parametrize("decay", [None, 0.9])
def test_eval_output_is_codebook_lookup_of_indices(decay):
    torch.manual_seed(0)
    q = VectorQuantizer(32, 6, decay=decay).eval()
    z = torch.randn(4, 6, 5, 7)  # (batch, D, H, W)
    out = q(z)
    assert out.indices.shape == (4, 5, 7) and out.indices.dtype == torch.int64
    assert torch.equal(out.quantized, q.codebook[out.indices].movedim(-1, -3))
    d = ((z.movedim(1, -1)[..., None, :] - q.codebook) ** 2).sum(-1)  # (4, 5, 7, K)
    assert torch.equal(out.indices, d.argmin(-1))
    flat = torch.randn(50, 6)
    out2 = q(flat)
    assert out2.indices.shape == (50,) and torch.equal(out2.quantized, q.codebook[out2.indices])
    assert out2.losses.commitment.shape == (50,)


def test_straight_through_and_loss_gradients_by_hand():
    # codebook rows: e0 = (1, 0), e1 = (-1, 0), e2 = (0, 5) (never chosen)
    q = _quantizer(torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 5.0]], dtype=torch.float64),
                   decay=None, commitment_weight=0.25)
    z = torch.tensor([[0.9, 0.1], [-1.2, 0.3]], dtype=torch.float64, requires_grad=True)
    w = torch.tensor([[1.0, 2.0], [3.0, 4.0]], dtype=torch.float64)
    out = q(z)
    assert out.indices.tolist() == [0, 1]
    # codebook loss ||sg z - e||^2: 0.01 + 0.01, 0.04 + 0.09; commitment 0.25 x the same
    assert torch.allclose(out.losses.codebook, torch.tensor([0.02, 0.13], dtype=torch.float64))
    assert torch.allclose(out.losses.commitment, 0.25 * torch.tensor([0.02, 0.13], dtype=torch.float64))
    total = (w * out.quantized).sum() + out.losses.codebook.sum() + out.losses.commitment.sum()
    total.backward()
    # encoder: decoder gradient w copied straight through + 2 beta (z - e)
    assert torch.allclose(z.grad, torch.tensor([[0.95, 2.05], [2.9, 4.15]], dtype=torch.float64))
    # codebook: only the codebook loss, 2 (e - z) on used rows, nothing on the unused row
    assert torch.allclose(q.codebook.grad, torch.tensor([[0.2, -0.2], [0.4, -0.6], [0.0, 0.0]],
                                                        dtype=torch.float64))


def test_ema_codebook_gets_no_gradient_and_zero_codebook_loss():
    q = _quantizer(torch.tensor([[1.0, 0.0], [-1.0, 0.0]], dtype=torch.float64), decay=0.9)
    z = torch.tensor([[0.9, 0.1]], dtype=torch.float64, requires_grad=True)
    out = q(z)
    assert not q.codebook.requires_grad and float(out.losses.codebook.sum()) == 0.0
    (out.quantized.sum() + out.losses.commitment.sum()).backward()
    assert torch.allclose(z.grad, torch.tensor([[1.0 - 0.05, 1.0 + 0.05]], dtype=torch.float64))
    q.discard_pending()


def test_ema_update_by_hand_once_per_step():
    q = _quantizer(torch.tensor([[0.0], [2.0]], dtype=torch.float64), decay=0.5, epsilon=1e-5)
    z = torch.tensor([[0.0], [0.2], [3.0]], dtype=torch.float64)  # -> codes 0, 0, 1
    q(z)
    q(z)  # two forward passes (e.g. two non-vectorised particles) before one step
    assert q.has_pending
    _step()
    assert not q.has_pending and int(q.num_updates) == 1
    size = 0.5 * torch.tensor([1.0, 1.0]) + 0.5 * torch.tensor([2.0, 1.0])  # counts averaged
    embed = 0.5 * torch.tensor([0.0, 2.0]) + 0.5 * torch.tensor([0.2, 3.0])
    n = size.sum()
    smoothed = (size + 1e-5) / (n + 2 * 1e-5) * n
    assert torch.allclose(q.codebook.squeeze(1), (embed / smoothed).double())
    before = q.codebook.clone()
    _step()  # a step without a training forward pass changes nothing
    assert torch.equal(q.codebook, before) and int(q.num_updates) == 1


def test_no_statistics_in_eval_mode_or_without_gradients():
    q = _quantizer(torch.tensor([[0.0], [2.0]], dtype=torch.float64), decay=0.5)
    z = torch.tensor([[0.3], [3.0]], dtype=torch.float64)
    before = q.codebook.clone()
    q.eval()
    q(z)
    q.train()
    with torch.no_grad():
        q(z)
    assert not q.has_pending
    _step()
    assert torch.equal(q.codebook, before) and int(q.num_updates) == 0


def test_manual_update_when_auto_update_is_off():
    q = _quantizer(torch.tensor([[0.0], [2.0]], dtype=torch.float64), decay=0.5, auto_update=False)
    q(torch.tensor([[0.3], [3.0]], dtype=torch.float64))
    _step()
    assert q.has_pending and int(q.num_updates) == 0
    q.update()
    assert not q.has_pending and int(q.num_updates) == 1


def _tiny_vqvae(decay=0.9):
    torch.manual_seed(0)
    lik = DiscretizedLogisticLikelihood()
    q = VectorQuantizer(8, 3, decay=decay, kmeans_init=False)
    enc = torch.nn.Conv2d(1, 3, 4, 4)  # (B, 1, 8, 8) -> (B, 3, 2, 2)
    dec = torch.nn.Sequential(torch.nn.Upsample(scale_factor=4),
                              torch.nn.Conv2d(3, 2, 3, padding=1),
                              torch.nn.Unflatten(-3, (2, 1)))

    class Dec(torch.nn.Module):  # accept leading particle dims
        def __init__(self):
            super().__init__()
            self.net = dec

        def forward(self, z):
            return self.net(z.reshape(-1, *z.shape[-3:])).reshape(*z.shape[:-3], 2, 1, 8, 8)

    model = VQVAEModel(Dec(), q, (2, 2), (1, 8, 8), lik)
    guide = VQEncoderGuide(enc, q)
    x = torch.randint(0, 256, (6, 1, 8, 8)).float() / 255
    return model, guide, q, x


@pytest.mark.parametrize("num_particles,vectorize", [(1, False), (3, True), (3, False)])
def test_one_ema_update_per_step_whatever_the_particles(num_particles, vectorize):
    model, guide, q, x = _tiny_vqvae()
    ref_model, ref_guide, ref_q, _ = _tiny_vqvae()
    elbo = Trace_ELBO(num_particles=num_particles, vectorize_particles=vectorize,
                      max_plate_nesting=1)
    elbo.loss_and_grads(model, guide, x)
    Trace_ELBO(max_plate_nesting=1).loss_and_grads(ref_model, ref_guide, x)
    _step()
    assert int(q.num_updates) == 1
    assert torch.allclose(q.codebook, ref_q.codebook, atol=1e-6)


def test_dead_code_restart_touches_only_dead_codes():
    torch.manual_seed(1)
    codebook = torch.randn(6, 2, dtype=torch.float64)
    q = _quantizer(codebook, decay=None, dead_code_threshold=1.0, auto_update=False)
    with torch.no_grad():
        q.usage_ema.copy_(torch.tensor([5.0, 0.0, 5.0, 0.0, 5.0, 5.0]))
    z = codebook[[0, 2, 4, 5, 0]] + 0.01  # uses codes 0, 2, 4, 5 only
    q(z)
    assert q.update() == 2
    live, dead = [0, 2, 4, 5], [1, 3]
    assert torch.equal(q.codebook[live], codebook[live])
    for k in dead:  # moved onto an encoder output of the batch
        assert ((z - q.codebook[k]).abs().sum(1) == 0).any()
    assert torch.allclose(q.usage_ema[dead], torch.tensor([1.0, 1.0], dtype=q.usage_ema.dtype))
    assert int(q.epoch_restarts) == 2


def test_dead_code_restart_with_ema_leaves_live_codes_to_the_ema():
    torch.manual_seed(2)
    codebook = torch.randn(6, 2, dtype=torch.float64)
    z = codebook[[0, 2, 4, 5, 0]] + 0.01
    results = []
    for threshold in (0.0, 1.0):
        q = _quantizer(codebook, decay=0.9, dead_code_threshold=threshold, auto_update=False)
        with torch.no_grad():
            q.usage_ema.copy_(torch.tensor([5.0, 0.0, 5.0, 0.0, 5.0, 5.0]))
        q(z)
        q.update()
        results.append(q.codebook.clone())
    live = [0, 2, 4, 5]
    assert torch.equal(results[0][live], results[1][live])
    assert not torch.equal(results[0][[1, 3]], results[1][[1, 3]])


def test_perplexity_on_known_index_sets():
    u = codebook_usage(torch.tensor([3, 3, 3]), 5)
    assert u.perplexity == pytest.approx(1.0) and u.dead_codes == 4 and u.used_codes == 1
    u = codebook_usage(torch.tensor([0, 1, 2, 3] * 2), 8)
    assert u.perplexity == pytest.approx(4.0) and u.dead_codes == 4
    u = codebook_usage(torch.tensor([0, 0, 1, 2]), 3)  # p = (1/2, 1/4, 1/4): 2^1.5
    assert u.perplexity == pytest.approx(2 ** 1.5)
    assert float(perplexity(torch.zeros(4))) == 1.0
    with pytest.raises(ValueError, match="indices must lie"):
        codebook_usage(torch.tensor([5]), 5)
    q = _quantizer(torch.tensor([[0.0], [1.0], [2.0], [3.0]], dtype=torch.float64), decay=None)
    out = q.eval()(torch.tensor([[0.0], [0.1], [1.0], [2.9]], dtype=torch.float64))
    assert float(out.perplexity) == pytest.approx(2 ** 1.5)


def test_epoch_usage_summary_counts_training_steps_and_resets():
    q = _quantizer(torch.tensor([[0.0], [1.0], [2.0], [3.0]], dtype=torch.float64), decay=None)
    q(torch.tensor([[0.0], [1.0]], dtype=torch.float64))
    _step()
    q(torch.tensor([[0.0], [1.1]], dtype=torch.float64))
    _step()
    u = q.usage_summary(reset=True)
    assert u.dead_codes == 2 and u.perplexity == pytest.approx(2.0) and u.num_vectors == 4
    assert q.usage_summary().num_vectors == 0


def test_kmeans_initialisation_on_first_training_batch():
    torch.manual_seed(3)
    centres = torch.tensor([[-5.0, 0.0], [0.0, 5.0], [5.0, 0.0]])
    z = (centres[torch.arange(300) % 3] + 0.1 * torch.randn(300, 2))
    q = VectorQuantizer(3, 2, decay=0.99, kmeans_iters=20)
    q.eval()(z)
    assert not bool(q.initialized)  # evaluation does not initialise
    q.train()(z)
    assert bool(q.initialized)
    got = q.codebook[q.codebook[:, 0].argsort()]
    assert torch.allclose(got, centres[centres[:, 0].argsort()], atol=0.05)
    q.discard_pending()


def test_load_state_dict_discards_pending_statistics():
    q = _quantizer(torch.tensor([[0.0], [2.0]], dtype=torch.float64), decay=0.5)
    state = {k: v.clone() for k, v in q.state_dict().items()}
    q(torch.tensor([[0.3]], dtype=torch.float64))
    q.load_state_dict(state)
    assert not q.has_pending


def test_constructor_and_input_validation():
    for kw, msg in [({"codebook_size": 0}, "codebook_size"), ({"embedding_dim": 0}, "embedding_dim"),
                    ({"decay": 1.0}, "decay"), ({"commitment_weight": -1}, "commitment_weight"),
                    ({"dead_code_threshold": -1}, "dead_code_threshold")]:
        args = {"codebook_size": 4, "embedding_dim": 2, **kw}
        with pytest.raises(ValueError, match=msg):
            VectorQuantizer(**args)
    q = VectorQuantizer(4, 2)
    with pytest.raises(ValueError, match="expects"):
        q(torch.randn(3, 5))
    with pytest.raises(ValueError, match="expects"):
        q(torch.randn(2, 2, 3))  # ambiguous 3-D input
    assert math.isfinite(q.epsilon)
    pyro.clear_param_store()
