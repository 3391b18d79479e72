"""``slide2expr demo-data``: write the synthetic demo cohort."""

from __future__ import annotations

from pathlib import Path

import typer


def demo_data(
    out_dir: Path = typer.Argument(..., help="Directory to write the cohort into."),
    n_slides: int = typer.Option(6, help="Number of slides (one patient each)."),
    size_px: int = typer.Option(4096, help="Level-0 edge of each slide, px."),
    seed: int = typer.Option(0, help="Random seed: the same seed gives the same files."),
) -> None:
    """Write a small synthetic cohort with a planted signal and its ground truth."""
    from slide2expr.demo.cohort import DemoSpec, make_demo_cohort

    make_demo_cohort(out_dir, DemoSpec(n_slides=n_slides, size_px=size_px, seed=seed))
    typer.echo(f"demo cohort written to {out_dir}")


def register(app: typer.Typer) -> None:
    """Add ``demo-data`` to the CLI."""
    app.command("demo-data")(demo_data)
