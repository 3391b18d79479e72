"""The heatmap stage for one slide: tile predictions -> overlays, QuPath GeoJSON, spot
comparison.

Outputs in ``out_dir`` (the workflow uses ``results/heatmaps/{head}``):

- ``{sample}.h5ad``: tile predictions (see :mod:`slide2expr.heatmap.tilemap`), when the
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

import numpy as np
import pandas as pd

from slide2expr.atomic import atomic_outputs
from slide2expr.contracts.features import read_features
from slide2expr.contracts.models import held_out_fold
from slide2expr.errors import InputError
from slide2expr.heatmap.context import grid_input_matrix, head_input_blocks
from slide2expr.heatmap.gene_choice import gene_filenames, select_genes
from slide2expr.heatmap.geojson import (
    CLIP_NOTE,
    SpotDetections,
    clip_predictions,
    mask_polygons,
    measurement_name,
    write_qupath_geojson,
)
from slide2expr.heatmap.overlay import OverlayStyle, blend_overlay, save_overlay_png
from slide2expr.heatmap.raster import rasterize_tiles
from slide2expr.heatmap.scale import check_percentiles, robust_limits
from slide2expr.heatmap.spot_overlay import draw_spot_comparison, read_spot_values
from slide2expr.heatmap.tilemap import (
    UNITS,
    TileMap,
    predict_tile_map,
    read_tile_map,
    write_tile_map,
)
from slide2expr.inputs.samples import check_sample_id
from slide2expr.inputs.slides import Slide, open_slide
from slide2expr.keys import SPOT_BLOCK
from slide2expr.tile.tissue import TissueParams, detect_tissue

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

    For a features file the model comes from ``model_dir`` (``load_trained_head``): on a
    training slide the fold model that held it out (an out-of-fold map, see
    ``splits.tsv``), on a new slide (or one every fold trained on) the average of the fold
    models; ``fold`` forces one fold. How the model was used is recorded in the map's
    ``attrs['model_use']`` and the overlay subtitles.

    A head trained with context inputs (``head.json`` ``inputs``) gets the same blocks built
    on the grid tiles (:mod:`slide2expr.heatmap.context`): the ``grid_ctx{um}`` features
    beside ``input_path``, neighbour means of the grid tiles, and the slide vector, taken
    from ``dataset`` (``dataset.h5ad``) when the slide has spots there. With several models
    averaged (fold models, ensemble members) the map carries their spread
    (``TileMap.spread``).

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
    from slide2expr.train.trained import load_trained_head

    features = read_features(input_path)
    sample = sample_id or str(features.attrs.get("sample_id") or "")
    if not sample:
        raise InputError(input_path, "names no sample_id", "pass --sample-id")
    check_sample_id(sample, source=None)
    features.attrs["sample_id"] = sample
    if (Path(model_dir) / "head.json").is_file():  # one fold's directory
        fold, use = None, f"the model in {Path(model_dir).name}"
    elif fold is None:
        fold, use = held_out_fold(model_dir, sample)
    else:
        use = f"fold {fold}"
    head = load_trained_head(model_dir, fold=fold)
    n_members = len(getattr(head, "members", [])) or 1
    if n_members > 1:
        use = f"{use}: average of {n_members} models (folds, ensemble members)"
    provenance = {
        "model_dir": str(Path(model_dir)), "head": getattr(head, "head", "model"),
        "kind": getattr(head, "kind", ""), "model_use": use,
        "features": str(input_path),
    }
    if getattr(head, "meta", {}).get("encoder") and features.attrs.get("encoder") and \
            head.meta["encoder"] != features.attrs["encoder"]:
        raise InputError(input_path, f"has {features.attrs['encoder']} features but the model "
                         f"was trained on {head.meta['encoder']}",
                         f"use features from the {head.meta['encoder']} encoder")
    provenance["n_models"] = n_members
    blocks = head_input_blocks(getattr(head, "meta", {}), source=model_dir)
    inputs = None
    if blocks != [SPOT_BLOCK]:
        inputs, record = grid_input_matrix(features, blocks, features_path=input_path,
                                           encoder=getattr(head, "meta", {}).get("encoder"),
                                           dataset=dataset)
        provenance.update(record)
    log.info("%s: predicting %d genes on %d tiles with %s (%s)", sample, len(head.genes),
             len(features), provenance["head"], use)
    return predict_tile_map(features, head, provenance=provenance, source=input_path,
                            inputs=inputs), True


def tissue_mask(thumbnail: np.ndarray, downsample: float, *, mpp: float,
                params: TissueParams) -> tuple[np.ndarray, float]:
    """Tissue mask of a thumbnail, computed at (no finer than) ``params.mask_mpp``.

    Morphology sizes are physical, so on a fine thumbnail they become large structuring
    elements; the mask is therefore computed on the thumbnail shrunk to ``mask_mpp``.

    Returns
    -------
    tuple of (numpy.ndarray, float)
        The mask and its downsample (level-0 px per mask px).
    """
    image_mpp = mpp * downsample
    factor = params.mask_mpp / image_mpp
    image = thumbnail
    if factor > 1.0:
        from PIL import Image

        h, w = thumbnail.shape[:2]
        size = (max(1, round(w / factor)), max(1, round(h / factor)))
        image = np.asarray(Image.fromarray(thumbnail).resize(size, Image.BILINEAR))
    mask_ds = downsample * thumbnail.shape[1] / image.shape[1]
    return detect_tissue(image, image_mpp=mpp * mask_ds, params=params), mask_ds


def _resize_mask(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of a boolean mask to ``shape`` (rows, cols)."""
    if mask.shape == tuple(shape):
        return mask
    rows = np.minimum((np.arange(shape[0]) + 0.5) * mask.shape[0] / shape[0], mask.shape[0] - 1)
    cols = np.minimum((np.arange(shape[1]) + 0.5) * mask.shape[1] / shape[1], mask.shape[1] - 1)
    return mask[rows.astype(int)[:, None], cols.astype(int)[None, :]]


def open_matching_slide(slide_path: str | Path, tmap: TileMap, *,
                        default_mpp: float | None = None) -> Slide:
    """Open the slide and check it is the one the tiles came from (same level-0 size)."""
    mpp = tmap.attrs.get("slide_mpp")
    slide = open_slide(slide_path, sheet_mpp=float(mpp) if mpp else None, default_mpp=default_mpp)
    want = (tmap.attrs.get("level0_width"), tmap.attrs.get("level0_height"))
    if None not in want and tuple(int(v) for v in want) != tuple(slide.dimensions):
        slide.close()
        raise InputError(slide_path, f"is {slide.dimensions[0]} x {slide.dimensions[1]} px but the "
                         f"tiles were made on a {want[0]} x {want[1]} px slide",
                         "pass the slide the features file was extracted from")
    return slide


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
                         n_genes=options.n_genes, values=tmap.values, source=source)
    out_dir = Path(out_dir)
    sample_dir = out_dir / sample

    thumb, downsample = slide.thumbnail(options.thumbnail_px)
    mpp = slide.mpp or (float(tmap.attrs["slide_mpp"]) if tmap.attrs.get("slide_mpp") else None)
    shape = thumb.shape[:2]
    coarse, coarse_ds = (tissue_mask(thumb, downsample, mpp=mpp, params=options.tissue)
                         if mpp else (None, downsample))
    tissue = None if coarse is None else _resize_mask(coarse, shape)
    crop = tissue_box(tissue) if options.crop_to_tissue and tissue is not None else None
    if options.crop_to_tissue and tmap.attrs.get("roi_bounds") is not None:
        crop = region_box(tmap.attrs["roi_bounds"], downsample, shape)  # a region sample
    log.info("%s: drawing %d genes on a %d x %d thumbnail (downsample %.1f)", sample,
             len(genes), shape[1], shape[0], downsample)

    files = [out_dir / f"{sample}.geojson", sample_dir]
    if write_map:
        files.append(out_dir / f"{sample}.h5ad")
    rows, pngs = [], {}
    comparison, comparison_r = None, {}
    with atomic_outputs(*files) as tmps:
        geojson_tmp, dir_tmp = tmps[0], tmps[1]
        dir_tmp.mkdir(parents=True)
        file_names = gene_filenames(genes)
        for gene in genes:
            png, row = _draw_gene(tmap, gene, sample=sample, folder=dir_tmp,
                                  file_name=f"{file_names[gene]}.png", thumb=thumb,
                                  downsample=downsample, tissue=tissue, mpp=mpp, scale=scale,
                                  percentiles=percentiles, style=options.style, crop=crop)
            pngs[gene] = sample_dir / png
            rows.append(row)
        limits = pd.DataFrame(rows)
        limits.to_csv(dir_tmp / LIMITS_TSV, sep="\t", index=False, float_format="%.6g")

        geo_genes = list(tmap.genes) if options.geojson_all_genes else genes
        spot_values = None
        if predictions is not None:
            spot_values = read_spot_values(predictions, sample, geo_genes)
            comparison_r = _draw_comparison(spot_values, predictions, sample, genes,
                                            folder=dir_tmp, thumb=thumb, downsample=downsample,
                                            percentiles=percentiles, style=options.style,
                                            model=str(tmap.attrs.get("head", "")))
            comparison = sample_dir / COMPARISON_PNG if comparison_r is not None else None
            comparison_r = comparison_r or {}

        _write_geojson(geojson_tmp, tmap, genes=geo_genes, coarse=coarse, coarse_ds=coarse_ds,
                       spots=spot_values)
        if write_map:
            write_tile_map(tmps[2], tmap)
    seconds = time.perf_counter() - start
    log.info("%s: heatmaps of %s written to %s in %.1f s", sample, ", ".join(genes), out_dir,
             seconds)
    return HeatmapResult(sample_id=sample, genes=genes,
                         tile_map=out_dir / f"{sample}.h5ad" if write_map else None,
                         geojson=out_dir / f"{sample}.geojson", pngs=pngs, limits=limits,
                         comparison=comparison, comparison_r=comparison_r, seconds=seconds)


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
    model = tmap.attrs.get("head", "model")
    use = tmap.attrs.get("model_use", "")
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


def tissue_box(tissue: np.ndarray, margin: float = 0.04) -> tuple[slice, slice] | None:
    """Row and column slices of the tissue's bounding box in a mask, widened by ``margin`` of
    the image's longer side and kept inside it; None when there is no tissue."""
    rows, cols = np.flatnonzero(tissue.any(axis=1)), np.flatnonzero(tissue.any(axis=0))
    if rows.size == 0:
        return None
    pad = int(round(margin * max(tissue.shape)))
    return (slice(max(0, rows[0] - pad), min(tissue.shape[0], rows[-1] + 1 + pad)),
            slice(max(0, cols[0] - pad), min(tissue.shape[1], cols[-1] + 1 + pad)))


def region_box(bounds: Sequence[float], downsample: float, shape: tuple[int, int],
               margin: float = 0.04) -> tuple[slice, slice]:
    """Row and column slices of a region's bounding box (level-0 ``x0, y0, x1, y1``) on a
    thumbnail of ``shape`` at ``downsample``, widened by ``margin`` of the region's longer
    side: a region sample's overlays show its region, not the whole slide."""
    x0, y0, x1, y1 = (float(v) / downsample for v in np.ravel(bounds)[:4])
    pad = margin * max(x1 - x0, y1 - y0)
    return (slice(max(0, int(y0 - pad)), min(shape[0], int(np.ceil(y1 + pad)))),
            slice(max(0, int(x0 - pad)), min(shape[1], int(np.ceil(x1 + pad)))))


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
    width, height = tmap.attrs.get("level0_width"), tmap.attrs.get("level0_height")
    bounds = (float(width), float(height)) if width and height else None
    outline = mask_polygons(coarse, coarse_ds, bounds=bounds) if coarse is not None else []
    head = str(tmap.attrs.get("head", "") or "predicted")
    values = clip_predictions(tmap.values[:, [tmap.genes.index(g) for g in genes]])
    write_qupath_geojson(
        path, coords=tmap.coords, size0=tmap.tile_size0, values=values,
        genes=[measurement_name(head, g, UNITS) for g in genes], tissue=outline,
        names=list(tmap.spot_ids) if tmap.spot_ids is not None else None,
        spots=_spot_detections(spots, head, tmap.sample_id),
        metadata={"sample_id": tmap.sample_id, "units": UNITS, "coordinates": "level-0 pixels",
                  "model": str(tmap.attrs.get("head", "")), "predictions": CLIP_NOTE,
                  "level0_width": width, "level0_height": height})
