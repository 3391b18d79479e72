"""Tile a slide: a tissue grid at a target mpp, or one patch centred on each spot.

Sizes are physical: a grid tile is ``tile_px`` pixels at ``target_mpp`` um/px, so its edge
in level-0 pixels is ``tile_px * target_mpp / slide_mpp``; a spot patch is
``spot_diameter_um`` across (112 um by default, the HEST convention) and is read out at
``tile_px`` pixels.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from slide2expr.contracts.tiles import TileAttrs, TileSet
from slide2expr.errors import InputError
from slide2expr.hashing import file_fingerprint
from slide2expr.inputs.slides import Slide
from slide2expr.tile.tissue import TissueParams, detect_tissue, tissue_fraction_grid

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TilingParams:
    """Parameters of the tile stage.

    Attributes
    ----------
    target_mpp
        Resolution of grid tiles (um/px).
    tile_px
        Edge of a tile or patch, in pixels at the read-out resolution.
    min_tissue
        Grid tiles are kept where tissue covers at least this fraction.
    spot_diameter_um
        Edge of a spot patch in micrometres.
    tissue
        Tissue detection parameters.
    """

    target_mpp: float = 0.5
    tile_px: int = 224
    min_tissue: float = 0.5
    spot_diameter_um: float = 112.0
    tissue: TissueParams = field(default_factory=TissueParams)


@dataclass
class TissueMap:
    """A slide's tissue mask and the image it was computed on."""

    mask: np.ndarray
    image: np.ndarray
    downsample: float  # level-0 px per mask px
    source: str = ""  # where the image came from, e.g. "level 4" or "thumbnail, reduced 2x"
    mpp: float = 0.0  # the mask's resolution, um/px


def compute_tissue(slide: Slide, params: TissueParams) -> TissueMap:
    """Detect tissue on a low-resolution image of the slide at about ``params.mask_mpp``,
    read from the smallest sufficient pyramid level or stored thumbnail
    (:meth:`~slide2expr.inputs.slides.Slide.read_for_mask`)."""
    assert slide.mpp is not None
    low = slide.read_for_mask(params.mask_mpp)
    mpp = slide.mpp * low.downsample
    mask = detect_tissue(low.image, image_mpp=mpp, params=params)
    return TissueMap(mask=mask, image=low.image, downsample=low.downsample, source=low.source,
                     mpp=mpp)


def _base_attrs(slide: Slide, sample_id: str, params: TilingParams) -> TileAttrs:
    w0, h0 = slide.dimensions
    attrs = TileAttrs(
        sample_id=sample_id,
        slide=str(slide.path),
        slide_fingerprint=_fingerprint(slide.path),
        slide_mpp=float(slide.mpp),
        mpp_source=slide.mpp_source,
        tile_px=int(params.tile_px),
        level0_width=int(w0),
        level0_height=int(h0),
        min_tissue=float(params.min_tissue),
    )
    attrs.update(slide.provenance_attrs())
    return attrs


def _fingerprint(path: Path) -> str | None:
    """The slide file's :func:`~slide2expr.hashing.file_fingerprint` (None for a folder)."""
    return file_fingerprint(path) if Path(path).is_file() else None


def grid_tiles(slide: Slide, tissue: TissueMap, sample_id: str, params: TilingParams, *,
               region: Any = None) -> TileSet:
    """Grid tiles that lie wholly inside the slide and are at least ``min_tissue`` tissue.

    Parameters
    ----------
    region
        A shapely polygon in level-0 pixels (a region sample, :mod:`slide2expr.inputs.regions`):
        only tiles wholly inside it are kept. The grid is the whole slide's, so tiles of
        several regions of one slide line up with each other and with the whole-slide grid.

    Raises
    ------
    InputError
        When no tile qualifies (no tissue detected, or none inside the region).
    """
    assert slide.mpp is not None
    size0 = params.tile_px * params.target_mpp / slide.mpp
    w0, h0 = slide.dimensions
    xs = np.arange(0, w0 - size0 + 1e-6, size0)
    ys = np.arange(0, h0 - size0 + 1e-6, size0)
    if region is not None:
        xs, ys = _within_bounds(xs, region.bounds[0::2], size0), _within_bounds(ys, region.bounds[1::2], size0)
    gx, gy = np.meshgrid(xs, ys)
    gx, gy = gx.ravel(), gy.ravel()
    frac = tissue_fraction_grid(tissue.mask, tissue.downsample, gx, gy, size0)
    keep = frac >= params.min_tissue
    if region is not None:
        keep &= tiles_inside(region, gx, gy, size0)
        if not keep.any():
            raise InputError(
                slide.path,
                f"the region of sample {sample_id} has no tissue tile: none of the "
                f"{int(tiles_inside(region, gx, gy, size0).sum())} grid tiles wholly inside it "
                f"is at least {params.min_tissue:.0%} tissue",
                "move the region (roi) onto tissue or make it larger than one tile "
                f"({size0:.0f} level-0 px); for faint stains lower tiling.min_tissue",
            )
    if not keep.any():
        raise InputError(
            slide.path,
            f"no tissue found: none of {gx.size} grid tiles is at least "
            f"{params.min_tissue:.0%} tissue (tissue covers {tissue.mask.mean():.1%} of the slide)",
            "check that the slide shows stained tissue; for faint stains lower "
            "tiling.tissue.min_saturation or tiling.min_tissue in the config",
        )
    coords = np.stack([np.floor(gx[keep]), np.floor(gy[keep])], axis=1).astype(np.int64)
    attrs = _base_attrs(slide, sample_id, params)
    attrs.mode = "grid"
    attrs.target_mpp = float(params.target_mpp)
    attrs.tile_px_level0 = float(size0)
    attrs.tissue_mask_source = tissue.source
    attrs.tissue_mask_mpp = float(tissue.mpp)
    log.info("%s: %d grid tiles of %d px at %.3g um/px (%.1f px level 0), %.1f%% tissue",
             sample_id, len(coords), params.tile_px, params.target_mpp, size0,
             100 * np.count_nonzero(tissue.mask) / max(tissue.mask.size, 1))
    return TileSet(coords=coords, attrs=attrs, spot_ids=None,
                   extra={"tissue_fraction": frac[keep].astype(np.float32)})


#: A tile counts as inside a region when it is, give or take this many level-0 pixels: region
#: boxes written with two decimals (``slide2expr pseudobulk``) fall on the grid's float edges.
EDGE_TOLERANCE = 0.5


def _within_bounds(starts: np.ndarray, bounds: tuple[float, float], size0: float) -> np.ndarray:
    """The grid starts whose tiles can lie inside ``[lo, hi]``."""
    lo, hi = bounds
    return starts[(starts >= lo - EDGE_TOLERANCE) & (starts + size0 <= hi + EDGE_TOLERANCE)]


def tiles_inside(region: Any, x: np.ndarray, y: np.ndarray, size0: float) -> np.ndarray:
    """Which square tiles (top-left ``x, y``, edge ``size0``) lie wholly inside ``region``."""
    import shapely

    if len(x) == 0:
        return np.zeros(0, dtype=bool)
    tol = EDGE_TOLERANCE
    boxes = shapely.box(x + tol, y + tol, x + size0 - tol, y + size0 - tol)
    return np.asarray(shapely.covers(region, boxes), dtype=bool)


def spots_inside(region: Any, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Which points (spot centres, level-0 px) lie inside ``region`` (boundary included)."""
    import shapely

    return np.asarray(shapely.covers(region, shapely.points(x, y)), dtype=bool)


def spot_tiles(
    slide: Slide, spots: pd.DataFrame, sample_id: str, params: TilingParams, *, source: str
) -> TileSet:
    """One square patch of ``spot_diameter_um`` centred on each spot.

    Parameters
    ----------
    spots
        Columns ``spot_id``, ``x``, ``y``: spot centres in level-0 pixels.
    source
        The spot table's path, named in errors.

    Raises
    ------
    InputError
        When there are no spots, duplicate IDs, or centres outside the slide.
    """
    assert slide.mpp is not None
    if spots.empty:
        raise InputError(source, "has no spots (with counts) for this slide",
                         "check the spots and counts files of this sample in the sample sheet")
    dup = spots["spot_id"].duplicated()
    if dup.any():
        raise InputError(source, f"{int(dup.sum())} duplicate spot IDs (e.g. "
                         f"{spots.loc[dup, 'spot_id'].iloc[0]!r})", "make spot IDs unique")
    w0, h0 = slide.dimensions
    x, y = spots["x"].to_numpy(float), spots["y"].to_numpy(float)
    outside = (x < 0) | (y < 0) | (x >= w0) | (y >= h0) | ~np.isfinite(x) | ~np.isfinite(y)
    if outside.any():
        raise InputError(source, f"{int(outside.sum())} of {len(spots)} spot centres lie outside "
                         f"the slide ({w0} x {h0} px), e.g. spot {spots['spot_id'][outside].iloc[0]!r}",
                         "check that the spot table belongs to this slide and is in full-resolution "
                         "level-0 pixels")
    size0 = params.spot_diameter_um / slide.mpp
    coords = np.stack([np.floor(x - size0 / 2), np.floor(y - size0 / 2)], axis=1).astype(np.int64)
    attrs = _base_attrs(slide, sample_id, params)
    attrs.mode = "spots"
    attrs.target_mpp = float(params.spot_diameter_um / params.tile_px)
    attrs.tile_px_level0 = float(size0)
    attrs.spot_diameter_um = float(params.spot_diameter_um)
    attrs.spots_table = str(source)
    log.info("%s: %d spot patches of %.0f um (%.1f px level 0)", sample_id, len(coords),
             params.spot_diameter_um, size0)
    return TileSet(coords=coords, attrs=attrs, spot_ids=spots["spot_id"].astype(str).to_numpy(),
                   extra={"centers": np.stack([x, y], axis=1)})
