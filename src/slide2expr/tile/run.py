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


@dataclass(frozen=True)
class TileTarget:
    """One sample cut from a slide and the files it gets.

    Attributes
    ----------
    sample_id
        The sample sheet's ID.
    out
        Grid tiles file to write.
    qc
        QC image to write, or None.
    spots_out
        Spot tiles file to write (spot mode), or None.
    roi, roi_units
        The sample's region (the sheet's ``roi`` cell and its units), or None for the whole
        slide.
    """

    sample_id: str
    out: Path
    qc: Path | None = None
    spots_out: Path | None = None
    roi: str | None = None
    roi_units: str = "px"


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
    target = TileTarget(sample_id, out, qc=qc, spots_out=spots_out, roi=roi, roi_units=roi_units)
    tile_slide_samples(slide, [target], params=params, spots=spots, counts=counts,
                       sheet_mpp=sheet_mpp, default_mpp=default_mpp, qc_max_px=qc_max_px)


def tile_slide_samples(
    slide: Path,
    targets: list[TileTarget],
    *,
    params: TilingParams,
    spots: Path | None = None,
    counts: Path | None = None,
    sheet_mpp: float | None = None,
    default_mpp: float | None = None,
    qc_max_px: int = 2048,
) -> None:
    """Tile several samples of one slide (its regions) with one slide open and one tissue
    mask: each gets the files :func:`tile_slide` would write for it alone.

    Parameters
    ----------
    slide
        The slide file.
    targets
        The samples and their files; several only when each has its own ``roi``.
    params, spots, counts, sheet_mpp, default_mpp, qc_max_px
        As in :func:`tile_slide`; ``spots`` and ``counts`` are shared by every target (one
        slide, one spot table), each target keeping the spots inside its region.

    Raises
    ------
    InputError
        On a bad slide, spot table, sample ID or region (the first one found); nothing is
        written then, for any target.
    """
    _check_targets(targets, spots=spots)
    with open_slide(slide, sheet_mpp=sheet_mpp, default_mpp=default_mpp) as s:
        regions = [None if not t.roi else region_level0(s, t.roi, t.roi_units,
                                                        sample_id=t.sample_id)
                   for t in targets]
        _log_opened(s, targets[0].sample_id, params)
        tissue = compute_tissue(s, params.tissue)
        table = (None if spots is None else
                 read_spot_positions(spots, counts_path=counts, patch_um=params.spot_diameter_um))
        tiled = [_tile_target(s, tissue, t, region, params=params, table=table, spots=spots)
                 for t, region in zip(targets, regions, strict=True)]
        _write_targets(targets, tiled, qc_max_px=qc_max_px)


def _check_targets(targets: list[TileTarget], *, spots: Path | None) -> None:
    """Refuse bad sample IDs, spot outputs without a spot table (or the reverse), and
    several targets that are not all regions."""
    if not targets:
        raise InputError(None, "no sample to tile", "give --sample-id and --out")
    for t in targets:
        check_sample_id(t.sample_id, source=None)
        if (spots is None) != (t.spots_out is None):
            raise InputError(None, "--spots and --spots-out go together",
                             "give both (spot mode) or neither (grid only)")
    if len(targets) > 1 and not all(t.roi for t in targets):
        raise InputError(None, f"{len(targets)} samples of one slide but not each with a --roi",
                         "give one --roi per --sample-id (several samples of a slide are its "
                         "regions), or tile a whole slide as one sample")
    outs = [p for t in targets for p in (t.out, t.qc, t.spots_out) if p is not None]
    if len(set(outs)) != len(outs):
        raise InputError(outs[0].parent, "two samples would write the same file",
                         "give each --sample-id its own --out, --qc and --spots-out")


def _log_opened(s: Slide, sample_id: str, params: TilingParams) -> None:
    """Log the slide's description, warning when a Space Ranger image stands in for it."""
    log.info("opened %s", json.dumps(s.describe()))
    if isinstance(s, SpaceRangerImageSlide):
        log.warning("%s: no full-resolution image; %s", sample_id,
                    image_limits(s.spaceranger, patch_um=params.spot_diameter_um,
                                 tile_px=params.tile_px))


@dataclass
class _Tiled:
    """One sample's tissue, its grid tiles, its spot patches (spot mode) and its region."""

    tissue: TissueMap
    grid: TileSet
    spot_set: TileSet | None
    region: Any


def _tile_target(s: Slide, tissue: TissueMap, target: TileTarget, region: Any, *,
                 params: TilingParams, table: pd.DataFrame | None,
                 spots: Path | None) -> _Tiled:
    """Grid tiles and (with a spot ``table``) spot patches of one target of the open slide
    ``s``, kept to its ``region`` when it has one."""
    sample_id = target.sample_id
    grid = grid_tiles(s, tissue, sample_id, params, region=region)
    spot_set = None
    if table is not None:
        if region is not None:
            table = spots_in_region(table, region, sample_id=sample_id, source=spots)
        spot_set = spot_tiles(s, table, sample_id, params, source=str(spots))
    if region is not None:
        for tileset in (grid, spot_set):
            if tileset is not None:
                set_region_attrs(tileset.attrs, region, target.roi, target.roi_units)
    grid.attrs.mask_downsample = float(tissue.downsample)
    return _Tiled(tissue, grid, spot_set, region)


def _write_targets(targets: list[TileTarget], tiled: list[_Tiled], *, qc_max_px: int) -> None:
    """Every target's grid (and spot) tiles files, all together or none, and QC images."""
    files = [(one.grid if kind == "grid" else one.spot_set, path)
             for t, one in zip(targets, tiled, strict=True)
             for kind, path in (("grid", t.out), ("spots", t.spots_out)) if path is not None]
    with atomic_outputs(*(path for _, path in files)) as tmps:
        for (tileset, _), tmp in zip(files, tmps, strict=True):
            write_tiles(tmp, tileset)
        for target, one in zip(targets, tiled, strict=True):
            if target.qc is not None:
                draw_qc(one.tissue.image, one.tissue.downsample, one.tissue.mask, target.qc,
                        grid=one.grid, spots=one.spot_set, max_px=qc_max_px, region=one.region)
