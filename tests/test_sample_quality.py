"""Classifier-based rejection (acceptance rate against a stub classifier of known
probabilities, within a binomial tolerance) and improved precision / recall on point sets
whose answers are known."""

import math

import numpy as np
import pytest
import torch

from lvm_pyro.diagnostics import class_coverage, classifier_rejection, precision_recall


class _StubClassifier(torch.nn.Module):
    """Each 'sample' is a number q in (0, 1): the classifier gives its intended class
    (label 1 of two) probability exactly q, i.e. logits (0, logit(q))."""

    def forward(self, x):
        q = x[:, 0].double()
        return torch.stack([torch.zeros_like(q), torch.log(q) - torch.log1p(-q)], dim=-1)


@pytest.mark.parametrize("threshold", [0.0, 0.5, 0.9])
def test_acceptance_rate_matches_the_known_probabilities(threshold):
    """q ~ Beta(2, 1) (density 2q): P(q >= t) = 1 - t^2; the kept fraction of n draws lies
    within 4 binomial standard deviations of it."""
    n = 20000
    g = torch.Generator().manual_seed(0)
    q = torch.rand(n, generator=g, dtype=torch.float64).sqrt().clamp(1e-9, 1 - 1e-9)
    res = classifier_rejection(q[:, None], torch.ones(n, dtype=torch.long), _StubClassifier(),
                               threshold=threshold, batch_size=3000)
    assert torch.allclose(res.probability, q, atol=1e-12)
    expected = 1 - threshold ** 2
    sd = math.sqrt(expected * (1 - expected) / n)
    assert abs(res.acceptance_rate - expected) <= 4 * sd + 1e-12
    assert torch.equal(res.keep, q >= threshold)


def test_keep_fraction_keeps_the_most_confident():
    q = torch.tensor([0.2, 0.9, 0.5, 0.7, 0.1], dtype=torch.float64)
    res = classifier_rejection(q[:, None], torch.ones(5, dtype=torch.long), _StubClassifier(),
                               keep_fraction=0.4)
    assert res.keep.tolist() == [False, True, False, True, False]
    assert res.acceptance_rate == pytest.approx(0.4)
    assert classifier_rejection(q[:, None], torch.ones(5, dtype=torch.long),
                                _StubClassifier()).acceptance_rate == 1.0


def test_threshold_keeps_probabilities_equal_to_it():
    """The kept set is p >= threshold: a sample at exactly the threshold is kept, so
    threshold 0 keeps all and threshold 1 keeps only p == 1."""
    q = torch.tensor([0.25, 0.5, 0.75], dtype=torch.float64)
    res = classifier_rejection(q[:, None], torch.ones(3, dtype=torch.long), _StubClassifier(),
                               threshold=0.5)
    assert res.keep.tolist() == [False, True, True]
    sure = classifier_rejection(q[:, None], torch.ones(3, dtype=torch.long), _StubClassifier(),
                                threshold=1.0)
    assert sure.keep.tolist() == [False, False, False] and sure.acceptance_rate == 0.0


def test_rejection_errors():
    x, y = torch.full((3, 1), 0.5), torch.ones(3, dtype=torch.long)
    with pytest.raises(ValueError, match="not both"):
        classifier_rejection(x, y, _StubClassifier(), threshold=0.5, keep_fraction=0.5)
    with pytest.raises(ValueError, match="threshold"):
        classifier_rejection(x, y, _StubClassifier(), threshold=1.5)
    with pytest.raises(ValueError, match="labels must"):
        classifier_rejection(x, torch.full((3,), 2), _StubClassifier())


def test_precision_recall_on_known_sets():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(200, 5))
    assert precision_recall(a, a.copy()) == (1.0, 1.0)  # identical sets
    far = a + 1000.0
    assert precision_recall(a, far) == (0.0, 0.0)  # disjoint, far apart
    # generated = one of two far clusters of the real set: every generated point is real
    # (precision 1), half the real points (the other cluster) are missed (recall 1/2)
    real = np.concatenate([a, far])
    pr = precision_recall(torch.from_numpy(real), torch.from_numpy(a))
    assert pr.precision == 1.0 and pr.recall == 0.5


def test_precision_recall_errors():
    a = np.zeros((5, 2))
    with pytest.raises(ValueError, match="same dimension"):
        precision_recall(a, np.zeros((5, 3)))
    with pytest.raises(ValueError, match="more than k"):
        precision_recall(a, np.zeros((3, 2)), k=3)
    with pytest.raises(ValueError, match="\\(n, d\\)"):
        precision_recall(np.zeros(5), a)


def test_class_coverage():
    intended = torch.tensor([0, 0, 1, 1, 1, 2])
    predicted = torch.tensor([0, 1, 1, 1, 0, 0])
    cov = class_coverage(predicted, intended, 4)
    assert cov[:3].tolist() == [0.5, pytest.approx(2 / 3), 0.0] and math.isnan(cov[3])
    with pytest.raises(ValueError, match="labels"):
        class_coverage(torch.tensor([5]), torch.tensor([0]), 4)
