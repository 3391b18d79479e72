"""``slide2expr context-tiles``: context windows centred on a section's spots (or, for
heatmaps of context heads, on its grid tiles)."""

from __future__ import annotations

from pathlib import Path

import typer


def context_tiles(
    spots: Path = typer.Argument(..., help="Spot tiles file (tiles/spots/{sample}.h5), or a "
                                           "grid tiles file (tiles/grid/{sample}.h5)."),
    um: float = typer.Option(..., "--um", help="Window edge in micrometres, e.g. 300."),
    out: Path = typer.Option(..., "--out", "-o", help="Context tiles .h5 to write "
                                                       "(tiles/ctx{um}/ or tiles/grid_ctx{um}/)."),
) -> None:
    """Write one window of UM micrometres centred on every spot, or on every grid tile of a
    grid tiles file (padded past the edge)."""
    from slide2expr.contracts.tiles import read_tiles, write_tiles
    from slide2expr.tile.context import context_windows, grid_context_windows

    tiles = read_tiles(spots)
    make = grid_context_windows if tiles.attrs.mode == "grid" else context_windows
    windows = make(tiles, um)
    write_tiles(out, windows)
    typer.echo(f"{out}: {len(windows)} windows of {um:g} um, "
               f"{windows.attrs.n_padded} padded past the slide edge")


def register(app: typer.Typer) -> None:
    """Add ``context-tiles`` to the CLI."""
    app.command("context-tiles")(context_tiles)
