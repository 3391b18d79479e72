"""Baselines trained on the same folds and genes as the heads.

- ``ridge``: ridge regression on standardised features, its ``alpha`` chosen by inner
  cross-validation on the training fold only (grouped by patient/section) — the honest
  baseline a head must beat;
- ``hest``: the HEST-Benchmark protocol (standardise, PCA to 256, ridge with the fixed
  ``alpha = 100 / (dim * genes)``), for comparison with published tables;
- ``mean``: the training mean of each gene.

In bulk mode the features of a slide are its mean tile feature.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np

from slide2expr.train.cv import assign_folds
from slide2expr.train.scaling import floored_sd, standardise

log = logging.getLogger(__name__)


def ridge_path(x: np.ndarray, y: np.ndarray, x_new: np.ndarray,
               alphas: Sequence[float]) -> np.ndarray:
    """Ridge predictions for every alpha at once (intercept fitted by centring).

    One eigendecomposition serves every alpha: of the ``n x n`` Gram matrix of the centred
    rows when there are fewer rows than features (the dual form), else of the ``D x D``
    one (the primal form); either is cheaper than the SVD of the ``n x D`` matrix.

    Returns
    -------
    np.ndarray
        ``(len(alphas), n_new, G)``.
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    x_mean, y_mean = x.mean(axis=0), y.mean(axis=0)
    xc = x - x_mean
    yc = y - y_mean
    z = np.asarray(x_new, dtype=np.float64) - x_mean
    evals, proj, rhs = _ridge_basis(xc, yc, z)
    out = np.empty((len(alphas), len(z), y.shape[1]))
    for i, alpha in enumerate(alphas):
        out[i] = proj @ (rhs / (evals + alpha)[:, None]) + y_mean
    return out


def _ridge_basis(xc: np.ndarray, yc: np.ndarray,
                 z: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Eigenvalues ``e``, ``P`` and ``R`` with ridge predictions ``P diag(1/(e+alpha)) R``
    for the centred rows ``z`` (``z`` None: the coefficients, ``(D, G)``).

    Dual (``n <= D``): ``K = Xc Xc^T = U diag(e) U^T``, ``P = z Xc^T U``, ``R = U^T yc``.
    Primal: ``Xc^T Xc = V diag(e) V^T``, ``P = z V``, ``R = V^T Xc^T yc``.
    """
    n, d = xc.shape
    if n <= d:
        evals, basis = np.linalg.eigh(xc @ xc.T)
        proj = xc.T @ basis if z is None else (z @ xc.T) @ basis
        rhs = basis.T @ yc
    else:
        evals, basis = np.linalg.eigh(xc.T @ xc)
        proj = basis if z is None else z @ basis
        rhs = basis.T @ (xc.T @ yc)
    return np.clip(evals, 0.0, None), proj, rhs


def pearson_columns(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-column Pearson r (NaN where either column is constant)."""
    a = a - a.mean(axis=0)
    b = b - b.mean(axis=0)
    denom = np.sqrt((a ** 2).sum(axis=0) * (b ** 2).sum(axis=0))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, (a * b).sum(axis=0) / denom, np.nan)


def choose_alpha(x: np.ndarray, y: np.ndarray, groups: np.ndarray, alphas: Sequence[float], *,
                 seed: int, max_folds: int = 5,
                 blocks: Sequence[int] | None = None) -> tuple[float, np.ndarray]:
    """Alpha with the best mean per-gene Pearson r of pooled inner out-of-fold predictions.

    Inner folds split the training fold's groups (or, with one group, its units); the
    held-out fold is never seen. The inner predictions are pooled before r is computed,
    exactly as the report pools the outer folds: a score averaged *within* inner folds is
    blind to scale, so it rewards extreme shrinkage whose fold-to-fold offsets then dominate
    the pooled correlation (seen on the demo: alpha 1e6, pooled r 0.2 where 1e3 gives 0.9).
    Returns the alpha and the mean r of every alpha.
    """
    unique = np.unique(groups)
    if len(unique) >= 2:
        inner = assign_folds(groups, min(max_folds, len(unique)), seed=seed)
    else:
        rng = np.random.default_rng(seed)
        inner = rng.permutation(len(groups)) % min(max_folds, len(groups))
    pooled = np.full((len(alphas), *y.shape), np.nan)
    for k in np.unique(inner):
        tr, te = inner != k, inner == k
        if te.sum() < 1 or tr.sum() < 2:
            continue
        xs_tr, xs_te = standardise(x[tr], x[te], blocks=blocks)
        pooled[:, te] = ridge_path(xs_tr, y[tr], xs_te, alphas)
    done = ~np.isnan(pooled[0, :, 0])
    mean_r = np.array([
        np.nanmean(r) if np.isfinite(r := pearson_columns(pooled[i, done], y[done])).any()
        else np.nan for i in range(len(alphas))])
    best = int(np.nanargmax(mean_r)) if np.isfinite(mean_r).any() else len(alphas) // 2
    return float(alphas[best]), mean_r


def tuned_alpha(x: np.ndarray, y: np.ndarray, groups: np.ndarray, alphas: Sequence[float], *,
                seed: int, blocks: Sequence[int] | None = None) -> float:
    """:func:`choose_alpha`'s alpha, its inner-CV scores logged."""
    alpha, mean_r = choose_alpha(x, y, groups, alphas, seed=seed, blocks=blocks)
    log.info("ridge: inner-CV mean r by alpha %s -> alpha %g",
             dict(zip(alphas, np.round(mean_r, 3), strict=True)), alpha)
    return alpha


def ridge_baseline(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray,
                   groups_train: np.ndarray, *, alphas: Sequence[float], seed: int,
                   blocks: Sequence[int] | None = None,
                   alpha: float | None = None) -> tuple[np.ndarray, float]:
    """Tuned ridge: predictions for ``x_test`` and the alpha chosen on the training fold
    (``blocks``: widths of the input blocks, for the SD floor of
    :mod:`slide2expr.train.scaling`; ``alpha``: already chosen, skip the choice)."""
    if alpha is None:
        alpha = tuned_alpha(x_train, y_train, groups_train, alphas, seed=seed, blocks=blocks)
    xs_tr, xs_te = standardise(x_train, x_test, blocks=blocks)
    return ridge_path(xs_tr, y_train, xs_te, [alpha])[0], alpha


def hest_baseline(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, *,
                  n_components: int = 256, seed: int = 0,
                  blocks: Sequence[int] | None = None) -> np.ndarray:
    """HEST-Benchmark: standardise (SD floored as in :mod:`slide2expr.train.scaling`), PCA
    (256), ridge with alpha = 100 / (dim * genes)."""
    from sklearn.decomposition import PCA

    xs_tr, xs_te = standardise(x_train.astype(np.float64), x_test.astype(np.float64),
                               blocks=blocks)
    dim = min(n_components, xs_tr.shape[0], xs_tr.shape[1])
    pca = PCA(n_components=dim, random_state=seed, svd_solver="full").fit(xs_tr)
    z_tr, z_te = pca.transform(xs_tr), pca.transform(xs_te)
    alpha = 100.0 / (z_tr.shape[1] * y_train.shape[1])
    return ridge_path(z_tr, y_train, z_te, [alpha])[0]


def mean_baseline(y_train: np.ndarray, n_test: int) -> np.ndarray:
    """The training mean of each gene, for every held-out unit."""
    return np.repeat(np.asarray(y_train, dtype=np.float64).mean(axis=0)[None], n_test, axis=0)


def ridge_network(x_train: np.ndarray, y_train: np.ndarray, *, alpha: float,
                  blocks: Sequence[int] | None = None) -> Any:
    """Ridge on standardised features as a linear :class:`~slide2expr.predict.nets.mlp.MLPNet`
    (``hidden: 0``), so a fold whose selection chose ridge ships it like any head.

    The network standardises its input with the training mean and standard deviation (near
    constant ones replaced by 1, as :func:`ridge_baseline`; :mod:`slide2expr.train.scaling`,
    ``blocks`` the input blocks' widths), applies the ridge coefficients and adds the
    intercept; its ``target_mean``/``target_std`` are 0/1. Its predictions equal
    :func:`ridge_path`'s for the same ``alpha`` up to float32 rounding.

    Returns
    -------
    MLPNet
        In eval mode, with an ``hparams`` attribute (what ``head.json`` records).
    """
    import torch

    from slide2expr.predict.nets import build_net

    x = np.asarray(x_train, dtype=np.float64)
    y = np.asarray(y_train, dtype=np.float64)
    mean, std = x.mean(axis=0), floored_sd(x.std(axis=0), blocks)
    xs = (x - mean) / std
    xs_mean, y_mean = xs.mean(axis=0), y.mean(axis=0)
    xc = xs - xs_mean
    evals, proj, rhs = _ridge_basis(xc, y - y_mean, None)
    coef = proj @ (rhs / (evals + alpha)[:, None])
    intercept = y_mean - xs_mean @ coef
    hparams = {"in_dim": x.shape[1], "n_genes": y.shape[1], "hidden": 0, "dropout": 0.0,
               "input_dropout": 0.0}
    net = build_net("mlp", **hparams)
    net.set_standardisation(feature_mean=mean, feature_std=std,
                            target_mean=np.zeros(y.shape[1]), target_std=np.ones(y.shape[1]))
    linear = net.net[-1]
    with torch.no_grad():
        linear.weight.copy_(torch.as_tensor(coef.T, dtype=torch.float32))
        linear.bias.copy_(torch.as_tensor(intercept, dtype=torch.float32))
    net.eval()
    net.hparams = hparams
    return net


def ridge_predict(net: Any, x: np.ndarray) -> np.ndarray:
    """Predictions (expression units) of a :func:`ridge_network` for raw features ``x``."""
    import torch

    with torch.no_grad():
        out = net.unstandardise(net.tile_outputs(torch.as_tensor(
            np.asarray(x, dtype=np.float32))))
    return out.numpy()
