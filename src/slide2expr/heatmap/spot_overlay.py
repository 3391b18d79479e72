"""Measured next to predicted expression at the spots of a spot-mode training slide.

Reads the train stage's ``predictions/{head}.h5ad`` (``X`` = measured log1p CP10k,
``layers['predicted']`` = out-of-fold predictions, ``obs['sample_id']``,
``obsm['spatial']`` = spot centres in level-0 px) and draws, for each gene, the measured
and the predicted values as discs on the faded thumbnail, on one shared colour scale, with
the Pearson r of the slide's spots.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from slide2expr.atomic import atomic_output
from slide2expr.draw.colours import OverlayStyle, colormap
from slide2expr.draw.limits import robust_limits
from slide2expr.draw.spots import SpotValues
from slide2expr.heatmap.overlay import PNG_COMPRESS_LEVEL

log = logging.getLogger(__name__)


def draw_spot_comparison(path: str | Path, spots: SpotValues, *, thumbnail: np.ndarray,
                         downsample: float, sample_id: str, percentiles: Sequence[float] = (1, 99),
                         style: OverlayStyle | None = None, model: str = "") -> dict[str, float]:
    """Write a PNG: one row per gene, measured left and predicted right.

    Returns
    -------
    dict
        Pearson r of measured vs predicted per gene over the slide's spots (NaN when
        undefined).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    style = style or OverlayStyle()
    h, w = thumbnail.shape[:2]
    faded = (0.55 * thumbnail.astype(np.float32) + 0.45 * 255).astype(np.uint8)
    xy = spots.centres / downsample
    marker_px = _marker_diameter(xy)
    # zoom on the spots: their bounding box plus two disc diameters
    pad = 2 * marker_px
    x_lo, x_hi = max(0.0, xy[:, 0].min() - pad), min(float(w), xy[:, 0].max() + pad)
    y_lo, y_hi = max(0.0, xy[:, 1].min() - pad), min(float(h), xy[:, 1].max() + pad)
    view_w, view_h = max(x_hi - x_lo, 1.0), max(y_hi - y_lo, 1.0)
    panel_in = 3.6
    aspect = view_h / view_w
    n = len(spots.genes)
    fig = Figure(figsize=(2 * panel_in + 0.9, n * panel_in * aspect + 0.7), dpi=110)
    FigureCanvasAgg(fig)
    axes = fig.subplots(n, 2, squeeze=False)
    cmap = colormap(style.cmap)
    rs: dict[str, float] = {}
    points_per_px = 72.0 / fig.dpi * (panel_in * fig.dpi / view_w)
    view = (x_lo, x_hi, y_lo, y_hi)
    for row, gene in enumerate(spots.genes):
        meas, pred = spots.measured[:, row], spots.predicted[:, row]
        vmin, vmax = robust_limits(np.concatenate([meas, pred]), percentiles)
        ok = np.isfinite(meas) & np.isfinite(pred)
        r = (float(np.corrcoef(meas[ok], pred[ok])[0, 1])
             if ok.sum() > 2 and meas[ok].std() > 0 and pred[ok].std() > 0 else float("nan"))
        rs[gene] = r
        for col, (label, vals) in enumerate((("measured", meas), ("predicted", pred))):
            title = f"{gene}: {label}"
            if col == 1:
                title += f" (out-of-fold, r = {r:.2f})" if np.isfinite(r) else " (out-of-fold)"
            sc = _spot_panel(axes[row, col], faded, xy, vals, cmap=cmap, limits=(vmin, vmax),
                             size=(marker_px * points_per_px) ** 2, view=view, title=title)
        bar = fig.colorbar(sc, ax=axes[row, :].tolist(), fraction=0.04, pad=0.02)
        bar.set_label("log1p CP10k", fontsize=8)
        bar.ax.tick_params(labelsize=7)
    fig.suptitle(f"{sample_id}: measured vs predicted at the spots"
                 + (f" ({model})" if model else ""), fontsize=10)
    with atomic_output(path) as tmp:
        fig.savefig(tmp, format="png", pil_kwargs={"compress_level": PNG_COMPRESS_LEVEL})
    return rs


def _spot_panel(ax: Any, faded: np.ndarray, xy: np.ndarray, vals: np.ndarray, *, cmap: Any,
                limits: tuple[float, float], size: float,
                view: tuple[float, float, float, float], title: str) -> Any:
    """One panel: the faded thumbnail, a disc per spot with a finite value, zoomed on
    ``view`` (x_lo, x_hi, y_lo, y_hi); returns the scatter (for the colour bar)."""
    h, w = faded.shape[:2]
    ax.imshow(faded, extent=(0, w, h, 0), interpolation="bilinear")
    good = np.isfinite(vals)
    sc = ax.scatter(xy[good, 0], xy[good, 1], c=vals[good], cmap=cmap, vmin=limits[0],
                    vmax=limits[1], s=size, linewidths=0, marker="o")
    x_lo, x_hi, y_lo, y_hi = view
    ax.set_xlim(x_lo, x_hi)
    ax.set_ylim(y_hi, y_lo)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title, fontsize=9)
    return sc


def _marker_diameter(xy: np.ndarray) -> float:
    """Disc diameter in image px: 80% of the median nearest-neighbour distance."""
    if len(xy) < 2:
        return 6.0
    from scipy.spatial import cKDTree

    dist, _ = cKDTree(xy).query(xy, k=2)
    return max(float(np.median(dist[:, 1])) * 0.8, 1.0)
