"""``slide2expr heatmap`` (tile predictions -> overlays and QuPath GeoJSON) and
``slide2expr heatmap-scale`` (one colour scale for a cohort)."""

from __future__ import annotations

import logging
from pathlib import Path

import typer

from slide2expr.commands._config import config_json_option, section

log = logging.getLogger(__name__)


#: Flag -> key of the ``heatmap`` section.
HEATMAP_FLAGS = {name: name for name in ("n_genes", "clip_percentiles", "cmap", "alpha",
                                         "fade_low", "thumbnail_px", "geojson_all_genes",
                                         "crop_to_tissue")}
#: Flag -> key of the ``tiling`` section (the heatmap outlines tissue as the tile stage does).
TISSUE_FLAGS = {name: f"tissue.{name}" for name in ("mask_mpp", "min_saturation", "closing_um",
                                                     "min_object_um2", "max_hole_um2")}
#: Flag -> key of the ``heatmap`` section, for ``heatmap-scale``.
SCALE_FLAGS = {"n_genes": "n_genes", "clip_percentiles": "clip_percentiles"}


def heatmap(
    ctx: typer.Context,
    source: Path = typer.Argument(
        ..., help="Features file (.h5, grid tiling, from `slide2expr extract`) or a tile map "
                  "(.h5ad) written by an earlier `slide2expr heatmap`."),
    slide: Path | None = typer.Option(None, "--slide",
                                      help="The slide (default: the one the features name)."),
    model_dir: Path | None = typer.Option(
        None, "--model-dir", help="results/models/{head} (or one fold directory); needed for a "
                                  "features file."),
    out_dir: Path = typer.Option(..., "--out-dir", "-o",
                                 help="Output directory, e.g. results/heatmaps/{head}."),
    genes: list[str] | None = typer.Option(
        None, "--genes", "-g", help="Genes to draw (repeat or comma-separate). Default: the "
                                    "report's top --n-genes."),
    n_genes: int = typer.Option(4, "--n-genes", min=1, help="How many top genes to draw."),
    report: Path | None = typer.Option(None, "--report",
                                       help="The report's genes.tsv: draw its top genes by r."),
    scale: Path | None = typer.Option(None, "--scale",
                                      help="Cohort colour scale from `slide2expr heatmap-scale`."),
    predictions: Path | None = typer.Option(
        None, "--predictions", help="predictions/{head}.h5ad (spot mode): also draw measured vs "
                                    "predicted at this slide's spots."),
    sample_id: str | None = typer.Option(None, "--sample-id",
                                         help="Sample ID (default: from the features file)."),
    dataset: Path | None = typer.Option(
        None, "--dataset", help="dataset.h5ad of the run: a context head's slide vector for a "
                                "slide with spots (default: the grid tiles' mean)."),
    fold: int | None = typer.Option(None, "--fold", help="Use this fold's model only (default: "
                                                         "the fold that held the slide out, "
                                                         "else the average of all folds)."),
    clip_percentiles: tuple[float, float] = typer.Option(
        (1.0, 99.0), "--clip-percentiles", help="Colour limits: these percentiles of the map."),
    cmap: str = typer.Option("inferno", "--cmap", help="Matplotlib colour map."),
    alpha: float = typer.Option(0.6, "--alpha", min=0.0, max=1.0,
                                help="Opacity of the colour over tissue."),
    fade_low: float = typer.Option(0.35, "--fade-low", min=0.0, max=1.0,
                                   help="Lowest share of the colour range fading to transparent."),
    crop_to_tissue: bool = typer.Option(True, "--crop-to-tissue/--whole-glass",
                                        help="Draw the tissue's bounding box or the whole glass."),
    thumbnail_px: int = typer.Option(2048, "--thumbnail-px", min=64,
                                     help="Longest side of the drawn image."),
    geojson_all_genes: bool = typer.Option(
        False, "--geojson-all-genes", help="All predicted genes as GeoJSON measurements "
                                           "(default: the drawn genes)."),
    map_only: bool = typer.Option(False, "--map-only",
                                  help="Only write the tile map {sample}.h5ad, draw nothing."),
    default_mpp: float | None = typer.Option(None, "--default-mpp",
                                             help="um/px if neither slide nor features have one."),
    mask_mpp: float = typer.Option(8.0, help="Tissue: mask resolution, um/px."),
    min_saturation: float = typer.Option(0.07, help="Tissue: saturation floor."),
    closing_um: float = typer.Option(40.0, help="Tissue: closing radius, um."),
    min_object_um2: float = typer.Option(20000.0, help="Tissue: smallest fragment kept, um^2."),
    max_hole_um2: float = typer.Option(20000.0, help="Tissue: largest hole filled, um^2."),
    threads: int = typer.Option(1, "--threads", min=1, help="CPU threads for torch."),
    config_json: str | None = config_json_option(),
) -> None:
    """Predicted-expression heatmaps of one slide: overlays, QuPath GeoJSON, tile map."""
    from slide2expr.errors import InputError
    from slide2expr.heatmap import load_or_predict, write_tile_map

    if not source.is_file():
        raise InputError(source, "does not exist", "pass a features .h5 or a tile map .h5ad")
    options = _options(ctx, config_json, genes)
    if not source.suffix.lower() == ".h5ad":
        import torch

        torch.set_num_threads(threads)
    tmap, predicted = load_or_predict(source, model_dir=model_dir, sample_id=sample_id, fold=fold,
                                      dataset=dataset)
    if map_only:
        if not predicted:
            raise InputError(source, "is already a tile map", "drop --map-only")
        out = out_dir / f"{tmap.sample_id}.h5ad"
        write_tile_map(out, tmap)
        typer.echo(f"wrote {out}", err=True)
        return
    if default_mpp is None:
        from slide2expr.settings import parse_config_json

        default_mpp = parse_config_json(config_json).get("default_slide_mpp")
    _draw(tmap, options, slide=slide, out_dir=out_dir, report=report, scale=scale,
          predictions=predictions, write_map=predicted, default_mpp=default_mpp,
          source=model_dir or source)


def _options(ctx: typer.Context, config_json: str | None, genes: list[str] | None):
    """The drawing options from the heatmap and tiling sections and the given flags, checked
    before any work (a bad colour map or percentile fails at once)."""
    from slide2expr.draw import OverlayStyle, check_percentiles, colormap, split_gene_args
    from slide2expr.heatmap import HeatmapOptions
    from slide2expr.tile.tissue import TissueParams

    cfg = section(ctx, "heatmap", config_json, HEATMAP_FLAGS)
    tissue = section(ctx, "tiling", config_json, TISSUE_FLAGS)["tissue"]
    clip_percentiles = tuple(cfg["clip_percentiles"])
    check_percentiles(clip_percentiles)
    colormap(cfg["cmap"])
    return HeatmapOptions(
        genes=(split_gene_args(genes) if genes else cfg.get("genes")) or None,
        n_genes=cfg["n_genes"], clip_percentiles=clip_percentiles,
        style=OverlayStyle(cmap=cfg["cmap"], alpha=cfg["alpha"], fade_low=cfg["fade_low"]),
        thumbnail_px=cfg["thumbnail_px"], tissue=TissueParams(**tissue),
        geojson_all_genes=cfg["geojson_all_genes"], crop_to_tissue=cfg["crop_to_tissue"],
    )


def _draw(tmap, options, *, slide: Path | None, out_dir: Path, report: Path | None,
          scale: Path | None, predictions: Path | None, write_map: bool,
          default_mpp: float | None, source: Path) -> None:
    """Overlays, GeoJSON and (spot mode) the spot comparison of one slide's tile map."""
    from slide2expr.draw import open_matching_slide, read_scale
    from slide2expr.errors import InputError
    from slide2expr.heatmap import make_heatmaps

    slide_path = slide or (Path(str(tmap.attrs.slide)) if tmap.attrs.slide else None)
    if slide_path is None:
        raise InputError(source, "names no slide", "pass --slide")
    with open_matching_slide(slide_path, tmap, default_mpp=default_mpp) as s:
        result = make_heatmaps(
            tmap, s, out_dir, options=options, report=report,
            scale=read_scale(scale) if scale is not None else None, predictions=predictions,
            write_map=write_map, source=source)
    typer.echo(f"{result.sample_id}: {len(result.pngs)} overlays ({', '.join(result.genes)}), "
               f"{result.geojson.name}"
               + (f", {result.comparison.name}" if result.comparison else "")
               + f" in {out_dir} ({result.seconds:.1f} s)", err=True)


def heatmap_scale(
    ctx: typer.Context,
    maps: list[Path] = typer.Argument(..., help="Tile maps ({sample}.h5ad) of the cohort."),
    out: Path = typer.Option(..., "--out", "-o", help="Scale table (.tsv) to write."),
    genes: list[str] | None = typer.Option(None, "--genes", "-g",
                                           help="Genes (repeat or comma-separate)."),
    n_genes: int = typer.Option(4, "--n-genes", min=1, help="How many top genes of the report."),
    report: Path | None = typer.Option(None, "--report", help="The report's genes.tsv."),
    clip_percentiles: tuple[float, float] = typer.Option(
        (1.0, 99.0), "--clip-percentiles", help="Percentiles over the pooled tiles."),
    config_json: str | None = config_json_option(),
) -> None:
    """One colour scale a gene over all slides, for heatmaps that compare across a cohort."""
    from slide2expr.contracts.tilemaps import read_tile_map
    from slide2expr.draw import cohort_scale, select_genes, split_gene_args, write_scale

    cfg = section(ctx, "heatmap", config_json, SCALE_FLAGS)
    first = read_tile_map(maps[0])
    chosen = select_genes(first.genes, genes=split_gene_args(genes) if genes else cfg.get("genes"),
                          report=report, n_genes=cfg["n_genes"], fallback="model_order",
                          source=maps[0])

    def load():
        yield str(maps[0]), first.genes, first.values
        for path in maps[1:]:
            m = read_tile_map(path)
            yield str(path), m.genes, m.values

    table = cohort_scale(load(), chosen, percentiles=tuple(cfg["clip_percentiles"]))
    write_scale(out, table)
    typer.echo(f"wrote {out}: {len(chosen)} genes over {len(maps)} slides", err=True)


def register(app: typer.Typer) -> None:
    """Add ``heatmap`` and ``heatmap-scale`` to the CLI."""
    app.command("heatmap")(heatmap)
    app.command("heatmap-scale")(heatmap_scale)
