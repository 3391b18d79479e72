"""``slide2expr export``: a run's results in other ecosystems' formats."""

from __future__ import annotations

from pathlib import Path

import typer

export_app = typer.Typer(help="Export results to other formats (SpatialData).",
                         no_args_is_help=True)


@export_app.command("spatialdata")
def spatialdata(
    predictions: Path = typer.Argument(..., help="Spot-mode predictions: "
                                                 "results/predictions/{head}.h5ad."),
    out: Path = typer.Option(..., "--out", "-o", help="SpatialData store to write (.zarr)."),
    tile_map: list[Path] = typer.Option([], "--tile-map",
                                        help="Tile maps heatmaps/{head}/{sample}.h5ad to add "
                                             "as tile shapes and a table (repeat)."),
) -> None:
    """Write a SpatialData zarr store: H&E images, spots (and tiles) as shapes, measured and
    predicted tables (needs the spatialdata extra)."""
    from slide2expr.export.spatialdata import write_spatialdata

    written = write_spatialdata(predictions, out, tile_maps=tile_map)
    typer.echo(f"wrote {written}")


def register(app: typer.Typer) -> None:
    """Add ``export`` (with ``export spatialdata``) to the CLI."""
    app.add_typer(export_app, name="export")
