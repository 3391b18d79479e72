"""``slide2expr pseudobulk``: a spot-mode sheet -> a region sheet and a bulk matrix."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from slide2expr.atomic import atomic_outputs
from slide2expr.errors import InputError
from slide2expr.inputs.expression.spatial import read_spot_counts
from slide2expr.inputs.samples import read_sample_sheet
from slide2expr.inputs.slides import open_slide
from slide2expr.inputs.spots import read_spot_positions
from slide2expr.pseudobulk.windows import Window, place_windows, window_tiles
from slide2expr.tile.grid import compute_tissue
from slide2expr.tile.tissue import TissueParams

log = logging.getLogger(__name__)

#: Columns of the region sheet, in order (``counts`` and ``spots`` keep the spot truth).
SHEET_COLUMNS = ("sample_id", "slide", "patient", "section", "mpp", "roi", "roi_units",
                 "counts", "spots")


@dataclass(frozen=True)
class PseudobulkParams:
    """How windows are placed.

    Attributes
    ----------
    window_um
        Window edge in micrometres, rounded to whole grid tiles (e.g. 600-1500).
    min_spots
        Fewest spots a window must hold to become a sample.
    min_tissue
        Smallest share of a window on tissue.
    tile_um
        The grid tile's edge in micrometres (``tiling.tile_px * tiling.target_mpp``): windows
        are whole numbers of tiles on the whole slide's grid.
    tile_min_tissue
        ``tiling.min_tissue``: a window needs at least one tile that the tile stage keeps.
    genes
        ``intersection`` (genes every section measured; default) or ``union`` (a gene a
        section lacks counts 0 there).
    """

    window_um: float = 1000.0
    min_spots: int = 10
    min_tissue: float = 0.25
    tile_um: float = 112.0
    tile_min_tissue: float = 0.5
    genes: str = "intersection"


def make_pseudobulk(sheet: str | Path, *, out_sheet: str | Path, out_expression: str | Path,
                    params: PseudobulkParams, root: str | Path | None = None,
                    tissue: TissueParams | None = None) -> pd.DataFrame:
    """Windows over every section of a spot-mode sheet as region samples.

    Parameters
    ----------
    sheet
        A spot-mode sample sheet (``counts`` and ``spots`` per section).
    out_sheet
        The region sheet to write (TSV): one row a window, columns :data:`SHEET_COLUMNS`,
        paths as the input sheet gave them (so the same ``data_root`` applies), ``patient``
        carried over, ``section`` = the input's ``sample_id``.
    out_expression
        The bulk matrix to write (TSV, regions x genes, first column ``sample_id``): the
        summed raw counts of each window's spots.
    params
        Window size and filters.
    root
        The config's ``data_root`` (relative paths of the sheet are under it).
    tissue
        Tissue detection, as the tile stage's (``tiling.tissue``).

    Returns
    -------
    pandas.DataFrame
        The region sheet.

    Raises
    ------
    InputError
        A sheet that is not spot mode, or a section with no window that qualifies; nothing is
        written then.
    """
    if params.genes not in ("intersection", "union"):
        raise InputError(None, f"genes {params.genes!r} is not intersection or union",
                         "use intersection (default) or union")
    raw = read_sample_sheet(sheet, mode="spot", check_files=False)
    resolved = read_sample_sheet(sheet, mode="spot", check_files=True, root=root)
    rows, profiles = [], []
    for sample in resolved.index:
        section_rows, section_profiles = _section(resolved.loc[sample], raw.loc[sample], params,
                                                  tissue or TissueParams(), sheet)
        rows += section_rows
        profiles += section_profiles
    region_sheet = pd.DataFrame(rows, columns=list(SHEET_COLUMNS))
    matrix = _combine(profiles, params.genes, index=region_sheet["sample_id"])
    with atomic_outputs(Path(out_sheet), Path(out_expression)) as (tmp_sheet, tmp_matrix):
        _write_sheet(region_sheet, tmp_sheet, sheet, params)
        matrix.to_csv(tmp_matrix, sep="\t", index_label="sample_id")
    log.info("%d regions from %d sections, %d genes -> %s, %s", len(region_sheet),
             len(resolved), matrix.shape[1], out_sheet, out_expression)
    return region_sheet


def _section(row: pd.Series, raw: pd.Series, params: PseudobulkParams, tissue: TissueParams,
             sheet: str | Path) -> tuple[list[dict[str, object]], list[pd.Series]]:
    """The windows of one section: sheet rows and summed-count profiles."""
    sample = str(row["sample_id"])
    mpp = row.get("mpp")
    sheet_mpp = None if mpp is None or pd.isna(mpp) or mpp == "" else float(mpp)
    positions = read_spot_positions(row["spots"], counts_path=row["counts"])
    counts = read_spot_counts(row["counts"])
    with open_slide(row["slide"], sheet_mpp=sheet_mpp) as slide:
        mask = compute_tissue(slide, tissue)
        assert slide.mpp is not None
        slide_mpp = float(slide.mpp)
        width, height = slide.dimensions
    windows = place_windows(
        positions[["x", "y"]].to_numpy(float), width=int(width), height=int(height),
        tile_size0=params.tile_um / slide_mpp,
        tiles_per_window=window_tiles(params.window_um, params.tile_um),
        mask=mask.mask, mask_downsample=mask.downsample, min_spots=params.min_spots,
        min_tissue=params.min_tissue, tile_min_tissue=params.tile_min_tissue)
    if not windows:
        raise InputError(sheet, f"section {sample}: no window of {params.window_um:g} um holds "
                         f"{params.min_spots} spots on tissue ({len(positions)} spots)",
                         "use a larger window_um or a smaller min_spots")
    spot_rows = counts.ids.get_indexer(positions["spot_id"].astype(str))
    matrix = counts.matrix
    rows, profiles = [], []
    for window in windows:
        rows.append(_sheet_row(window, raw, sample))
        summed = np.asarray(matrix[spot_rows[window.spot_index]].sum(axis=0)).ravel()
        profiles.append(pd.Series(summed, index=counts.genes, name=rows[-1]["sample_id"]))
    log.info("%s: %d windows of %d spots (median), %.0f um edge", sample, len(windows),
             int(np.median([len(w.spot_index) for w in windows])),
             (windows[0].x1 - windows[0].x0) * slide_mpp)
    return rows, profiles


def _sheet_row(window: Window, raw: pd.Series, section: str) -> dict[str, object]:
    return {
        "sample_id": f"{section}_r{window.row:02d}c{window.col:02d}",
        "slide": raw["slide"], "patient": raw["patient"], "section": section,
        "mpp": "" if pd.isna(raw.get("mpp", "")) else raw.get("mpp", ""),
        "roi": window.roi, "roi_units": "px", "counts": raw["counts"], "spots": raw["spots"],
    }


def _combine(profiles: list[pd.Series], how: str, *, index: pd.Series) -> pd.DataFrame:
    """Regions x genes, over the genes every section measured (or all of them, 0-filled)."""
    frame = pd.concat(profiles, axis=1, join="inner" if how == "intersection" else "outer")
    frame = frame.fillna(0).T
    frame.index = pd.Index(index)
    return frame.round().astype(np.int64)


def _write_sheet(frame: pd.DataFrame, path: Path, source: str | Path,
                 params: PseudobulkParams) -> None:
    header = (f"# slide2expr pseudobulk of {source}: windows of {params.window_um:g} um "
              f"({params.tile_um:g} um tiles), >= {params.min_spots} spots, >= "
              f"{params.min_tissue:.0%} tissue; roi in level-0 px\n")
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(header)
        frame.to_csv(handle, sep="\t", index=False)
