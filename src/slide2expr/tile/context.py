"""Context windows: one larger square centred on each spot, read out at ``tile_px``.

A context tiling ``ctx{um}`` holds, for every spot of a section, a window ``um`` micrometres
across centred on the spot (e.g. 300 and 1000 um around a 112 um spot patch). The extract
stage embeds it with the same encoder as the spots, so the window is seen at a coarser
resolution (``um / tile_px`` um/px) and computed once, cached in
``features/{encoder}/ctx{um}/{sample}.h5``.

Windows near the slide edge reach past it. They are **padded, not shifted**: the slide
readers return white outside the image (:meth:`slide2expr.inputs.slides.Slide._read_level`),
so a window stays centred on its spot. The tiles file records it: attr ``padding = "white"``,
attr ``n_padded`` (windows that reach past the edge) and dataset ``pad_fraction`` (N,)
float32, the fraction of each window's area outside the slide.

Grid tiles get the same windows (:func:`grid_context_windows`, tiling ``grid_ctx{um}``): one
window ``um`` across centred on each grid tile, in the grid tiling's order, so that a head
trained on spots with ``ctx{um}`` inputs can paint a dense heatmap. A grid window has the
spot window's edge and read-out (``um / tile_px`` um/px), only its centre differs.
"""

from __future__ import annotations

import logging
import re

import numpy as np

from slide2expr.contracts.tiles import TileSet
from slide2expr.errors import InputError

log = logging.getLogger(__name__)

#: Name of a context tiling: ``ctx`` and the window edge in whole micrometres.
CONTEXT_TILING = re.compile(r"^ctx(\d+)$")
#: Name of a grid context tiling (windows centred on grid tiles, for heatmaps).
GRID_CONTEXT_TILING = re.compile(r"^grid_ctx(\d+)$")


def context_tiling(um: float) -> str:
    """The tiling name of ``um``-micrometre context windows, e.g. ``ctx300``."""
    if not um > 0 or float(um) != int(um):
        raise InputError(None, f"context window {um!r} um is not a positive whole number",
                         "use whole micrometres in tiling.context_um, e.g. [300, 1000]")
    return f"ctx{int(um)}"


def grid_context_tiling(um: float) -> str:
    """The tiling name of ``um``-micrometre windows centred on grid tiles, ``grid_ctx300``."""
    return f"grid_{context_tiling(um)}"


def pad_fraction(coords: np.ndarray, size0: float, width: int, height: int) -> np.ndarray:
    """Fraction of each square window (top-left ``coords``, edge ``size0`` level-0 px) that
    lies outside the ``width x height`` slide."""
    x0 = coords[:, 0].astype(np.float64)
    y0 = coords[:, 1].astype(np.float64)
    inside_w = np.clip(np.minimum(x0 + size0, width) - np.maximum(x0, 0.0), 0.0, None)
    inside_h = np.clip(np.minimum(y0 + size0, height) - np.maximum(y0, 0.0), 0.0, None)
    outside = 1.0 - inside_w * inside_h / (size0 * size0)
    # float rounding of a window wholly inside leaves ~1e-16, which is not padding
    return np.where(outside < 1e-6, 0.0, outside).astype(np.float32)


def context_windows(spots: TileSet, um: float) -> TileSet:
    """Windows of ``um`` micrometres centred on the spots of ``spots`` (a spot tiling).

    Parameters
    ----------
    spots
        The section's spot patches (``tiles/spots/{sample}.h5``); their centres are the
        patch centres.
    um
        Window edge in micrometres (whole number).

    Returns
    -------
    TileSet
        Mode ``"context"``, the same spots in the same order, ``target_mpp = um / tile_px``,
        attrs ``context_um``, ``padding``, ``n_padded`` and extra ``pad_fraction``.

    Raises
    ------
    InputError
        When ``spots`` is not a spot tiling or lacks the slide's mpp.
    """
    name = context_tiling(um)
    if spots.attrs.mode != "spots" or spots.spot_ids is None:
        raise InputError(spots.attrs.slide, "context windows need a spot tiling "
                         f"(tiles/spots), got mode {spots.attrs.mode!r}",
                         "pass the spot tiles file of the sample")
    return _windows(spots, um, name)


def grid_context_windows(grid: TileSet, um: float) -> TileSet:
    """Windows of ``um`` micrometres centred on the tiles of ``grid`` (a grid tiling).

    The grid counterpart of :func:`context_windows`: the same edge, read-out and padding,
    one window per grid tile in the grid's order (tiling ``grid_ctx{um}``), for heatmaps of
    heads trained with ``ctx{um}`` inputs.

    Raises
    ------
    InputError
        When ``grid`` is not a grid tiling or lacks the slide's mpp.
    """
    name = grid_context_tiling(um)
    if grid.attrs.mode != "grid":
        raise InputError(grid.attrs.slide, "grid context windows need a grid tiling "
                         f"(tiles/grid), got mode {grid.attrs.mode!r}",
                         "pass the grid tiles file of the sample")
    return _windows(grid, um, name)


def _windows(tiles: TileSet, um: float, name: str) -> TileSet:
    """Windows of ``um`` micrometres centred on each tile of ``tiles`` (same order)."""
    known = tiles.attrs
    if not known.slide_mpp:
        raise InputError(known.slide, "the tiles file records no slide_mpp",
                         "re-run the tile stage (it records the slide's mpp)")
    if known.tile_px is None or known.level0_width is None or known.level0_height is None:
        raise InputError(known.slide, "the tiles file records no tile_px or level-0 size",
                         "re-run the tile stage")
    mpp = float(known.slide_mpp)
    tile_px = int(known.tile_px)
    width, height = int(known.level0_width), int(known.level0_height)
    centres = tiles.coords.astype(np.float64) + tiles.tile_px_level0 / 2.0
    size0 = float(um) / mpp
    coords = np.floor(centres - size0 / 2.0).astype(np.int64)
    padded = pad_fraction(coords, size0, width, height)
    attrs = tiles.attrs.copy()
    attrs.mode = "context"
    attrs.tiling = name
    attrs.context_um = float(um)
    attrs.target_mpp = float(um) / tile_px
    attrs.tile_px_level0 = size0
    attrs.padding = "white"
    attrs.n_padded = int((padded > 0).sum())
    log.info("%s: %d %s windows of %.0f um (%.1f px level 0), %d reach past the slide edge "
             "(padded white)", attrs.sample_id, len(coords), name, um, size0, attrs.n_padded)
    return TileSet(coords=coords, attrs=attrs, spot_ids=tiles.spot_ids,
                   extra={"pad_fraction": padded})
