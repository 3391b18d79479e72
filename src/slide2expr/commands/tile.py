"""``slide2expr tile``: tissue grid and spot patches for one slide."""

from __future__ import annotations

import logging
from pathlib import Path

import typer

from slide2expr.commands._config import config_json_option, section

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
    sample_id: str = typer.Option(..., "--sample-id", help="Sample ID (letters, digits, ._-)."),
    out: Path = typer.Option(..., "--out", "-o", help="Grid tiles .h5 to write."),
    qc: Path | None = typer.Option(None, "--qc", help="QC PNG to write."),
    spots: Path | None = typer.Option(None, "--spots", help="Spot table (spot mode)."),
    counts: Path | None = typer.Option(None, "--counts",
                                       help="Spot counts; only spots with counts get patches."),
    spots_out: Path | None = typer.Option(None, "--spots-out", help="Spot patches .h5 to write."),
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
    roi: str | None = typer.Option(None, "--roi", help="Tile only this region: x0,y0,x1,y1, a "
                                   "WKT polygon or FILE.geojson:NAME (the sheet's roi)."),
    roi_units: str = typer.Option("px", "--roi-units", help="Units of --roi: px (level 0) or um."),
    config_json: str | None = config_json_option(),
) -> None:
    """Detect tissue, tile it on a grid, and (spot mode) place a patch on every spot."""
    from slide2expr.tile import TilingParams, TissueParams, tile_slide

    cfg = section(ctx, "tiling", config_json, TILING_FLAGS)
    params = TilingParams(
        target_mpp=cfg["target_mpp"], tile_px=cfg["tile_px"], min_tissue=cfg["min_tissue"],
        spot_diameter_um=cfg["spot_diameter_um"], tissue=TissueParams(**cfg["tissue"]),
    )
    tile_slide(slide, sample_id=sample_id, out=out, params=params, qc=qc, spots=spots,
               counts=counts, spots_out=spots_out, sheet_mpp=mpp, default_mpp=default_mpp,
               qc_max_px=cfg["qc_max_px"], roi=roi, roi_units=roi_units)


def register(app: typer.Typer) -> None:
    """Add ``tile`` to the CLI."""
    app.command("tile")(tile)
