"""``slide2expr tile``: tissue grid and spot patches for one slide."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from slide2expr.commands._config import config_json_option, section

if TYPE_CHECKING:
    from slide2expr.tile.run import TileTarget

log = logging.getLogger(__name__)


#: Flag -> key of the ``tiling`` section.
TILING_FLAGS = {
    "target_mpp": "target_mpp", "tile_px": "tile_px", "min_tissue": "min_tissue",
    "spot_diameter_um": "spot_diameter_um", "qc_max_px": "qc_max_px",
    "mask_mpp": "tissue.mask_mpp", "min_saturation": "tissue.min_saturation",
    "closing_um": "tissue.closing_um", "min_object_um2": "tissue.min_object_um2",
    "max_hole_um2": "tissue.max_hole_um2",
}


def tile(
    ctx: typer.Context,
    slide: Path = typer.Argument(..., help="Slide file (SVS, NDPI, MRXS, TIFF, DICOM, JPEG...)."),
    sample_id: list[str] = typer.Option(
        ..., "--sample-id", help="Sample ID (letters, digits, ._-); repeat it, with one --roi, "
                                 "--out, --qc (and --spots-out) each, for several regions."),
    out: list[Path] = typer.Option(..., "--out", "-o",
                                   help="Grid tiles .h5 to write, one per --sample-id."),
    qc: list[Path] = typer.Option([], "--qc", help="QC PNG to write, one per --sample-id."),
    spots: Path | None = typer.Option(None, "--spots", help="Spot table (spot mode)."),
    counts: Path | None = typer.Option(None, "--counts",
                                       help="Spot counts; only spots with counts get patches."),
    spots_out: list[Path] = typer.Option([], "--spots-out",
                                         help="Spot patches .h5 to write, one per --sample-id."),
    mpp: float | None = typer.Option(None, "--mpp", help="Sample sheet mpp (used if the slide has none)."),
    default_mpp: float | None = typer.Option(None, "--default-mpp", help="Config default_slide_mpp."),
    target_mpp: float = typer.Option(0.5, help="Grid tile resolution, um/px."),
    tile_px: int = typer.Option(224, help="Tile edge in pixels at the read-out resolution."),
    min_tissue: float = typer.Option(0.5, help="Minimum tissue fraction of a grid tile."),
    spot_diameter_um: float = typer.Option(112.0, help="Spot patch edge, um."),
    mask_mpp: float = typer.Option(8.0, help="Resolution of the tissue mask, um/px."),
    min_saturation: float = typer.Option(0.07, help="Saturation floor for tissue."),
    closing_um: float = typer.Option(40.0, help="Morphological closing radius, um."),
    min_object_um2: float = typer.Option(20000.0, help="Smallest tissue fragment kept, um^2."),
    max_hole_um2: float = typer.Option(20000.0, help="Largest hole filled, um^2."),
    qc_max_px: int = typer.Option(2048, help="Longest side of the QC image."),
    roi: list[str] = typer.Option([], "--roi", help="Tile only this region: x0,y0,x1,y1, a "
                                  "WKT polygon or FILE.geojson:NAME (the sheet's roi); one per "
                                  "--sample-id."),
    roi_units: list[str] = typer.Option(
        [], "--roi-units", help="Units of --roi: px (level 0) or um; once for all, or one per "
                                "--roi."),
    config_json: str | None = config_json_option(),
) -> None:
    """Detect tissue, tile it on a grid, and (spot mode) place a patch on every spot.

    Several regions of one slide (``--sample-id``, ``--roi``, ``--out``, ``--qc`` repeated, in
    the same order) are tiled with one slide open and one tissue mask, each into its own files.
    """
    from slide2expr.tile import TilingParams, TissueParams
    from slide2expr.tile.run import tile_slide_samples

    cfg = section(ctx, "tiling", config_json, TILING_FLAGS)
    params = TilingParams(
        target_mpp=cfg["target_mpp"], tile_px=cfg["tile_px"], min_tissue=cfg["min_tissue"],
        spot_diameter_um=cfg["spot_diameter_um"], tissue=TissueParams(**cfg["tissue"]),
    )
    targets = tile_targets(sample_id, out, qc=qc, spots_out=spots_out, roi=roi,
                           roi_units=roi_units)
    tile_slide_samples(slide, targets, params=params, spots=spots, counts=counts, sheet_mpp=mpp,
                       default_mpp=default_mpp, qc_max_px=cfg["qc_max_px"])


def tile_targets(sample_ids: list[str], outs: list[Path], *, qc: list[Path],
                 spots_out: list[Path], roi: list[str], roi_units: list[str]) -> list[TileTarget]:
    """The samples of the command line, their repeated options zipped in order; refused in
    one line when the counts do not match."""
    from slide2expr.errors import InputError
    from slide2expr.tile.run import TileTarget

    n = len(sample_ids)
    given = {"--out": outs, "--qc": qc, "--spots-out": spots_out, "--roi": roi}
    for flag, values in given.items():
        if len(values) != n and (flag == "--out" or values):
            raise InputError(None, f"{n} --sample-id but {len(values)} {flag}",
                             f"give one {flag} per --sample-id, in the same order")
    if len(roi_units) > 1 and len(roi_units) != len(roi):
        raise InputError(None, f"{len(roi)} --roi but {len(roi_units)} --roi-units",
                         "give --roi-units once for all regions or once per --roi")
    units = roi_units if len(roi_units) > 1 else (roi_units or ["px"]) * n
    return [TileTarget(sample, out, qc=qc[k] if qc else None,
                       spots_out=spots_out[k] if spots_out else None,
                       roi=roi[k] if roi else None, roi_units=units[k])
            for k, (sample, out) in enumerate(zip(sample_ids, outs, strict=True))]


def register(app: typer.Typer) -> None:
    """Add ``tile`` to the CLI."""
    app.command("tile")(tile)
