"""The report's figures, rendered with matplotlib's Agg canvas to base64 PNG.

No pyplot state is used (figures are :class:`matplotlib.figure.Figure` objects), so this
works headless and never changes the caller's backend. Gene names go into figures with
``parse_math=False``: a ``$`` in a user's gene name is text, not mathtext.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

#: Colours of the model and the baselines, shared by all figures.
COLOURS = {"model": "#1f77b4", "ridge": "#ff7f0e", "hest": "#2ca02c", "mean": "#7f7f7f"}
_EXTRA = ("#9467bd", "#8c564b", "#e377c2", "#17becf")
DPI = 80


def colour(name: str, order: Sequence[str] = ()) -> str:
    """The colour of a prediction (model or baseline) in every figure."""
    if name in COLOURS:
        return COLOURS[name]
    extra = [n for n in order if n not in COLOURS]
    return _EXTRA[extra.index(name) % len(_EXTRA)] if name in extra else _EXTRA[0]


def to_base64_png(fig) -> str:
    """Render a figure to a base64 PNG string (for a ``data:`` URI)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def r_distribution(r: Mapping[str, np.ndarray], *, reference: str | None = None,
                   significant: np.ndarray | None = None) -> str:
    """Histogram of per-gene r for the model and each baseline, and model vs reference r.

    Parameters
    ----------
    r
        Name (``"model"`` first) -> per-gene r (NaN where undefined).
    reference
        The baseline to plot against the model per gene; no second panel if ``None``.
    significant
        Genes flagged "significantly well predicted", highlighted in the second panel.

    Returns
    -------
    Base64 PNG.
    """
    from matplotlib.figure import Figure

    order = list(r)
    two = reference is not None and reference in r
    fig = Figure(figsize=(11 if two else 6, 4))
    axes = fig.subplots(1, 2 if two else 1, squeeze=False)[0]
    finite = np.concatenate([v[np.isfinite(v)] for v in r.values()] + [np.zeros(1)])
    lo, hi = float(min(finite.min(), 0.0)), float(max(finite.max(), 0.0))
    bins = np.linspace(lo - 1e-9, hi + 1e-9, 31)
    ax = axes[0]
    for name, values in r.items():
        v = values[np.isfinite(values)]
        if v.size:
            ax.hist(v, bins=bins, histtype="step" if name != "model" else "stepfilled",
                    alpha=0.45 if name == "model" else 1.0, linewidth=2,
                    color=colour(name, order), label=f"{name} (mean {v.mean():.3f})")
    ax.axvline(0, color="black", linewidth=0.8)
    ax.set_xlabel("per-gene Pearson r (held-out units, pooled)")
    ax.set_ylabel("genes")
    ax.set_title("Distribution of per-gene r")
    ax.legend(frameon=False, fontsize=9)
    if two:
        ax = axes[1]
        x, y = r[reference], r["model"]
        ok = np.isfinite(x) & np.isfinite(y)
        sig = np.zeros_like(ok) if significant is None else np.asarray(significant, bool)
        ax.scatter(x[ok & ~sig], y[ok & ~sig], s=10, color="#aaaaaa", label="other genes")
        ax.scatter(x[ok & sig], y[ok & sig], s=14, color=colour("model"),
                   label="significantly well predicted")
        lims = [min(lo, -0.05) - 0.03, max(hi, 0.05) + 0.03]
        ax.plot(lims, lims, color="black", linewidth=0.8)
        ax.set_xlim(lims)
        ax.set_ylim(lims)
        ax.set_xlabel(f"r of the {reference} baseline")
        ax.set_ylabel("r of the model")
        ax.set_title("Model vs baseline, per gene")
        ax.legend(frameon=False, fontsize=9, loc="upper left")
    fig.tight_layout()
    return to_base64_png(fig)


def scatter_grid(truth: np.ndarray, pred: np.ndarray, idx: Sequence[int], *,
                 names: Sequence[str], r: np.ndarray, folds: np.ndarray,
                 title: str | None = None,
                 max_points: int = 3000, seed: int = 0, ncols: int = 4) -> str:
    """Predicted vs observed scatter plots, one panel a gene, coloured by fold.

    Parameters
    ----------
    truth, pred
        ``(units, genes)`` observed and predicted values.
    idx
        Gene columns to draw.
    names, r
        Gene names and per-gene r (for the panel titles).
    folds
        Fold of each unit.
    title
        Figure title (none by default).
    max_points
        Units drawn per panel at most (a seeded random subset beyond that).
    seed
        Seed of the subset.
    ncols
        Panels a row.

    Returns
    -------
    Base64 PNG.
    """
    from matplotlib.figure import Figure

    idx = list(idx)
    nrows = max(1, -(-len(idx) // ncols))
    fig = Figure(figsize=(3.0 * ncols, 2.8 * nrows + 0.4))
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    units = np.arange(truth.shape[0])
    if units.size > max_points:
        units = np.sort(np.random.default_rng(seed).choice(units, max_points, replace=False))
    fold_values = np.unique(folds)
    cmap = _fold_colours(len(fold_values))
    for ax, j in zip(axes, idx, strict=False):
        _scatter_panel(ax, truth[units, j], pred[units, j], folds[units], fold_values, cmap,
                       title=_short(names[j]), r=r[j])
    for ax in axes[len(idx):]:
        ax.set_visible(False)
    if idx and len(fold_values) <= 10:
        axes[0].legend(frameon=False, fontsize=7, markerscale=2)
    if title:
        fig.suptitle(title, parse_math=False)
    fig.tight_layout()
    return to_base64_png(fig)


def _scatter_panel(ax: Any, t: np.ndarray, p: np.ndarray, f: np.ndarray,
                   fold_values: np.ndarray, colours: Sequence[Any], *, title: str,
                   r: float) -> None:
    """One gene's panel: observed ``t`` vs predicted ``p``, a colour a fold ``f``, the
    diagonal, and the gene's r in the title."""
    ok = np.isfinite(t) & np.isfinite(p)
    for c, k in zip(colours, fold_values, strict=True):
        m = ok & (f == k)
        ax.scatter(t[m], p[m], s=6, alpha=0.6, color=c, linewidths=0,
                   label=f"fold {k}")
    if ok.any():
        lo = float(min(t[ok].min(), p[ok].min()))
        hi = float(max(t[ok].max(), p[ok].max()))
        ax.plot([lo, hi], [lo, hi], color="black", linewidth=0.6)
    rtext = f"r = {r:.3f}" if np.isfinite(r) else "r undefined"
    ax.set_title(f"{title}  ({rtext})", fontsize=10, parse_math=False)
    ax.set_xlabel("observed", fontsize=8)
    ax.set_ylabel("predicted", fontsize=8)
    ax.tick_params(labelsize=7)


def _short(name: str, limit: int = 28) -> str:
    return name if len(name) <= limit else name[: limit - 1] + "…"


def _fold_colours(n: int) -> list:
    from matplotlib import colormaps

    cmap = colormaps["tab10" if n <= 10 else "viridis"]
    return [cmap(i if n <= 10 else i / max(1, n - 1)) for i in range(n)]
