"""The tile stage for one slide: tissue mask, tissue grid, spot patches, QC image."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from slide2expr.atomic import atomic_outputs
from slide2expr.contracts.tiles import TileAttrs, TileSet, write_tiles
from slide2expr.errors import InputError
from slide2expr.inputs.regions import check_region_inside, parse_region
from slide2expr.inputs.samples import check_sample_id
from slide2expr.inputs.slides import Slide, SpaceRangerImageSlide, open_slide
from slide2expr.inputs.spaceranger import image_limits
from slide2expr.inputs.spots import read_spot_positions
from slide2expr.tile.grid import (
    TilingParams,
    TissueMap,
    compute_tissue,
    grid_tiles,
    spot_tiles,
    spots_inside,
)
from slide2expr.tile.qc import draw_qc

log = logging.getLogger(__name__)


def region_level0(slide: Slide, roi: str, units: str, *, sample_id: str) -> Any:
    """The sample's region in level-0 pixels, refused unless it lies inside the slide."""
    region = parse_region(roi, units=units, source=None).in_level0(slide.mpp)
    w0, h0 = slide.dimensions
    check_region_inside(region, width=int(w0), height=int(h0), sample=sample_id,
                        slide=slide.path)
    return region


def spots_in_region(table: pd.DataFrame, region: Any, *, sample_id: str,
                    source: Path) -> pd.DataFrame:
    """The spots whose centres lie inside ``region``; refused when there are none."""
    inside = spots_inside(region, table["x"].to_numpy(float), table["y"].to_numpy(float))
    if not inside.any():
        raise InputError(source, f"none of its {len(table)} spots lies inside the region of "
                         f"sample {sample_id}", "check the roi (level-0 pixels) against the "
                         "spot positions")
    log.info("%s: %d of %d spots inside the region", sample_id, int(inside.sum()), len(table))
    return table[inside].reset_index(drop=True)


def set_region_attrs(attrs: TileAttrs, region: Any, roi: str, units: str) -> None:
    """Record a region sample in its tiling attrs: its polygon (WKT, level-0 px) and the
    sheet's cell."""
    attrs.roi = region.wkt
    attrs.roi_spec = roi
    attrs.roi_units = units
    attrs.roi_bounds = [float(v) for v in region.bounds]


def tile_slide(
    slide: Path,
    *,
    sample_id: str,
    out: Path,
    params: TilingParams,
    qc: Path | None = None,
    spots: Path | None = None,
    counts: Path | None = None,
    spots_out: Path | None = None,
    sheet_mpp: float | None = None,
    default_mpp: float | None = None,
    qc_max_px: int = 2048,
    roi: str | None = None,
    roi_units: str = "px",
) -> None:
    """Detect tissue, tile it on a grid, and (spot mode) place a patch on every spot.

    Parameters
    ----------
    slide
        The slide file.
    sample_id
        The sample sheet's ID of the slide.
    out
        Grid tiles file to write (:mod:`slide2expr.contracts.tiles`).
    params
        Tiling and tissue parameters.
    qc
        QC image to write, or None.
    spots, counts, spots_out
        Spot mode: the spot table, the counts (only spots with counts get patches) and the
        spot tiles file to write. ``spots`` and ``spots_out`` go together.
    sheet_mpp, default_mpp
        The sample sheet's and the config's fallback um/px, used when the slide has none.
    qc_max_px
        Longest side of the QC image.
    roi, roi_units
        A region of the slide (the sample sheet's ``roi`` cell and its units,
        :mod:`slide2expr.inputs.regions`): only grid tiles wholly inside it and spots whose
        centre is inside it are kept, so the region is a sample of its own. The region must
        lie inside the slide and hold at least one tissue tile.

    Raises
    ------
    InputError
        On a bad slide, spot table or sample ID; nothing is written then.
    """
    check_sample_id(sample_id, source=None)
    if (spots is None) != (spots_out is None):
        raise InputError(None, "--spots and --spots-out go together",
                         "give both (spot mode) or neither (grid only)")
    with open_slide(slide, sheet_mpp=sheet_mpp, default_mpp=default_mpp) as s:
        tiled = _tile_open_slide(s, sample_id=sample_id, params=params, spots=spots,
                                 counts=counts, roi=roi, roi_units=roi_units)
        outputs = [out] + ([spots_out] if spots_out is not None else [])
        _write_tilings(outputs, tiled, qc=qc, qc_max_px=qc_max_px)


@dataclass
class _Tiled:
    """One slide's tissue, its grid tiles, its spot patches (spot mode) and its region."""

    tissue: TissueMap
    grid: TileSet
    spot_set: TileSet | None
    region: Any


def _tile_open_slide(s: Slide, *, sample_id: str, params: TilingParams, spots: Path | None,
                     counts: Path | None, roi: str | None, roi_units: str) -> _Tiled:
    """Tissue, grid tiles and (with ``spots``) spot patches of the open slide ``s``, kept
    to the region ``roi`` when one is given."""
    log.info("opened %s", json.dumps(s.describe()))
    if isinstance(s, SpaceRangerImageSlide):
        log.warning("%s: no full-resolution image; %s", sample_id,
                    image_limits(s.spaceranger, patch_um=params.spot_diameter_um,
                                 tile_px=params.tile_px))
    region = None if not roi else region_level0(s, roi, roi_units, sample_id=sample_id)
    tissue = compute_tissue(s, params.tissue)
    grid = grid_tiles(s, tissue, sample_id, params, region=region)
    spot_set = None
    if spots is not None:
        table = read_spot_positions(spots, counts_path=counts,
                                    patch_um=params.spot_diameter_um)
        if region is not None:
            table = spots_in_region(table, region, sample_id=sample_id, source=spots)
        spot_set = spot_tiles(s, table, sample_id, params, source=str(spots))
    if region is not None:
        for tileset in (grid, spot_set):
            if tileset is not None:
                set_region_attrs(tileset.attrs, region, roi, roi_units)
    grid.attrs.mask_downsample = float(tissue.downsample)
    return _Tiled(tissue, grid, spot_set, region)


def _write_tilings(outputs: list[Path], tiled: _Tiled, *, qc: Path | None,
                   qc_max_px: int) -> None:
    """The grid (and spot) tiles files, together or not at all, and the QC image."""
    tissue, grid, spot_set = tiled.tissue, tiled.grid, tiled.spot_set
    with atomic_outputs(*outputs) as tmps:
        write_tiles(tmps[0], grid)
        if spot_set is not None:
            write_tiles(tmps[1], spot_set)
        if qc is not None:
            draw_qc(tissue.image, tissue.downsample, tissue.mask, qc, grid=grid,
                    spots=spot_set, max_px=qc_max_px, region=tiled.region)
