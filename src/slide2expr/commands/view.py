"""``slide2expr view``: the zoomable slide viewer with predicted-expression layers."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from slide2expr.commands._config import config_json_option, section

if TYPE_CHECKING:
    from slide2expr.viewer import ViewerOptions

log = logging.getLogger(__name__)


#: Flag -> key of the ``heatmap`` section (the viewer colours as the heatmaps do).
VIEW_FLAGS = {"clip_percentiles": "clip_percentiles"}


def _slide_overrides(values: list[str] | None) -> dict[str, Path]:
    from slide2expr.errors import InputError

    out: dict[str, Path] = {}
    for value in values or []:
        sample, sep, path = value.partition("=")
        if not sep or not sample or not path:
            raise InputError(None, f"--slide {value!r} is not SAMPLE=PATH",
                             "pass e.g. --slide C2=data/C2_HE.jpg")
        out[sample] = Path(path)
    return out


def view(
    ctx: typer.Context,
    results: Path = typer.Argument(Path("results"), help="The workflow's results folder "
                                   "(heatmaps/{head}/{sample}.h5ad tile maps, report, predictions)."),
    out_dir: Path | None = typer.Option(None, "--out-dir", "-o",
                                        help="Viewer folder (default: RESULTS/viewer)."),
    head: str | None = typer.Option(None, "--head", help="Head to show (default: the only one)."),
    genes: list[str] | None = typer.Option(
        None, "--genes", "-g", help="Only these genes (repeat or comma-separate; the first opens "
                                    "the page). Default: every predicted gene."),
    samples: list[str] | None = typer.Option(None, "--samples",
                                             help="Only these slides (repeat or comma-separate)."),
    slide: list[str] | None = typer.Option(
        None, "--slide", help="SAMPLE=PATH: the slide file when not the one the tile map names."),
    predictions: Path | None = typer.Option(
        None, "--predictions", help="Spot-mode predictions/{head}.h5ad (measured at the spots); "
                                    "default: RESULTS/predictions/{head}.h5ad when present."),
    report: Path | None = typer.Option(None, "--report", help="The report's genes.tsv (r per "
                                       "gene); default: RESULTS/report/{head}/genes.tsv."),
    scale: Path | None = typer.Option(None, "--scale", help="Cohort scale table "
                                      "(heatmaps/{head}/scale.tsv) for the cohort-wide option."),
    pyramid_backend: str = typer.Option("auto", "--pyramid-backend",
                                        help="auto, vips (pyvips dzsave) or deepzoom (OpenSlide)."),
    clip_percentiles: tuple[float, float] = typer.Option(
        (1.0, 99.0), "--clip-percentiles", help="Colour limits: these percentiles."),
    default_mpp: float | None = typer.Option(None, "--default-mpp",
                                             help="um/px of slides with no resolution anywhere."),
    serve: bool = typer.Option(False, "--serve", help="Serve the viewer on 127.0.0.1 and print "
                                                      "its URL (Ctrl-C stops)."),
    no_build: bool = typer.Option(False, "--no-build", help="With --serve: serve the viewer "
                                                            "already built, do not rebuild."),
    port: int = typer.Option(0, "--port", min=0, max=65535, help="Port for --serve (0: any free)."),
    config_json: str | None = config_json_option(),
) -> None:
    """Zoomable slide viewer (OpenSeadragon): H&E pyramid + predicted-expression layers."""
    from slide2expr.draw import split_gene_args
    from slide2expr.errors import InputError

    out = out_dir or results / "viewer"
    if no_build:
        if not serve:
            raise InputError(None, "--no-build does nothing without --serve", "add --serve")
        if not (out / "index.html").is_file():
            raise InputError(out, "holds no built viewer (index.html)", "drop --no-build")
    else:
        _build(results, out, _options(
            ctx, config_json, default_mpp=default_mpp, head=head,
            genes=split_gene_args(genes), samples=split_gene_args(samples),
            slides=_slide_overrides(slide), predictions=predictions, report=report,
            scale=scale, pyramid_backend=pyramid_backend))
    if serve:
        _serve(out, port)


def _options(ctx: typer.Context, config_json: str | None, *, default_mpp: float | None,
             **given: Any) -> ViewerOptions:
    """The viewer's options: ``given`` (from flags), colour limits from the ``heatmap``
    section, the outline's tissue settings from ``tiling.tissue`` (as the heatmaps'), and
    ``default_slide_mpp`` unless ``--default-mpp`` is given; bad percentiles refused."""
    from slide2expr.draw import check_percentiles
    from slide2expr.settings import parse_config_json
    from slide2expr.tile.tissue import TissueParams
    from slide2expr.viewer import ViewerOptions

    cfg = section(ctx, "heatmap", config_json, VIEW_FLAGS)
    tissue = section(ctx, "tiling", config_json, {})["tissue"]
    clip_percentiles = tuple(cfg["clip_percentiles"])
    if default_mpp is None:
        default_mpp = parse_config_json(config_json).get("default_slide_mpp")
    check_percentiles(clip_percentiles)
    return ViewerOptions(**given, clip_percentiles=clip_percentiles,
                         tissue=TissueParams(**tissue), default_mpp=default_mpp)


def _build(results: Path, out: Path, options: ViewerOptions) -> None:
    """Build the viewer into ``out``; a full disk or I/O error is one line and status 1."""
    from slide2expr.viewer import build_viewer

    try:
        result = build_viewer(results, out, options=options)
    except OSError as exc:  # disk full, I/O error: the machine, not the input
        typer.echo(f"error: {out}: {exc.strerror or exc} while writing the viewer; nothing "
                   f"was left in {out}. Fix: free space or pass --out-dir elsewhere", err=True)
        sys.exit(1)
    total = sum(s.bytes for s in result.slides)
    typer.echo(f"viewer of {len(result.slides)} slide(s) x {len(result.genes)} genes "
               f"({result.head}): {result.index} ({total / 1e6:.1f} MB, "
               f"{result.seconds:.1f} s)", err=True)


def _serve(out: Path, port: int) -> None:
    """Serve the viewer in ``out`` on ``port`` until Ctrl-C."""
    from slide2expr.viewer import make_server, viewer_url

    server = make_server(out, port)
    typer.echo(f"serving {out} at {viewer_url(server)} (Ctrl-C stops)")
    sys.stdout.flush()
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


def register(app: typer.Typer) -> None:
    """Add ``view`` to the CLI."""
    app.command("view")(view)
