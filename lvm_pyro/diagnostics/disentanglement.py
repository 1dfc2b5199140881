"""Supervised disentanglement metrics of a representation against known generative factors,
with the definitions and default settings of disentanglement_lib (Locatello et al. 2019,
``evaluation/metrics``), computed from a finite table of (code, factor) rows.

The metrics (all in [0, 1], higher is more disentangled):

* BetaVAE score (Higgins et al. 2017, section 3): pick a factor k uniformly; draw
  ``batch_size`` pairs of rows that share the value of factor k (a random value per pair);
  the feature is mean_pairs |c_1 - c_2|; a logistic regression (scikit-learn defaults)
  trained on ``num_train`` features predicts k; score = its accuracy on ``num_test``
  new features.
* FactorVAE score (Kim & Mnih 2018, section 4): global variances Var(c_d) from
  ``num_variance_estimate`` rows (ddof 1); dimensions with zero variance are left out; a
  vote = (k, argmin_d Var_batch(c_d) / Var(c_d)) over ``batch_size`` rows sharing one
  value of factor k; the majority-vote classifier code -> factor from ``num_train``
  votes; score = its accuracy on ``num_test`` new votes.
* MIG (Chen et al. 2018, section 5): codes discretised into ``num_bins`` = 20 equal-width
  histogram bins each; MI(c_d; v_k) and H(v_k) by ``sklearn.metrics.mutual_info_score``
  (nats); MIG = mean_k (MI_(1) - MI_(2)) / H(v_k), the gap between the two codes most
  informative about factor k. Needs >= 2 codes.
* DCI (Eastwood & Williams 2018, section 2): per factor a
  ``GradientBoostingClassifier`` (scikit-learn defaults; ``random_state`` from ``seed``)
  on the codes; importance R_dk = |feature_importances_|; disentanglement
  = sum_d rho_d (1 - H_K(R_d. / sum_k R_dk)) with rho_d = sum_k R_dk / sum R,
  completeness = sum_k rho_k (1 - H_D(R_.k / sum_d R_dk)) (entropies in base K factors /
  D codes, 1e-11 added as in disentanglement_lib), informativeness = the classifiers'
  mean test accuracy.
* SAP (Kumar et al. 2018, section 3): S_dk = test accuracy of
  ``LinearSVC(C=0.01, class_weight="balanced")`` predicting factor k from code d alone;
  SAP = mean_k (S_(1)k - S_(2)k), the gap between the best two codes.

From a table instead of a simulator: disentanglement_lib samples factors uniformly and
renders an observation; here rows are drawn uniformly from the table with a
``numpy.random.default_rng(seed)`` generator. "Factor k fixed at value v" is a uniform
draw among the rows whose factor k equals v; on a table holding every factor combination
once (a full dSprites grid) this is exactly the simulator's distribution, otherwise it is
the table's empirical one. MIG, DCI and SAP use ``num_train`` / ``num_test`` disjoint
rows (without replacement); a table with fewer than ``num_train + num_test`` rows is split
2 : 1 in the same proportion. Factors are treated as discrete (dSprites' settings).
"""

from __future__ import annotations

import math
import warnings
from typing import Callable, NamedTuple

import numpy as np
import torch

from ..sites import LATENT
from .information import guide_distribution

__all__ = ["disentanglement_metrics", "guide_codes", "METRIC_KEYS", "beta_vae_score", "factor_vae_score",
           "mig_score", "MIGResult", "dci_scores", "DCIResult", "dci_from_importance", "sap_score"]

METRIC_KEYS = ("beta_vae", "factor_vae", "mig", "dci_disentanglement", "dci_completeness",
               "dci_informativeness", "sap")


def _as_table(codes, factors) -> tuple[np.ndarray, np.ndarray]:
    c = codes.detach().cpu().numpy() if isinstance(codes, torch.Tensor) else np.asarray(codes)
    f = factors.detach().cpu().numpy() if isinstance(factors, torch.Tensor) else np.asarray(factors)
    if c.ndim != 2 or f.ndim != 2 or len(c) != len(f):
        raise ValueError(f"codes must be (N, num_codes) and factors (N, num_factors) with the "
                         f"same N; got {c.shape} and {f.shape}")
    if len(c) < 3:
        raise ValueError(f"need at least 3 rows of (codes, factors), got {len(c)}")
    if not np.issubdtype(f.dtype, np.integer):
        if not np.all(np.equal(np.mod(f, 1), 0)):
            raise ValueError("factors must be integer indices (discrete factors); bin "
                             "continuous factors first")
        f = f.astype(np.int64)
    c = c.astype(np.float64)
    if not np.all(np.isfinite(c)):
        raise ValueError("codes contain NaN or infinite values")
    for k in range(f.shape[1]):
        if len(np.unique(f[:, k])) < 2:
            raise ValueError(f"factor {k} takes a single value in the table; drop constant "
                             "factors (e.g. dSprites' colour) before computing the metrics")
    return c, f


class _Groups:
    """Uniform draws of rows with factor k equal to a given value."""

    def __init__(self, factors: np.ndarray):
        self.order, self.start, self.count, self.values = [], [], [], []
        for k in range(factors.shape[1]):
            order = np.argsort(factors[:, k], kind="stable")
            vals, start, count = np.unique(factors[order, k], return_index=True, return_counts=True)
            self.order.append(order)
            self.values.append(vals)
            self.start.append(start)
            self.count.append(count)

    def draw(self, k: int, value_pos: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Rows with factor k at its value number ``value_pos`` (any shape), uniformly."""
        start, count = self.start[k][value_pos], self.count[k][value_pos]
        offset = np.floor(rng.random(value_pos.shape) * count).astype(np.int64)
        return self.order[k][start + offset]

    def value_pos(self, k: int, rows: np.ndarray, factors: np.ndarray) -> np.ndarray:
        return np.searchsorted(self.values[k], factors[rows, k])


def beta_vae_score(codes, factors, *, seed: int = 0, batch_size: int = 64,
                   num_train: int = 10000, num_test: int = 5000) -> float:
    """BetaVAE score (Higgins et al. 2017) from a (codes, factors) table: see the module
    docstring. codes (N, D) float, factors (N, K) int. Returns the test accuracy in [0, 1]
    (chance is about 1 / K)."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    c, f = _as_table(codes, factors)
    rng = np.random.default_rng(seed)
    groups = _Groups(f)
    n_total, num_factors = num_train + num_test, f.shape[1]
    labels = rng.integers(num_factors, size=n_total)
    feats = np.empty((n_total, c.shape[1]))
    for k in range(num_factors):
        sel = np.nonzero(labels == k)[0]
        first = rng.integers(len(f), size=(len(sel), batch_size))  # (n_k, batch)
        second = groups.draw(k, groups.value_pos(k, first, f), rng)  # same value of factor k
        feats[sel] = np.abs(c[first] - c[second]).mean(1)  # (n_k, D)
    model = LogisticRegression(random_state=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # at the default max_iter
        model.fit(feats[:num_train], labels[:num_train])
    return float(model.score(feats[num_train:], labels[num_train:]))


def _factor_vae_votes(c, f, groups, rng, num_votes, batch_size, global_var, active):
    num_factors = f.shape[1]
    votes = np.zeros((num_factors, c.shape[1]), dtype=np.int64)
    labels = rng.integers(num_factors, size=num_votes)
    active_idx = np.nonzero(active)[0]
    for k in range(num_factors):
        n_k = int((labels == k).sum())
        if n_k == 0:
            continue
        anchor = rng.integers(len(f), size=n_k)
        value = groups.value_pos(k, anchor, f)  # one fixed value per vote
        rows = groups.draw(k, np.repeat(value[:, None], batch_size, 1), rng)  # (n_k, batch)
        local = c[rows][..., active_idx].var(axis=1, ddof=1)  # (n_k, active D)
        argmin = active_idx[np.argmin(local / global_var[active_idx], axis=1)]
        np.add.at(votes, (k, argmin), 1)
    return votes


def factor_vae_score(codes, factors, *, seed: int = 0, batch_size: int = 64,
                     num_train: int = 10000, num_test: int = 5000,
                     num_variance_estimate: int = 10000) -> float:
    """FactorVAE score (Kim & Mnih 2018) from a (codes, factors) table: see the module
    docstring. Returns the majority-vote classifier's test accuracy in [0, 1]; 0 when
    every code is constant."""
    c, f = _as_table(codes, factors)
    rng = np.random.default_rng(seed)
    groups = _Groups(f)
    rows = rng.integers(len(c), size=num_variance_estimate)
    global_var = c[rows].var(axis=0, ddof=1)
    active = global_var > 0
    if not active.any():
        return 0.0
    train = _factor_vae_votes(c, f, groups, rng, num_train, batch_size, global_var, active)
    test = _factor_vae_votes(c, f, groups, rng, num_test, batch_size, global_var, active)
    classifier = np.argmax(train, axis=0)  # (D,) the factor each code votes for most
    cols = np.arange(c.shape[1])
    return float(test[classifier, cols].sum() / test.sum())


def _split(n: int, num_train: int, num_test: int, rng) -> tuple[np.ndarray, np.ndarray]:
    perm = rng.permutation(n)
    if n >= num_train + num_test:
        return perm[:num_train], perm[num_train:num_train + num_test]
    n_test = max(1, int(round(n * num_test / (num_train + num_test))))
    return perm[n_test:], perm[:n_test]


class MIGResult(NamedTuple):
    """MIG and its parts. ``score``: mean of ``per_factor``; ``per_factor`` (K,) normalised
    gaps; ``mutual_information`` (D, K) MI(c_d; v_k) in nats; ``entropy`` (K,) H(v_k)."""

    score: float
    per_factor: np.ndarray
    mutual_information: np.ndarray
    entropy: np.ndarray


def _discretize(c: np.ndarray, num_bins: int) -> np.ndarray:
    out = np.empty(c.shape, dtype=np.int64)
    for d in range(c.shape[1]):
        out[:, d] = np.digitize(c[:, d], np.histogram(c[:, d], num_bins)[1][:-1])
    return out


def mig_score(codes, factors, *, seed: int = 0, num_train: int = 10000,
              num_bins: int = 20) -> MIGResult:
    """Mutual information gap (Chen et al. 2018, eq. 6) on ``num_train`` random rows (all
    rows when fewer), codes discretised into ``num_bins`` histogram bins.

    Raises:
        ValueError: fewer than 2 codes, or bad tables (see :func:`disentanglement_metrics`).
    """
    from sklearn.metrics import mutual_info_score

    c, f = _as_table(codes, factors)
    if c.shape[1] < 2:
        raise ValueError("MIG needs at least 2 codes (the gap between the best two)")
    rng = np.random.default_rng(seed)
    rows = rng.permutation(len(c))[:num_train]
    cd, fd = _discretize(c[rows], num_bins), f[rows]
    mi = np.array([[mutual_info_score(fd[:, k], cd[:, d]) for k in range(f.shape[1])]
                   for d in range(c.shape[1])])  # (D, K)
    h = np.array([mutual_info_score(fd[:, k], fd[:, k]) for k in range(f.shape[1])])
    top = np.sort(mi, axis=0)[::-1]
    per_factor = (top[0] - top[1]) / h
    return MIGResult(float(per_factor.mean()), per_factor, mi, h)


class DCIResult(NamedTuple):
    """DCI scores and parts: ``disentanglement``, ``completeness``, ``informativeness``
    (mean test accuracy), ``informativeness_train``, ``importance`` (D, K),
    ``completeness_per_factor`` (K,), ``disentanglement_per_code`` (D,)."""

    disentanglement: float
    completeness: float
    informativeness: float
    informativeness_train: float
    importance: np.ndarray
    completeness_per_factor: np.ndarray
    disentanglement_per_code: np.ndarray


def _entropy(p: np.ndarray, base: int, axis: int) -> np.ndarray:
    p = p + 1e-11
    p = p / p.sum(axis=axis, keepdims=True)
    return -(p * np.log(p)).sum(axis=axis) / math.log(base)


def dci_scores(codes, factors, *, seed: int = 0, num_train: int = 10000,
               num_test: int = 5000) -> DCIResult:
    """DCI (Eastwood & Williams 2018) with gradient-boosted trees, as disentanglement_lib's
    ``dci.py``: see the module docstring. Needs >= 2 codes (the entropy base)."""
    from sklearn.ensemble import GradientBoostingClassifier

    c, f = _as_table(codes, factors)
    num_codes, num_factors = c.shape[1], f.shape[1]
    if num_codes < 2:
        raise ValueError("DCI needs at least 2 codes")
    rng = np.random.default_rng(seed)
    tr, te = _split(len(c), num_train, num_test, rng)
    importance = np.zeros((num_codes, num_factors))
    acc_train, acc_test = [], []
    for k in range(num_factors):
        model = GradientBoostingClassifier(random_state=seed)
        model.fit(c[tr], f[tr, k])
        importance[:, k] = np.abs(model.feature_importances_)
        acc_train.append(np.mean(model.predict(c[tr]) == f[tr, k]))
        acc_test.append(np.mean(model.predict(c[te]) == f[te, k]))
    d, comp, per_code, per_factor = dci_from_importance(importance)
    return DCIResult(d, comp, float(np.mean(acc_test)), float(np.mean(acc_train)), importance,
                     per_factor, per_code)


def dci_from_importance(importance) -> tuple[float, float, np.ndarray, np.ndarray]:
    """Disentanglement and completeness of an importance matrix R (D codes, K factors),
    Eastwood & Williams 2018, eqs. 1-3 as in disentanglement_lib: returns
    ``(disentanglement, completeness, per_code (D,), per_factor (K,))``. A single factor
    counts as perfectly disentangled per code; an all-zero R weighs codes / factors equally.

    Raises:
        ValueError: R not 2-D, with fewer than 2 codes, or negative.
    """
    r = np.asarray(importance, dtype=np.float64)
    if r.ndim != 2 or r.shape[0] < 2 or (r < 0).any():
        raise ValueError(f"importance must be a non-negative (num_codes >= 2, num_factors) "
                         f"matrix, got shape {r.shape}")
    num_codes, num_factors = r.shape
    per_code = (1.0 - _entropy(r, num_factors, axis=1)) if num_factors > 1 else np.ones(num_codes)
    per_factor = 1.0 - _entropy(r, num_codes, axis=0)
    weights = r if r.sum() > 0 else np.ones_like(r)
    rho_code = weights.sum(1) / weights.sum()
    rho_factor = weights.sum(0) / weights.sum()
    return (float((per_code * rho_code).sum()), float((per_factor * rho_factor).sum()),
            per_code, per_factor)


def sap_score(codes, factors, *, seed: int = 0, num_train: int = 10000,
              num_test: int = 5000) -> float:
    """SAP (Kumar et al. 2018) for discrete factors, as disentanglement_lib's
    ``sap_score.py``: see the module docstring. Needs >= 2 codes."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.svm import LinearSVC

    c, f = _as_table(codes, factors)
    if c.shape[1] < 2:
        raise ValueError("SAP needs at least 2 codes (the gap between the best two)")
    rng = np.random.default_rng(seed)
    tr, te = _split(len(c), num_train, num_test, rng)
    score = np.zeros((c.shape[1], f.shape[1]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # liblinear at C = 0.01
        for d in range(c.shape[1]):
            for k in range(f.shape[1]):
                svc = LinearSVC(C=0.01, class_weight="balanced", random_state=seed)
                svc.fit(c[tr, d:d + 1], f[tr, k])
                score[d, k] = np.mean(svc.predict(c[te, d:d + 1]) == f[te, k])
    top = np.sort(score, axis=0)
    return float(np.mean(top[-1] - top[-2]))


def disentanglement_metrics(codes, factors, *, seed: int = 0, num_train: int = 10000,
                            num_test: int = 5000, batch_size: int = 64,
                            num_variance_estimate: int = 10000, num_bins: int = 20) -> dict:
    """All seven supervised disentanglement metrics of a representation, with
    disentanglement_lib's definitions and settings (module docstring).

    Args:
        codes: (N, D) float array / tensor: the representation of N observations (for a
            VAE the guide's mean E_q[z | x], as in disentanglement_lib).
        factors: (N, K) integer factor indices of the same observations (e.g.
            ``load_dataset("dsprites", split).factors``); every factor takes >= 2 values.
        seed: seeds every random draw (numpy ``default_rng``) and the scikit-learn models.
        num_train, num_test: training / test size of each metric (disentanglement_lib:
            10000 / 5000; for BetaVAE they count feature vectors, for FactorVAE votes).
        batch_size: rows per BetaVAE feature / FactorVAE vote (64).
        num_variance_estimate: rows for FactorVAE's global variances (10000).
        num_bins: MIG's histogram bins per code (20).

    Returns:
        ``{"beta_vae", "factor_vae", "mig", "dci_disentanglement", "dci_completeness",
        "dci_informativeness", "sap"}`` -> float.

    Raises:
        ValueError: mismatched shapes, fewer than 3 rows or 2 codes, non-integer or
        constant factors, non-finite codes.
    """
    c, f = _as_table(codes, factors)
    if c.shape[1] < 2:
        raise ValueError("the metrics need at least 2 codes (MIG and SAP take the gap "
                         "between the best two)")
    dci = dci_scores(c, f, seed=seed, num_train=num_train, num_test=num_test)
    return {
        "beta_vae": beta_vae_score(c, f, seed=seed, batch_size=batch_size,
                                   num_train=num_train, num_test=num_test),
        "factor_vae": factor_vae_score(c, f, seed=seed, batch_size=batch_size,
                                       num_train=num_train, num_test=num_test,
                                       num_variance_estimate=num_variance_estimate),
        "mig": mig_score(c, f, seed=seed, num_train=num_train, num_bins=num_bins).score,
        "dci_disentanglement": dci.disentanglement,
        "dci_completeness": dci.completeness,
        "dci_informativeness": dci.informativeness,
        "sap": sap_score(c, f, seed=seed, num_train=num_train, num_test=num_test),
    }


@torch.no_grad()
def guide_codes(guide: Callable, x: torch.Tensor, *, latent: str = LATENT,
                batch_size: int = 1000) -> torch.Tensor:
    """The representation disentanglement_lib scores for a VAE: the guide's mean
    E_q[z | x_i] (for a Gaussian guide its ``loc``), flattened per datapoint.

    Args:
        guide: a Pyro guide with a latent site ``latent`` inside the ``"data"`` plate.
        x: (N, ...) observations.
        batch_size: rows of x per guide call.

    Returns:
        (N, D) float64 codes, D = the latent's number of coordinates.

    Raises:
        ValueError: the guide has no site ``latent`` or its distribution has no mean.
    """
    out = []
    for s in range(0, x.shape[0], batch_size):
        fn = guide_distribution(guide, x[s:s + batch_size], latent)
        try:
            mean = fn.mean
        except NotImplementedError as e:
            raise ValueError(f"the guide's distribution at {latent!r} ({type(fn).__name__}) "
                             "has no mean; pass codes computed another way") from e
        out.append(mean.reshape(mean.shape[0], -1).double())
    return torch.cat(out)
