"""The tile stage for one slide: tissue mask, tissue grid, spot patches, QC image."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from slide2expr.atomic import atomic_outputs
from slide2expr.contracts.tiles import write_tiles
from slide2expr.errors import InputError
from slide2expr.inputs.samples import check_sample_id
from slide2expr.inputs.slides import open_slide
from slide2expr.inputs.spots import read_spot_positions
from slide2expr.tile.grid import TilingParams, compute_tissue, grid_tiles, spot_tiles
from slide2expr.tile.qc import draw_qc

log = logging.getLogger(__name__)


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
        log.info("opened %s", json.dumps(s.describe()))
        tissue = compute_tissue(s, params.tissue)
        grid = grid_tiles(s, tissue, sample_id, params)
        spot_set = None
        if spots is not None:
            table = read_spot_positions(spots, counts_path=counts)
            spot_set = spot_tiles(s, table, sample_id, params, source=str(spots))
        grid.attrs["mask_downsample"] = float(tissue.downsample)
        outputs = [out] + ([spots_out] if spots_out is not None else [])
        with atomic_outputs(*outputs) as tmps:
            write_tiles(tmps[0], grid)
            if spot_set is not None:
                write_tiles(tmps[1], spot_set)
            if qc is not None:
                draw_qc(tissue.image, tissue.downsample, tissue.mask, qc, grid=grid,
                        spots=spot_set, max_px=qc_max_px)
