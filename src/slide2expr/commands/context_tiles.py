"""``slide2expr context-tiles``: context windows centred on a section's spots."""

from __future__ import annotations

from pathlib import Path

import typer


def context_tiles(
    spots: Path = typer.Argument(..., help="Spot tiles file (tiles/spots/{sample}.h5)."),
    um: float = typer.Option(..., "--um", help="Window edge in micrometres, e.g. 300."),
    out: Path = typer.Option(..., "--out", "-o", help="Context tiles .h5 to write "
                                                       "(tiles/ctx{um}/{sample}.h5)."),
) -> None:
    """Write one window of UM micrometres centred on every spot (padded past the edge)."""
    from slide2expr.contracts.tiles import read_tiles, write_tiles
    from slide2expr.tile.context import context_windows

    windows = context_windows(read_tiles(spots), um)
    write_tiles(out, windows)
    typer.echo(f"{out}: {len(windows)} windows of {um:g} um, "
               f"{windows.attrs['n_padded']} padded past the slide edge")


def register(app: typer.Typer) -> None:
    """Add ``context-tiles`` to the CLI."""
    app.command("context-tiles")(context_tiles)
