"""Per-gene statistics of out-of-fold predictions.

Every function works on dense ``(units, genes)`` arrays, one column a gene, and computes all
genes at once. Conventions:

- A gene whose observed values or predictions are constant (peak-to-peak at most
  ``CONSTANT_RTOL`` times its largest absolute value, i.e. constant to float32 precision) or
  that has fewer than 3 finite units has no correlation: ``r`` is NaN and ``reason`` says
  why. Nothing is silently set to 0.
- Units where either value is not finite are dropped for that gene only (``n`` counts the
  units used).
- Multiple testing (:func:`bh`, :func:`holm`) is over the genes with a finite p-value; NaN
  p-values stay NaN.
- The comparison with a baseline uses Steiger's (1980) Z test for two dependent
  correlations that share the observed variable (:func:`steiger_test`), one-sided by
  default: H1 is "the model correlates better with the truth than the baseline".
- Confidence intervals resample clusters (patients) with replacement
  (:func:`bootstrap_mean_r`), which respects the dependence between units of one patient.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import numpy as np
import pandas as pd
from scipy import stats

log = logging.getLogger(__name__)

#: Relative peak-to-peak below which a column counts as constant (about 8 float32 ulps).
CONSTANT_RTOL = 1e-6
#: Fewest finite units for a correlation (Pearson's t test has ``n - 2`` degrees of freedom).
MIN_UNITS = 3

REASON_FEW = "fewer than 3 units"
REASON_TRUTH = "constant observed expression"
REASON_PRED = "constant prediction"
REASON_BOTH = "constant observed expression and prediction"

GENE_STAT_COLUMNS = (
    "n", "pearson_r", "pearson_p", "spearman_r", "rmse", "rmse_iqr", "reason",
)


def _as_2d(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    return a[:, None] if a.ndim == 1 else a


def is_constant(x: np.ndarray) -> np.ndarray:
    """Which columns of ``x`` are constant to float32 precision.

    Parameters
    ----------
    x
        ``(units, genes)`` finite values (or 1-D for a single gene).

    Returns
    -------
    Boolean array, one entry a column.
    """
    x = _as_2d(x)
    if x.shape[0] == 0:
        return np.ones(x.shape[1], dtype=bool)
    ptp = np.ptp(x, axis=0)
    scale = np.max(np.abs(x), axis=0)
    return ptp <= CONSTANT_RTOL * scale


def _pearson_complete(t: np.ndarray, p: np.ndarray) -> np.ndarray:
    """Pearson r per column of two complete ``(n, g)`` arrays (no constant checks)."""
    tc = t - t.mean(axis=0)
    pc = p - p.mean(axis=0)
    sxy = np.einsum("ij,ij->j", tc, pc)
    sxx = np.einsum("ij,ij->j", tc, tc)
    syy = np.einsum("ij,ij->j", pc, pc)
    with np.errstate(invalid="ignore", divide="ignore"):
        r = sxy / np.sqrt(sxx * syy)
    return np.clip(r, -1.0, 1.0)


def pearson_p(r: np.ndarray, n: np.ndarray | int) -> np.ndarray:
    """Two-sided p-value of Pearson's r under H0: rho = 0 (t test, ``n - 2`` df).

    Identical to :func:`scipy.stats.pearsonr`'s p-value for bivariate normal data.
    """
    r = np.asarray(r, dtype=np.float64)
    df = np.asarray(n, dtype=np.float64) - 2.0
    with np.errstate(invalid="ignore", divide="ignore"):
        t = r * np.sqrt(df / ((1.0 - r) * (1.0 + r)))
        p = 2.0 * stats.t.sf(np.abs(t), df)
    return np.where(np.isfinite(r) & (df > 0), np.clip(p, 0.0, 1.0), np.nan)


def _reasons(n: np.ndarray, const_t: np.ndarray, const_p: np.ndarray) -> np.ndarray:
    reason = np.full(n.shape, "", dtype=object)
    reason[const_p] = REASON_PRED
    reason[const_t] = REASON_TRUTH
    reason[const_t & const_p] = REASON_BOTH
    reason[n < MIN_UNITS] = REASON_FEW
    return reason


def _complete_stats(t: np.ndarray, p: np.ndarray) -> dict[str, np.ndarray]:
    """Statistics per column of complete (all finite) ``(n, g)`` arrays."""
    n_units, n_genes = t.shape
    n = np.full(n_genes, n_units, dtype=np.int64)
    if n_units == 0:
        nan = np.full(n_genes, np.nan)
        return {"n": n, "pearson_r": nan, "pearson_p": nan.copy(), "spearman_r": nan.copy(),
                "rmse": nan.copy(), "rmse_iqr": nan.copy(),
                "reason": _reasons(n, np.ones(n_genes, bool), np.ones(n_genes, bool))}
    const_t = is_constant(t)
    const_p = is_constant(p)
    reason = _reasons(n, const_t, const_p)
    defined = reason == ""
    r = np.where(defined, _pearson_complete(t, p), np.nan)
    rank_t = stats.rankdata(t, axis=0)
    rank_p = stats.rankdata(p, axis=0)
    rho = np.where(defined, _pearson_complete(rank_t, rank_p), np.nan)
    rmse = np.sqrt(np.mean((p - t) ** 2, axis=0))
    q75, q25 = np.percentile(t, [75, 25], axis=0)
    iqr = q75 - q25
    with np.errstate(invalid="ignore", divide="ignore"):
        rmse_iqr = np.where(iqr > 0, rmse / iqr, np.nan)
    return {"n": n, "pearson_r": r, "pearson_p": pearson_p(r, n), "spearman_r": rho,
            "rmse": rmse, "rmse_iqr": rmse_iqr, "reason": reason}


def gene_stats(truth: np.ndarray, pred: np.ndarray, *,
               genes: list[str] | pd.Index | None = None) -> pd.DataFrame:
    """Pearson r and p, Spearman r, RMSE and RMSE/IQR per gene.

    Parameters
    ----------
    truth, pred
        ``(units, genes)`` observed and predicted expression (same shape).
    genes
        Row labels of the result; defaults to ``0..g-1``.

    Returns
    -------
    DataFrame indexed by gene with columns ``n, pearson_r, pearson_p, spearman_r, rmse,
    rmse_iqr, reason``. ``reason`` is empty where ``pearson_r`` is defined. ``rmse_iqr`` is
    NaN where the observed interquartile range is 0 (mostly-zero genes).
    """
    t = _as_2d(truth)
    p = _as_2d(pred)
    if t.shape != p.shape:
        raise ValueError(f"truth {t.shape} and prediction {p.shape} differ in shape")
    finite = np.isfinite(t) & np.isfinite(p)
    complete = finite.all(axis=0)
    out = {k: np.empty(t.shape[1], dtype=object if k == "reason" else np.float64)
           for k in GENE_STAT_COLUMNS}
    if complete.any():
        part = _complete_stats(t[:, complete], p[:, complete])
        for k, v in part.items():
            out[k][complete] = v
    missing = np.flatnonzero(~complete)
    if missing.size:
        log.debug("%d gene(s) have non-finite values; those units are dropped per gene",
                  missing.size)
    for j in missing:
        keep = finite[:, j]
        part = _complete_stats(t[keep, j][:, None], p[keep, j][:, None])
        for k, v in part.items():
            out[k][j] = v[0]
    frame = pd.DataFrame(out, index=pd.Index(genes if genes is not None
                                              else range(t.shape[1]), name="gene"))
    frame["n"] = frame["n"].astype(np.int64)
    return frame


def pearson_r(truth: np.ndarray, pred: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pearson r and the number of units used, per gene, all genes at once.

    The same r and the same NaN rules as :func:`gene_stats` (units with a non-finite value
    dropped per gene; constant columns and fewer than 3 units give NaN), without the
    other statistics: the fast path for per-fold r and baseline comparisons.

    Returns
    -------
    r, n
    """
    t, p = _as_2d(truth), _as_2d(pred)
    ok = np.isfinite(t) & np.isfinite(p)
    n = ok.sum(axis=0)
    if ok.all():
        const = is_constant(t) | is_constant(p) if t.shape[0] else np.ones(t.shape[1], bool)
        r = _pearson_complete(t, p)
    else:
        tc = np.where(ok, t - _column_mean(t, ok), 0.0)
        pc = np.where(ok, p - _column_mean(p, ok), 0.0)
        with np.errstate(invalid="ignore", divide="ignore"):
            r = np.clip(np.einsum("ij,ij->j", tc, pc) / np.sqrt(
                np.einsum("ij,ij->j", tc, tc) * np.einsum("ij,ij->j", pc, pc)), -1.0, 1.0)
        const = _masked_constant(t, ok) | _masked_constant(p, ok)
    return np.where(const | (n < MIN_UNITS), np.nan, r), n


def _masked_constant(x: np.ndarray, ok: np.ndarray) -> np.ndarray:
    """:func:`is_constant` over the ``ok`` entries of each column (True if none)."""
    hi = np.where(ok, x, -np.inf).max(axis=0, initial=-np.inf)
    lo = np.where(ok, x, np.inf).min(axis=0, initial=np.inf)
    with np.errstate(invalid="ignore"):
        scale = np.maximum(np.abs(hi), np.abs(lo))
        return ~(hi - lo > CONSTANT_RTOL * scale)


def bh(p: np.ndarray) -> np.ndarray:
    """Benjamini-Hochberg q-values over the finite entries of ``p`` (NaN stays NaN)."""
    p = np.asarray(p, dtype=np.float64)
    q = np.full(p.shape, np.nan)
    ok = np.isfinite(p)
    if ok.any():
        q[ok] = stats.false_discovery_control(p[ok], method="bh")
    return q


def holm(p: np.ndarray) -> np.ndarray:
    """Holm-Bonferroni adjusted p-values over the finite entries of ``p`` (NaN stays NaN)."""
    p = np.asarray(p, dtype=np.float64)
    adj = np.full(p.shape, np.nan)
    ok = np.flatnonzero(np.isfinite(p))
    m = ok.size
    if m:
        order = ok[np.argsort(p[ok], kind="stable")]
        stepped = np.maximum.accumulate((m - np.arange(m)) * p[order])
        adj[order] = np.minimum(stepped, 1.0)
    return adj


def steiger_test(r_model: np.ndarray, r_base: np.ndarray, r_model_base: np.ndarray,
                 n: np.ndarray | int, *, alternative: str = "greater",
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Steiger's (1980) Z test for two dependent correlations sharing one variable.

    Tests H0: rho(truth, model) = rho(truth, baseline), with the two predictions measured
    on the same units (Steiger 1980, Psychol. Bull. 87:245, eq. 14 with the pooled
    correlation; ``cocor``'s ``steiger1980``)::

        rbar = (r12 + r13) / 2
        psi  = r23 (1 - 2 rbar^2) - rbar^2 (1 - 2 rbar^2 - r23^2) / 2
        c    = psi / (1 - rbar^2)^2
        Z    = (atanh r12 - atanh r13) sqrt(n - 3) / sqrt(2 - 2 c)

    Parameters
    ----------
    r_model
        r12: correlation of truth and model prediction, per gene.
    r_base
        r13: correlation of truth and baseline prediction.
    r_model_base
        r23: correlation of the two predictions.
    n
        Units per gene.
    alternative
        ``"greater"`` (model better; the default), ``"less"`` or ``"two-sided"``.

    Returns
    -------
    z, p
        The statistic and its p-value (NaN where an input is NaN or ``n <= 3``).
    """
    lim = 1.0 - 1e-12
    r12 = np.clip(np.asarray(r_model, dtype=np.float64), -lim, lim)
    r13 = np.clip(np.asarray(r_base, dtype=np.float64), -lim, lim)
    r23 = np.clip(np.asarray(r_model_base, dtype=np.float64), -lim, lim)
    n = np.asarray(n, dtype=np.float64)
    rbar = (r12 + r13) / 2.0
    rbar2 = rbar ** 2
    psi = r23 * (1.0 - 2.0 * rbar2) - 0.5 * rbar2 * (1.0 - 2.0 * rbar2 - r23 ** 2)
    c = psi / (1.0 - rbar2) ** 2
    with np.errstate(invalid="ignore", divide="ignore"):
        z = (np.arctanh(r12) - np.arctanh(r13)) * np.sqrt(n - 3.0) / np.sqrt(2.0 - 2.0 * c)
    z = np.where(n > 3, z, np.nan)
    if alternative == "greater":
        p = stats.norm.sf(z)
    elif alternative == "less":
        p = stats.norm.cdf(z)
    elif alternative == "two-sided":
        p = 2.0 * stats.norm.sf(np.abs(z))
    else:
        raise ValueError(f"alternative must be greater, less or two-sided, not {alternative!r}")
    return z, np.where(np.isfinite(z), p, np.nan)


def compare_to_baseline(truth: np.ndarray, pred: np.ndarray, base: np.ndarray, *,
                        alternative: str = "greater") -> pd.DataFrame:
    """Per gene: does the model correlate better with the truth than the baseline?

    A baseline that is constant for a gene carries no information about it: its
    correlations with the truth and the model are taken as 0, so the test asks whether the
    model's r is above 0. A gene with an undefined model r gets NaN.

    Returns
    -------
    DataFrame with ``baseline_r``, ``model_baseline_r``, ``beats_baseline_z``,
    ``beats_baseline_p`` (one row a gene, in column order).
    """
    t, p, b = _as_2d(truth), _as_2d(pred), _as_2d(base)
    ok = np.isfinite(t) & np.isfinite(p) & np.isfinite(b)
    if not ok.all():
        t, p, b = (np.where(ok, a, np.nan) for a in (t, p, b))
    r12, n = pearson_r(t, p)
    r13, _ = pearson_r(t, b)
    r23, _ = pearson_r(p, b)
    base_const = _masked_constant(b, ok)
    r13_test = np.where(base_const, 0.0, r13)
    r23_test = np.where(base_const, 0.0, r23)
    z, pval = steiger_test(r12, r13_test, r23_test, n, alternative=alternative)
    return pd.DataFrame({"baseline_r": r13, "model_baseline_r": r23,
                         "beats_baseline_z": z, "beats_baseline_p": pval})


def per_fold_r(truth: np.ndarray, pred: np.ndarray, folds: np.ndarray) -> pd.DataFrame:
    """Pearson r per gene within each fold.

    Returns
    -------
    DataFrame, one row a gene and one column a fold (sorted), NaN where undefined.
    """
    folds = np.asarray(folds)
    t, p = _as_2d(truth), _as_2d(pred)
    cols = {}
    for k in np.unique(folds):
        m = folds == k
        cols[k] = pearson_r(t[m], p[m])[0]
    return pd.DataFrame(cols)


def _column_mean(x: np.ndarray, ok: np.ndarray) -> np.ndarray:
    """Mean of the ``ok`` entries of each column (0 for a column with none)."""
    cnt = ok.sum(axis=0)
    return np.where(ok, x, 0.0).sum(axis=0) / np.maximum(cnt, 1)


def _column_absmax(x: np.ndarray) -> np.ndarray:
    """Largest finite absolute value of each column (0 for a column with none)."""
    return np.where(np.isfinite(x), np.abs(x), 0.0).max(axis=0, initial=0.0)


def _cluster_sums(t: np.ndarray, p: np.ndarray, codes: np.ndarray, k: int) -> np.ndarray:
    """Sufficient statistics per cluster: ``(k, 6, g)`` of n, Σx, Σy, Σx², Σy², Σxy."""
    ok = np.isfinite(t) & np.isfinite(p)
    # centre on the gene means so the sums of squares do not cancel catastrophically
    t0 = np.where(ok, t - _column_mean(t, ok), 0.0)
    p0 = np.where(ok, p - _column_mean(p, ok), 0.0)
    w = ok.astype(np.float64)
    order = np.argsort(codes, kind="stable")
    sorted_codes = codes[order]
    starts = np.flatnonzero(np.r_[True, sorted_codes[1:] != sorted_codes[:-1]])
    present = sorted_codes[starts]
    out = np.zeros((k, 6, t.shape[1]))
    for arr_i, arr in enumerate((w, t0, p0, t0 * t0, p0 * p0, t0 * p0)):
        out[present, arr_i, :] = np.add.reduceat(arr[order], starts, axis=0)
    return out


def _r_from_sums(s: np.ndarray, tol_t: np.ndarray, tol_p: np.ndarray) -> np.ndarray:
    """Pearson r from summed statistics ``(..., 6, g)``; NaN for near-constant columns."""
    n, sx, sy, sxx, syy, sxy = (s[..., i, :] for i in range(6))
    with np.errstate(invalid="ignore", divide="ignore"):
        vxx = sxx - sx * sx / n
        vyy = syy - sy * sy / n
        vxy = sxy - sx * sy / n
        r = vxy / np.sqrt(vxx * vyy)
        bad = (n < MIN_UNITS) | (vxx <= tol_t * n) | (vyy <= tol_p * n)
    return np.where(bad, np.nan, np.clip(r, -1.0, 1.0))


def bootstrap_mean_r(truth: np.ndarray, preds: Mapping[str, np.ndarray],
                     clusters: np.ndarray, *,
                     gene_sets: Mapping[str, np.ndarray] | None = None,
                     n_boot: int = 1000, seed: int = 0, level: float = 0.95,
                     ) -> dict[str, dict[str, tuple[float, float]]]:
    """Percentile bootstrap CI of the mean per-gene Pearson r, resampling clusters.

    Each replicate draws as many clusters as there are, with replacement, pools their units
    and recomputes every gene's r; the statistic is the mean over the genes of a set whose
    r is defined in that replicate. Computed from per-cluster sufficient statistics, so a
    replicate costs O(clusters x genes), not O(units x genes).

    Parameters
    ----------
    truth
        ``(units, genes)`` observed values.
    preds
        Name -> ``(units, genes)`` predictions (the model and the baselines).
    clusters
        ``(units,)`` cluster label of each unit (patient).
    gene_sets
        Name -> boolean mask over genes; default ``{"all": all genes}``.
    n_boot
        Replicates.
    seed
        Seed of :func:`numpy.random.default_rng`; the same seed gives the same intervals.
    level
        Coverage of the interval.

    Returns
    -------
    ``{prediction: {gene set: (low, high)}}``; ``(nan, nan)`` when fewer than 2 clusters or
    ``n_boot`` is 0.
    """
    t = _as_2d(truth)
    g = t.shape[1]
    if gene_sets is None:
        gene_sets = {"all": np.ones(g, dtype=bool)}
    labels, codes = np.unique(np.asarray(clusters), return_inverse=True)
    k = labels.size
    nan_ci = (float("nan"), float("nan"))
    if k < 2 or n_boot <= 0:
        return {name: dict.fromkeys(gene_sets, nan_ci) for name in preds}
    rng = np.random.default_rng(seed)
    weights = rng.multinomial(k, np.full(k, 1.0 / k), size=n_boot).astype(np.float64)
    tol_t = (CONSTANT_RTOL * _column_absmax(t)) ** 2
    result: dict[str, dict[str, tuple[float, float]]] = {}
    for name, pred in preds.items():
        p = _as_2d(pred)
        means = _replicate_means(t, p, codes, k, weights, gene_sets, tol_t)
        result[name] = {s: _percentile_ci(m, level) for s, m in means.items()}
    return result


def _replicate_means(t: np.ndarray, p: np.ndarray, codes: np.ndarray, k: int,
                     weights: np.ndarray, gene_sets: Mapping[str, np.ndarray],
                     tol_t: np.ndarray) -> dict[str, np.ndarray]:
    """Per gene set, the mean r over its genes in each bootstrap replicate (rows of
    ``weights``: how often each cluster is drawn), in chunks of replicates."""
    g = t.shape[1]
    n_boot = len(weights)
    sums = _cluster_sums(t, p, codes, k).reshape(k, 6 * g)
    tol_p = (CONSTANT_RTOL * _column_absmax(p)) ** 2
    means = {s: np.empty(n_boot) for s in gene_sets}
    chunk = max(1, int(2e7 // max(1, 6 * g)))
    for start in range(0, n_boot, chunk):
        wb = weights[start:start + chunk]
        r = _r_from_sums((wb @ sums).reshape(-1, 6, g), tol_t, tol_p)
        for s, mask in gene_sets.items():
            sub = r[:, np.asarray(mask, dtype=bool)]
            with np.errstate(invalid="ignore"):
                cnt = np.isfinite(sub).sum(axis=1)
                tot = np.nansum(sub, axis=1)
                means[s][start:start + chunk] = np.where(cnt > 0, tot / np.maximum(cnt, 1),
                                                         np.nan)
    return means


def _percentile_ci(means: np.ndarray, level: float) -> tuple[float, float]:
    """The percentile interval of the finite replicate means; ``(nan, nan)`` if none."""
    finite = means[np.isfinite(means)]
    if finite.size == 0:
        return (float("nan"), float("nan"))
    alpha = (1.0 - level) / 2.0
    lo, hi = np.quantile(finite, [alpha, 1.0 - alpha])
    return (float(lo), float(hi))
