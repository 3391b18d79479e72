"""``slide2expr pseudobulk``: windows of spatial sections as region samples with summed counts."""

from __future__ import annotations

from pathlib import Path

import typer


def pseudobulk(
    samples: Path = typer.Argument(..., help="Spot-mode sample sheet (counts and spots)."),
    out_sheet: Path = typer.Option(..., "--out-sheet", help="Region sheet (TSV) to write."),
    out_expression: Path = typer.Option(..., "--out-expression",
                                        help="Bulk matrix (TSV, regions x genes) to write."),
    data_root: Path | None = typer.Option(None, help="Folder that relative sheet paths are "
                                                     "relative to (the config's data_root)."),
    window_um: float = typer.Option(1000.0, help="Window edge, um (rounded to whole tiles)."),
    min_spots: int = typer.Option(10, help="Fewest spots a window must hold."),
    min_tissue: float = typer.Option(0.25, help="Smallest share of a window on tissue."),
    tile_um: float = typer.Option(112.0, help="Grid tile edge, um (tile_px x target_mpp)."),
    tile_min_tissue: float = typer.Option(0.5, help="tiling.min_tissue: a window needs one "
                                                    "tile this much tissue."),
    genes: str = typer.Option("intersection", help="intersection or union of the sections' "
                                                   "genes."),
) -> None:
    """Turn a spot dataset into region samples: square windows over each section (on tissue,
    with at least MIN_SPOTS spots), each with the summed raw counts of its spots as its bulk
    profile. Writes the region sheet and the bulk matrix the bulk join reads."""
    from slide2expr.errors import InputError
    from slide2expr.pseudobulk import PseudobulkParams, make_pseudobulk

    if window_um <= 0 or tile_um <= 0 or min_spots < 1 or not 0 <= min_tissue <= 1:
        raise InputError(None, "window_um and tile_um must be positive, min_spots at least 1 "
                         "and min_tissue in [0, 1]", "fix the option")
    params = PseudobulkParams(window_um=window_um, min_spots=min_spots, min_tissue=min_tissue,
                              tile_um=tile_um, tile_min_tissue=tile_min_tissue, genes=genes)
    sheet = make_pseudobulk(samples, out_sheet=out_sheet, out_expression=out_expression,
                            params=params, root=data_root)
    per_section = sheet.groupby("section").size()
    typer.echo(f"{out_sheet}: {len(sheet)} regions ("
               + ", ".join(f"{s} {n}" for s, n in per_section.items()) + f"); {out_expression}")


def register(app: typer.Typer) -> None:
    """Add ``pseudobulk`` to the CLI."""
    app.command("pseudobulk")(pseudobulk)
