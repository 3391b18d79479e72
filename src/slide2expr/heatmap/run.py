"""The heatmap stage for one slide: tile predictions -> overlays, QuPath GeoJSON, spot
comparison.

Outputs in ``out_dir`` (the workflow uses ``results/heatmaps/{head}``):

- ``{sample}.h5ad``: tile predictions (see :mod:`slide2expr.contracts.tilemaps`), when the
  input was a features file;
- ``{sample}.geojson``: QuPath objects (see :mod:`slide2expr.heatmap.geojson`);
- ``{sample}/{gene}.png``: overlays (see :mod:`slide2expr.heatmap.overlay`);
- ``{sample}/limits.tsv``: the colour limits and value range of each drawn gene;
- ``{sample}/measured_vs_predicted.png``: spot-mode training slides only.

All of them appear together or not at all.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from slide2expr.atomic import atomic_outputs
from slide2expr.contracts.tilemaps import UNITS, TileMap, read_tile_map, write_tile_map
from slide2expr.draw.colours import OverlayStyle, blend_overlay
from slide2expr.draw.genes import select_genes
from slide2expr.draw.limits import check_percentiles, robust_limits
from slide2expr.draw.names import gene_filenames
from slide2expr.draw.raster import rasterize_tiles
from slide2expr.draw.spots import read_spot_values
from slide2expr.draw.tissue import (
    mask_polygons,
    region_box,
    resize_mask,
    tissue_box,
    tissue_mask,
)
from slide2expr.errors import InputError
from slide2expr.heatmap.geojson import (
    CLIP_NOTE,
    SpotDetections,
    clip_predictions,
    measurement_name,
    write_qupath_geojson,
)
from slide2expr.heatmap.overlay import save_overlay_png
from slide2expr.heatmap.spot_overlay import draw_spot_comparison
from slide2expr.inputs.samples import check_sample_id
from slide2expr.inputs.slides import Slide
from slide2expr.tile.tissue import TissueParams

log = logging.getLogger(__name__)

COMPARISON_PNG = "measured_vs_predicted.png"
LIMITS_TSV = "limits.tsv"


@dataclass(frozen=True)
class HeatmapOptions:
    """Choices of the heatmap stage.

    Attributes
    ----------
    genes
        Genes to draw; None for the report's top ``n_genes``.
    n_genes
        How many genes when ``genes`` is None.
    clip_percentiles
        Robust colour limits of each slide's map (ignored for genes in ``scale``).
    style
        Colour map, opacity, background fade.
    thumbnail_px
        Longest side of the image the maps are drawn on.
    tissue
        Tissue detection on the thumbnail (colour goes over tissue only; the outline goes
        into the GeoJSON).
    geojson_all_genes
        Put every predicted gene into the GeoJSON measurements, not just the drawn ones.
    crop_to_tissue
        Draw only the tissue's bounding box (with a margin of 4% of the thumbnail), not the
        whole glass; the PNG records where the crop starts (``slide2expr:origin``).
    """

    genes: Sequence[str] | None = None
    n_genes: int = 4
    clip_percentiles: tuple[float, float] = (1.0, 99.0)
    style: OverlayStyle = field(default_factory=OverlayStyle)
    thumbnail_px: int = 2048
    tissue: TissueParams = field(default_factory=TissueParams)
    geojson_all_genes: bool = False
    crop_to_tissue: bool = False


@dataclass
class HeatmapResult:
    """What was written for one slide."""

    sample_id: str
    genes: list[str]
    tile_map: Path | None
    geojson: Path
    pngs: dict[str, Path]
    limits: pd.DataFrame
    comparison: Path | None = None
    comparison_r: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0


def is_tile_map(path: str | Path) -> bool:
    """True when ``path`` is a tile-prediction ``.h5ad`` rather than a features ``.h5``."""
    return Path(path).suffix.lower() == ".h5ad"


def load_or_predict(input_path: str | Path, *, model_dir: str | Path | None,
                    sample_id: str | None = None, fold: int | None = None,
                    dataset: str | Path | None = None) -> tuple[TileMap, bool]:
    """The tile map of one slide: read it (``.h5ad``) or predict it from features (``.h5``).

    A features file is predicted by :func:`slide2expr.predict.predict_slide_map` (the fold
    model that held a training slide out, else the fold models' average; ``fold`` forces
    one; a context head's blocks; the spread of the averaged models).

    Returns
    -------
    tuple of (TileMap, bool)
        The map and whether it was predicted now (and so should be written).
    """
    input_path = Path(input_path)
    if is_tile_map(input_path):
        return read_tile_map(input_path), False
    if model_dir is None:
        raise InputError(input_path, "is a features file but no model was given",
                         "pass --model-dir results/models/{head}")
    # torch only here: drawing an existing tile map needs no model
    from slide2expr.predict import predict_slide_map

    return predict_slide_map(input_path, model_dir, sample_id=sample_id, fold=fold,
                             dataset=dataset), True


def _spot_detections(spots, head: str, sample: str) -> SpotDetections | None:
    """Spot detections for the GeoJSON: measured and (clipped) predicted values."""
    if spots is None:
        return None
    if not spots.diameter0:
        log.warning("%s: the spot diameter is not known (no uns['spatial'] scale factors or "
                    "spot_diameter_um in the predictions); spots left out of the GeoJSON",
                    sample)
        return None
    measurements: dict[str, np.ndarray] = {}
    for j, gene in enumerate(spots.genes):
        measurements[measurement_name("measured", gene, UNITS)] = spots.measured[:, j]
        measurements[measurement_name(head, gene, UNITS)] = clip_predictions(
            spots.predicted[:, j])
    names = spots.spot_ids or [f"spot {i}" for i in range(len(spots.centres))]
    return SpotDetections(centres=spots.centres, diameter0=float(spots.diameter0),
                          names=names, measurements=measurements)


def make_heatmaps(tmap: TileMap, slide: Slide, out_dir: str | Path, *,
                  options: HeatmapOptions | None = None, report: str | Path | None = None,
                  scale: dict[str, tuple[float, float]] | None = None,
                  predictions: str | Path | None = None, write_map: bool = True,
                  source: str | Path | None = None) -> HeatmapResult:
    """Draw the overlays, write the GeoJSON (and the tile map) of one slide.

    Parameters
    ----------
    tmap
        Tile predictions of the slide.
    slide
        The open slide (only a thumbnail is read).
    out_dir
        Destination directory (``results/heatmaps/{head}``).
    options
        Genes, clipping, style, thumbnail size, tissue detection.
    report
        The report's ``genes.tsv`` to pick the top genes from.
    scale
        ``{gene: (vmin, vmax)}`` shared by a cohort; genes not in it use robust limits.
    predictions
        ``predictions/{head}.h5ad`` of a spot-mode training run: adds the measured vs
        predicted comparison when the slide has spots in it.
    write_map
        Write ``{sample}.h5ad`` (false when the map was read from that file).
    source
        Named in errors (the model directory or the tile map).
    """
    start = time.perf_counter()
    options = options or HeatmapOptions()
    percentiles = check_percentiles(options.clip_percentiles)
    sample = tmap.sample_id
    check_sample_id(sample, source=None)
    genes = select_genes(tmap.genes, genes=options.genes, report=report,
                         n_genes=options.n_genes, fallback="most_variable",
                         values=tmap.values, source=source)
    out_dir = Path(out_dir)
    sample_dir = out_dir / sample
    canvas = _canvas(tmap, slide, options)
    log.info("%s: drawing %d genes on a %d x %d thumbnail (downsample %.1f)", sample,
             len(genes), canvas.thumb.shape[1], canvas.thumb.shape[0], canvas.downsample)

    tile_map = out_dir / f"{sample}.h5ad" if write_map else None
    files = [out_dir / f"{sample}.geojson", sample_dir] + ([tile_map] if tile_map else [])
    with atomic_outputs(*files) as tmps:
        tmps[1].mkdir(parents=True)
        pngs, limits = _draw_genes(tmap, genes, canvas, folder=tmps[1], sample_dir=sample_dir,
                                   scale=scale, percentiles=percentiles, style=options.style)
        comparison, comparison_r = _spots_and_geojson(
            tmap, genes, canvas, geojson=tmps[0], folder=tmps[1], sample_dir=sample_dir,
            predictions=predictions, options=options, percentiles=percentiles)
        if write_map:
            write_tile_map(tmps[2], tmap)
    seconds = time.perf_counter() - start
    log.info("%s: heatmaps of %s written to %s in %.1f s", sample, ", ".join(genes), out_dir,
             seconds)
    return HeatmapResult(sample_id=sample, genes=genes, tile_map=tile_map,
                         geojson=out_dir / f"{sample}.geojson", pngs=pngs, limits=limits,
                         comparison=comparison, comparison_r=comparison_r, seconds=seconds)


@dataclass
class _Canvas:
    """What a slide's heatmaps are drawn on: its thumbnail, the tissue on it, the crop."""

    thumb: np.ndarray
    #: Level-0 px per thumbnail px.
    downsample: float
    mpp: float | None
    #: The tissue mask at its own (coarse) resolution and its downsample; None without mpp.
    coarse: np.ndarray | None
    coarse_ds: float
    #: The tissue mask at thumbnail size.
    tissue: np.ndarray | None
    crop: Any


def _canvas(tmap: TileMap, slide: Slide, options: HeatmapOptions) -> _Canvas:
    """The thumbnail, the tissue mask (when the mpp is known) and the crop: the tissue's
    box, or a region sample's box."""
    thumb, downsample = slide.thumbnail(options.thumbnail_px)
    mpp = slide.mpp or (float(tmap.attrs.slide_mpp) if tmap.attrs.slide_mpp else None)
    shape = thumb.shape[:2]
    coarse, coarse_ds = (tissue_mask(thumb, downsample, mpp=mpp, params=options.tissue)
                         if mpp else (None, downsample))
    tissue = None if coarse is None else resize_mask(coarse, shape)
    crop = tissue_box(tissue) if options.crop_to_tissue and tissue is not None else None
    if options.crop_to_tissue and tmap.attrs.roi_bounds is not None:
        crop = region_box(tmap.attrs.roi_bounds, downsample, shape)  # a region sample
    return _Canvas(thumb, downsample, mpp, coarse, coarse_ds, tissue, crop)


def _draw_genes(tmap: TileMap, genes: list[str], canvas: _Canvas, *, folder: Path,
                sample_dir: Path, scale: dict[str, tuple[float, float]] | None,
                percentiles: tuple[float, float],
                style: OverlayStyle) -> tuple[dict[str, Path], pd.DataFrame]:
    """One overlay PNG a gene into ``folder`` and the colour limits table; returns each
    PNG's final path (under ``sample_dir``) and the limits."""
    rows, pngs = [], {}
    file_names = gene_filenames(genes)
    for gene in genes:
        png, row = _draw_gene(tmap, gene, sample=tmap.sample_id, folder=folder,
                              file_name=f"{file_names[gene]}.png", thumb=canvas.thumb,
                              downsample=canvas.downsample, tissue=canvas.tissue,
                              mpp=canvas.mpp, scale=scale, percentiles=percentiles,
                              style=style, crop=canvas.crop)
        pngs[gene] = sample_dir / png
        rows.append(row)
    limits = pd.DataFrame(rows)
    limits.to_csv(folder / LIMITS_TSV, sep="\t", index=False, float_format="%.6g")
    return pngs, limits


def _spots_and_geojson(tmap: TileMap, genes: list[str], canvas: _Canvas, *, geojson: Path,
                       folder: Path, sample_dir: Path, predictions: str | Path | None,
                       options: HeatmapOptions, percentiles: tuple[float, float]
                       ) -> tuple[Path | None, dict[str, float]]:
    """The QuPath GeoJSON (with a training slide's spots when ``predictions`` are given) and
    the spots' measured-vs-predicted picture: its final path (None without spots) and r per
    gene."""
    geo_genes = list(tmap.genes) if options.geojson_all_genes else genes
    spot_values, comparison, comparison_r = None, None, {}
    if predictions is not None:
        spot_values = read_spot_values(predictions, tmap.sample_id, geo_genes)
        comparison_r = _draw_comparison(spot_values, predictions, tmap.sample_id, genes,
                                        folder=folder, thumb=canvas.thumb,
                                        downsample=canvas.downsample,
                                        percentiles=percentiles, style=options.style,
                                        model=str(tmap.attrs.head or ""))
        comparison = sample_dir / COMPARISON_PNG if comparison_r is not None else None
        comparison_r = comparison_r or {}
    _write_geojson(geojson, tmap, genes=geo_genes, coarse=canvas.coarse,
                   coarse_ds=canvas.coarse_ds, spots=spot_values)
    return comparison, comparison_r


def _draw_gene(tmap: TileMap, gene: str, *, sample: str, folder: Path, file_name: str,
               thumb: np.ndarray,
               downsample: float, tissue: np.ndarray | None, mpp: float | None,
               scale: dict[str, tuple[float, float]] | None, percentiles: tuple[float, float],
               style: OverlayStyle, crop: tuple[slice, slice] | None = None
               ) -> tuple[str, dict]:
    """One gene's overlay PNG, ``folder/file_name``; returns the name and its limits row."""
    values = tmap.column(gene)
    if scale is not None and gene in scale:
        vmin, vmax = scale[gene]
        how = "cohort scale"
    else:
        vmin, vmax = robust_limits(values, percentiles)
        how = f"clipped at percentiles {percentiles[0]:g}-{percentiles[1]:g}"
    image = rasterize_tiles(tmap.coords, tmap.tile_size0, values, downsample=downsample,
                            shape=thumb.shape[:2])
    blended = blend_overlay(thumb, image, vmin=vmin, vmax=vmax, tissue=tissue, style=style)
    origin = (0, 0)
    if crop is not None:
        blended = blended[crop]
        origin = (crop[1].start, crop[0].start)
    name = file_name
    model = tmap.attrs.head if tmap.attrs.head is not None else "model"
    use = tmap.attrs.model_use or ""
    save_overlay_png(
        folder / name, blended, downsample=downsample, vmin=vmin, vmax=vmax,
        title=f"{gene} \u2014 {sample}",
        subtitle=f"predicted by {model}{f' ({use})' if use else ''}; {len(values)} tiles; "
                 f"{how}",
        colorbar_label=f"predicted {gene}, {UNITS}", style=style,
        clipped=(bool(values.min() < vmin), bool(values.max() > vmax)), mpp=mpp,
        origin=origin)
    row = {"gene": gene, "vmin": vmin, "vmax": vmax, "scale": how,
           "min": float(values.min()), "max": float(values.max()),
           "mean": float(values.mean()), "n_tiles": len(values)}
    return name, row


def _draw_comparison(spot_values, predictions: str | Path, sample: str, genes: list[str], *,
                     folder: Path, thumb: np.ndarray, downsample: float,
                     percentiles: tuple[float, float], style: OverlayStyle,
                     model: str) -> dict[str, float] | None:
    """Measured vs predicted of the drawn ``genes`` at the slide's spots (``COMPARISON_PNG``
    in ``folder``) and the r of each gene; None when the predictions have no spots of this
    slide (``spot_values`` is None)."""
    spots = None if spot_values is None else spot_values.subset(genes)
    if spots is None:
        log.info("%s: no spots of this slide in %s; no comparison drawn", sample, predictions)
        return None
    comparison_r = draw_spot_comparison(
        folder / COMPARISON_PNG, spots, thumbnail=thumb, downsample=downsample,
        sample_id=sample, percentiles=percentiles, style=style, model=model)
    log.info("%s: measured vs predicted at %d spots, r = %s", sample, len(spots.centres),
             ", ".join(f"{g} {r:.2f}" for g, r in comparison_r.items()))
    return comparison_r


def _write_geojson(path: Path, tmap: TileMap, *, genes: list[str], coarse: np.ndarray | None,
                   coarse_ds: float, spots) -> None:
    """The QuPath GeoJSON of the slide: tiles with the predictions of ``genes`` as
    measurements named ``"{head}: {gene} ({units})"`` (clipped at 0, see ``CLIP_NOTE``), the
    tissue outline, and in spot mode the spots with measured and predicted values."""
    width, height = tmap.attrs.level0_width, tmap.attrs.level0_height
    bounds = (float(width), float(height)) if width and height else None
    outline = mask_polygons(coarse, coarse_ds, bounds=bounds) if coarse is not None else []
    head = str(tmap.attrs.head or "predicted")
    values = clip_predictions(tmap.values[:, [tmap.genes.index(g) for g in genes]])
    write_qupath_geojson(
        path, coords=tmap.coords, size0=tmap.tile_size0, values=values,
        genes=[measurement_name(head, g, UNITS) for g in genes], tissue=outline,
        names=list(tmap.spot_ids) if tmap.spot_ids is not None else None,
        spots=_spot_detections(spots, head, tmap.sample_id),
        metadata={"sample_id": tmap.sample_id, "units": UNITS, "coordinates": "level-0 pixels",
                  "model": str(tmap.attrs.head or ""), "predictions": CLIP_NOTE,
                  "level0_width": width, "level0_height": height})
