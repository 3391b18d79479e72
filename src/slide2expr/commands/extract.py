"""``slide2expr extract`` (tiles -> features) and ``slide2expr encoders`` (the registry)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer

from slide2expr.commands._config import config_json_option, section
from slide2expr.keys import DEFAULT_ENCODER

if TYPE_CHECKING:
    from slide2expr.extract.options import ExtractOptions

#: Flag -> key of the ``extract`` section.
EXTRACT_FLAGS = {"batch_size": "batch_size", "num_workers": "num_workers", "device": "device",
                 "dtype": "dtype", "stain_normalize": "stain_normalize",
                 "stain_reference": "stain_reference", "views": "views"}


def extract(
    ctx: typer.Context,
    tiles: list[Path] = typer.Argument(
        ..., help="Tiles files of one slide from `slide2expr tile` / `context-tiles` (.h5): "
                  "spots, ctxN, grid, grid_ctxN; all are embedded in one pass."),
    out: list[Path] = typer.Option(
        ..., "--out", "-o",
        help="Features file to write (.h5), once per tiles file, in the same order."),
    encoder: str = typer.Option(DEFAULT_ENCODER, "--encoder", "-e",
                                help="Encoder name (see `slide2expr encoders`)."),
    weights: Path | None = typer.Option(
        None, "--weights", help="Local weights (.safetensors, or a tensors-only .pt/.pth/.bin)."),
    slide: Path | None = typer.Option(None, "--slide",
                                      help="Slide file (default: the one the tiles file names)."),
    batch_size: int = typer.Option(64, "--batch-size", min=1, help="Tiles per forward pass."),
    num_workers: int | None = typer.Option(
        None, "--num-workers", min=0,
        help="Reader processes (default: on GPU threads - 1, 1 to 8; on CPU threads // 8, 0 below 8 cores: the main process reads)."),
    threads: int | None = typer.Option(
        None, "--threads", min=1, help="CPU cores for this job (default: all available)."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
    dtype: str = typer.Option("float32", "--dtype", help="Stored feature type: float32 or float16."),
    stain_normalize: str = typer.Option(
        "none", "--stain-normalize",
        help="Stain normalisation of every tile before embedding: none, macenko or reinhard."),
    stain_reference: str | None = typer.Option(
        None, "--stain-reference",
        help="H&E image to fit the stain reference on (default: the fixed reference)."),
    views: list[str] = typer.Option(
        [], "--view",
        help="Augmentation view embedded beside each tile (repeatable): rot90, rot180, rot270, "
             "flip, flip_rot90, flip_rot180, flip_rot270, hed_light, hed_strong."),
    resume: bool = typer.Option(True, "--resume/--no-resume",
                                help="Continue a partial file left by an interrupted run."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
    config_json: str | None = config_json_option(),
) -> None:
    """Embed every tile of one slide with a pretrained encoder: all its tilings in one pass
    (one slide read, one stain fit, one encoder start), one features file per tiling."""
    from slide2expr.console import progress_wanted
    from slide2expr.errors import InputError
    from slide2expr.extract.options import ExtractOptions

    cfg = section(ctx, "extract", config_json, EXTRACT_FLAGS)
    if len(tiles) != len(out):
        raise InputError(tiles[0], f"{len(tiles)} tiles files but {len(out)} --out files",
                         "give one --out per tiles file, in the same order")
    _extract_locked(list(zip(tiles, out, strict=True)), ExtractOptions(
        encoder=encoder, weights=weights, slide=slide, threads=threads, resume=resume,
        progress=progress_wanted(progress), **{key: cfg[key] for key in EXTRACT_FLAGS.values()}))


def _extract_locked(jobs: list[tuple[Path, Path]], options: ExtractOptions) -> None:
    """Extract ``jobs`` (tiles, out) holding every output's lock, taken before the slow
    set-up (torch, the encoder): a second run of the same output stops at once, naming the
    first one's process."""
    import contextlib

    from slide2expr.atomic import output_lock

    with contextlib.ExitStack() as locks:
        for _, path in jobs:
            locks.enter_context(output_lock(path))
        from slide2expr.extract.run import extract_tilings

        results = extract_tilings(jobs, options)
    for result in results:
        typer.echo(f"{result.path}: {result.n_tiles} tiles ({result.n_computed} computed), "
                   f"{result.tiles_per_s:.1f} tiles/s on {result.device}", err=True)


def encoders(
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """List the encoders: name, embedding size, input size, weights available offline."""
    import json
    from dataclasses import asdict

    from slide2expr.extract.encoders import list_encoders

    rows = list_encoders()
    if as_json:
        typer.echo(json.dumps([asdict(r) for r in rows], indent=2))
        return
    typer.echo(f"{'name':<20} {'dim':>5} {'px':>4}  {'offline':<7}  description")
    for r in rows:
        typer.echo(f"{r.name:<20} {r.embed_dim:>5} {r.input_px:>4}  {'yes' if r.offline else 'no':<7}"
                   f"  {r.description}")
    typer.echo("\nAlso: timm-ARCH for any timm architecture; --weights FILE loads local weights "
               "into any of them.")


def register(app: typer.Typer) -> None:
    """Add ``extract`` and ``encoders`` to the CLI."""
    app.command("extract")(extract)
    app.command("encoders")(encoders)
