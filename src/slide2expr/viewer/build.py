"""Build ``results/viewer/``: one page for the cohort, a Deep Zoom pyramid and the expression
layers of every slide.

Layout of the output folder::

    index.html, viewer.js, viewer.css     the page (package data, static/)
    openseadragon/                        OpenSeadragon from npm (min.js, images, licence)
    data.js                               cohort manifest: slides, genes with r, scales
    slides/{id}/slide.dzi, slide_files/   the H&E pyramid at full resolution
    slides/{id}/slide.js                  tile cells, tissue outline, spots
    slides/{id}/genes/{gene}.js           one layer per predicted gene (layers.py)
    build.json                            build time and disk size per slide

The folder is built in a hidden temporary sibling and renamed when complete; a failed build
leaves the previous viewer (or nothing) in place.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

import slide2expr.viewer.layers as layers
import slide2expr.viewer.page as page
from slide2expr.atomic import atomic_output
from slide2expr.contracts.predictions import read_predictions
from slide2expr.contracts.report import GENES_TSV, read_gene_r
from slide2expr.contracts.tilemaps import UNITS, TileMap, read_tile_map
from slide2expr.draw.genes import select_genes
from slide2expr.draw.limits import cohort_scale, read_scale, robust_limits
from slide2expr.draw.names import gene_filename
from slide2expr.draw.spots import read_spot_values
from slide2expr.draw.tissue import mask_polygons, open_matching_slide, tissue_mask
from slide2expr.errors import NO_SPACE_ERRNOS, InputError, environment_fault, fault_errno
from slide2expr.keys import Key
from slide2expr.tile.tissue import TissueParams
from slide2expr.viewer.pyramid import write_pyramid

log = logging.getLogger(__name__)

#: Longest side of the thumbnail the tissue outline is traced on, px.
OUTLINE_THUMBNAIL_PX = 2048


@dataclass
class ViewerOptions:
    """What to put in the viewer.

    Attributes
    ----------
    head
        The head whose predictions are shown (default: the only one under ``heatmaps/``).
    genes
        Genes to make layers for (default: every predicted gene); the first opens the page.
    samples
        Slides to include (default: every tile map).
    slides
        ``{sample: slide file}`` overriding the path recorded in the tile map.
    predictions
        Spot-mode ``predictions/{head}.h5ad`` (measured expression at the spots); None looks
        for it under the results folder.
    report
        The report's ``genes.tsv`` (r beside each gene); None looks for it.
    scale
        A cohort scale table (``heatmaps/{head}/scale.tsv``) for its genes; the other genes'
        cohort limits are pooled from the tile maps.
    pyramid_backend
        ``auto``, ``vips`` or ``deepzoom`` (pyramid.py).
    clip_percentiles
        Robust colour limits.
    tissue
        Tissue detection for the outline.
    default_mpp
        um/px for slides with no resolution anywhere.
    """

    head: str | None = None
    genes: Sequence[str] | None = None
    samples: Sequence[str] | None = None
    slides: dict[str, Path] = field(default_factory=dict)
    predictions: Path | None = None
    report: Path | None = None
    scale: Path | None = None
    pyramid_backend: str = "auto"
    clip_percentiles: tuple[float, float] = (1.0, 99.0)
    tissue: TissueParams = field(default_factory=TissueParams)
    default_mpp: float | None = None


@dataclass
class SlideStats:
    """Build figures of one slide."""

    sample_id: str
    width: int
    height: int
    n_tiles: int
    n_genes: int
    seconds: float
    pyramid_seconds: float
    pyramid_backend: str
    bytes: int
    pyramid_bytes: int
    layer_bytes_median: int


@dataclass
class ViewerResult:
    """What :func:`build_viewer` wrote."""

    out: Path
    head: str
    genes: list[str]
    slides: list[SlideStats]
    seconds: float

    @property
    def index(self) -> Path:
        return self.out / "index.html"


def build_viewer(results: str | Path, out: str | Path | None = None, *,
                 options: ViewerOptions | None = None) -> ViewerResult:
    """Write the slide viewer of a results folder.

    Parameters
    ----------
    results
        The workflow's results folder (``heatmaps/{head}/{sample}.h5ad`` tile maps, and
        optionally ``report/{head}/genes.tsv`` and ``predictions/{head}.h5ad``).
    out
        The viewer folder (default ``{results}/viewer``); replaced as a whole, and only if
        slide2expr made it (:func:`slide2expr.atomic.check_replaceable`).
    options
        Head, genes, slides, scale, tissue detection.

    Returns
    -------
    ViewerResult
        Paths and build figures.

    Raises
    ------
    InputError
        No tile maps, a gene not predicted, an unreadable slide or an output folder that
        cannot be written.
    """
    start = time.perf_counter()
    options = options or ViewerOptions()
    results = Path(results)
    out = Path(out) if out is not None else results / "viewer"
    head, maps = find_tile_maps(results, options.head, options.samples)
    first = read_tile_map(maps[0])
    # the viewer shows every gene unless some are asked for
    genes = select_genes(first.genes, genes=options.genes,
                         source=maps[0]) if options.genes else list(first.genes)
    r_by_gene, predictions = _report_and_predictions(results, head, options)
    cohort = cohort_limits(maps, genes, options)
    check_writable(out)
    page.openseadragon_dir()  # an installation fault stops the build before any work
    with atomic_output(out) as tmp:
        tmp.mkdir(parents=True)
        page.copy_assets(tmp)
        entries, stats = _build_slides(tmp / "slides", maps, first, genes, options=options,
                                       predictions=predictions)
        page.write_data(tmp, {
            "head": head, "units": UNITS, "results": str(results),
            "genes": gene_entries(genes, r_by_gene),
            "default_gene": genes[0] if options.genes else _best(genes, r_by_gene),
            "cohort_limits": {g: cohort[g] for g in genes},
            "clip_percentiles": list(options.clip_percentiles),
            "slides": entries,
        })
        seconds = time.perf_counter() - start
        (tmp / "build.json").write_text(json.dumps(
            {"seconds": round(seconds, 2), "head": head, "n_genes": len(genes),
             "slides": [vars(s) for s in stats]}, indent=1), encoding="utf-8")
    log.info("viewer of %d slides x %d genes written to %s in %.1f s", len(stats), len(genes),
             out, seconds)
    return ViewerResult(out=out, head=head, genes=genes, slides=stats, seconds=seconds)


def _report_and_predictions(results: Path, head: str,
                            options: ViewerOptions) -> tuple[dict[str, float], Any]:
    """Each gene's r from the report's ``genes.tsv`` (none without a report) and the
    spot-mode predictions measured at the spots (None without them)."""
    report = _find(options.report, results / "report" / head / GENES_TSV)
    r_by_gene = read_gene_r(report) if report else {}
    predictions = spot_predictions(_find(options.predictions,
                                         results / "predictions" / f"{head}.h5ad"),
                                   explicit=options.predictions is not None)
    return r_by_gene, predictions


def _build_slides(out: Path, maps: list[Path], first: TileMap, genes: list[str], *,
                  options: ViewerOptions, predictions: Any
                  ) -> tuple[list[dict[str, Any]], list[SlideStats]]:
    """Every slide's pyramid and layers under ``out`` (:func:`build_slide`): the page's
    entries and the build figures, one a tile map (``first`` is ``maps[0]`` already read)."""
    stats: list[SlideStats] = []
    entries: list[dict[str, Any]] = []
    pyramids: dict[str, tuple[Any, str]] = {}
    for path in maps:
        tmap = first if path == maps[0] else read_tile_map(path)
        entry, stat = build_slide(tmap, out, genes, options=options, predictions=predictions,
                                  explicit_predictions=options.predictions is not None,
                                  source=path, pyramids=pyramids)
        entries.append(entry)
        stats.append(stat)
    return entries, stats


def find_tile_maps(results: Path, head: str | None,
                   samples: Sequence[str] | None) -> tuple[str, list[Path]]:
    """The head and its tile maps ``heatmaps/{head}/{sample}.h5ad``.

    Raises
    ------
    InputError
        When the results folder has no heatmaps, several heads and none chosen, or lacks a
        requested sample.
    """
    root = results / "heatmaps"
    fix = ("run the heatmap stage first (snakemake with heatmap.enabled: true, or "
           "`slide2expr heatmap FEATURES --model-dir ... --map-only`)")
    if head is None:
        heads = sorted(p.name for p in root.iterdir() if p.is_dir() and any(p.glob("*.h5ad"))) \
            if root.is_dir() else []
        if not heads:
            raise InputError(root, "has no tile maps (heatmaps/{head}/{sample}.h5ad)", fix)
        if len(heads) > 1:
            raise InputError(root, f"holds tile maps of several heads ({', '.join(heads)})",
                             "choose one with --head")
        head = heads[0]
    folder = root / head
    maps = sorted(p for p in folder.glob("*.h5ad") if not p.name.startswith(".")) \
        if folder.is_dir() else []
    if not maps:
        raise InputError(folder, "has no tile maps ({sample}.h5ad)", fix)
    if samples:
        by_id = {p.stem: p for p in maps}
        missing = [s for s in samples if s not in by_id]
        if missing:
            raise InputError(folder, f"has no tile map of {', '.join(missing)}",
                             f"choose among {', '.join(sorted(by_id))}")
        maps = [by_id[s] for s in samples]
    return head, maps


def _find(given: Path | None, default: Path) -> Path | None:
    if given is not None:
        if not Path(given).is_file():
            raise InputError(given, "does not exist", "pass an existing file or leave it out")
        return Path(given)
    return default if default.is_file() else None


def gene_entries(genes: Sequence[str], r_by_gene: dict[str, float]) -> list[dict[str, Any]]:
    """The search list: every gene with its r (None when unknown) and its layer file."""
    used: set[str] = set()
    entries = []
    for gene in genes:
        name = gene_filename(gene)
        stem, k = name, 1
        while name.lower() in used:  # two symbols that map to one file name
            k += 1
            name = f"{stem}~{k}"
        used.add(name.lower())
        r = r_by_gene.get(gene)
        entries.append({"name": gene, "file": name,
                        "r": round(r, 4) if r is not None and math.isfinite(r) else None})
    return entries


def _best(genes: Sequence[str], r_by_gene: dict[str, float]) -> str:
    scored = [(r_by_gene.get(g, float("nan")), g) for g in genes]
    finite = [(r, g) for r, g in scored if math.isfinite(r)]
    return max(finite, key=lambda t: (t[0], [-ord(c) for c in t[1]]))[1] if finite else genes[0]


def cohort_limits(maps: Sequence[Path], genes: Sequence[str],
                  options: ViewerOptions) -> dict[str, list[float]]:
    """One ``[vmin, vmax]`` a gene over every slide: the scale table's where it has the gene,
    else pooled robust limits over the tile maps."""
    given = read_scale(options.scale) if options.scale is not None else {}
    rest = [g for g in genes if g not in given]
    limits = {g: [float(a), float(b)] for g, (a, b) in given.items()}
    if rest:
        def load() -> Iterator[tuple[str, list[str], np.ndarray]]:
            for path in maps:
                m = read_tile_map(path)
                yield str(path), m.genes, m.values

        table = cohort_scale(load(), rest, percentiles=options.clip_percentiles)
        limits |= {str(g): [float(a), float(b)] for g, a, b in
                   zip(table["gene"], table["vmin"], table["vmax"], strict=True)}
    return limits


def check_writable(out: Path) -> None:
    """Fail early, with the fix, when the viewer's parent folder cannot be written.

    A read-only or unwritable folder (or a full disk) is the machine's fault: an
    :class:`~slide2expr.errors.EnvironmentFault` naming ``out`` (status 1, as in every other
    command); a path that cannot be a folder (a file in the way) is an :class:`InputError`.
    """
    parent = out.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        probe = parent / f".{out.name}.probe-{os.getpid()}"
        probe.mkdir()
        probe.rmdir()
    except OSError as exc:
        fault = environment_fault(exc, out, fix=None if fault_errno(exc) in NO_SPACE_ERRNOS
                                  else "pass --out-dir a folder you can write to")
        if fault is not None:
            raise fault from exc
        raise InputError(parent, f"cannot be written ({exc.strerror or exc})",
                         "pass --out-dir a folder you can write to") from exc


def build_slide(tmap: TileMap, slides_dir: Path, genes: Sequence[str], *,
                options: ViewerOptions, predictions: Path | None, explicit_predictions: bool,
                source: Path, pyramids: dict[str, tuple[Any, str]] | None = None,
                ) -> tuple[dict[str, Any], SlideStats]:
    """Pyramid, outline, spots and gene layers of one slide; its manifest entry.

    ``pyramids`` maps a slide file to the pyramid already written for it and that
    pyramid's sample folder: region samples of one slide (:mod:`slide2expr.inputs.regions`)
    share one pyramid, so the slide is read once per viewer build."""
    t0 = time.perf_counter()
    sample = tmap.sample_id or source.stem
    missing = [g for g in genes if g not in tmap.genes]
    if missing:
        raise InputError(source, f"has no prediction for {', '.join(missing[:5])}",
                         "make every tile map with the same model")
    slide_path = options.slides.get(sample) or (Path(str(tmap.attrs.slide))
                                                if tmap.attrs.slide else None)
    if slide_path is None:
        raise InputError(source, "names no slide", f"pass --slide {sample}=PATH")
    folder = slides_dir / sample
    (folder / "genes").mkdir(parents=True)
    mpp, mpp_source, outline = slide_outline(slide_path, tmap, options)
    t_pyr = time.perf_counter()
    pyramids = {} if pyramids is None else pyramids
    key = str(Path(slide_path).resolve())
    if key not in pyramids:
        pyramids[key] = (write_pyramid(slide_path, folder, backend=options.pyramid_backend),
                         sample)
    pyr, pyramid_owner = pyramids[key]
    pyramid_seconds = time.perf_counter() - t_pyr
    grid = layers.tile_grid(tmap)
    spots = read_spots(predictions, sample, genes, explicit=explicit_predictions)
    spread = layers.tile_spread(tmap)
    sizes = _write_gene_layers(tmap, folder, sample, genes, grid, spots=spots, spread=spread,
                               options=options)
    _write_slide_detail(tmap, folder, sample, grid, spots=spots, outline=outline)
    entry = {
        "id": sample, "width": pyr.width, "height": pyr.height,
        "mpp": mpp, "mpp_source": mpp_source,
        "dzi": {"url": f"slides/{pyramid_owner}/slide_files/", "format": pyr.fmt,
                "tile_size": pyr.tile_size, "overlap": pyr.overlap},
        "grid": grid.as_json(), "n_tiles": len(tmap.values),
        "has_spots": spots is not None, "has_spread": spread is not None,
        "model_use": str(tmap.attrs.model_use if tmap.attrs.model_use is not None else ""),
    }
    pyramid_bytes = (_du(folder / "slide_files") + (folder / "slide.dzi").stat().st_size
                     if pyramid_owner == sample else 0)
    stat = SlideStats(
        sample_id=sample, width=pyr.width, height=pyr.height, n_tiles=len(tmap.values),
        n_genes=len(genes), seconds=round(time.perf_counter() - t0, 2),
        pyramid_seconds=round(pyramid_seconds, 2), pyramid_backend=pyr.backend,
        bytes=_du(folder), pyramid_bytes=pyramid_bytes,
        layer_bytes_median=int(np.median(sizes)) if sizes else 0)
    log.info("%s: viewer slide %d x %d px, %d genes, %.1f MB in %.1f s (pyramid %.1f s, %s)",
             sample, pyr.width, pyr.height, len(genes), stat.bytes / 1e6, stat.seconds,
             pyramid_seconds, pyr.backend)
    return entry, stat


def _write_gene_layers(tmap: TileMap, folder: Path, sample: str, genes: Sequence[str],
                       grid: layers.Grid, *, spots: layers.SpotTable | None,
                       spread: np.ndarray | None,
                       options: ViewerOptions) -> list[int]:
    """One ``genes/{gene}.js`` layer a gene, coloured on the slide's own limits; returns
    their sizes in bytes."""
    sizes = []
    for gene, entry in zip(genes, gene_entries(genes, {}), strict=True):
        col = tmap.genes.index(gene)
        layer = layers.gene_layer(
            tmap, gene, grid,
            slide_limits=robust_limits(tmap.values[:, col], options.clip_percentiles),
            spots=spots, spread=None if spread is None else spread[:, col])
        path = folder / "genes" / f"{entry['file']}.js"
        path.write_text(page.js_call("gene", sample, gene, layer), encoding="utf-8")
        sizes.append(path.stat().st_size)
    return sizes


def _write_slide_detail(tmap: TileMap, folder: Path, sample: str, grid: layers.Grid, *,
                        spots: layers.SpotTable | None, outline: list) -> None:
    """``slide.js``: the tiles' cells on the grid, their ids, the tissue outline, the
    spots."""
    cells = layers.tile_cells(tmap, grid)
    detail = {
        "cells": layers.b64(cells.astype("<i4").tobytes()),
        "tile_ids": [str(s) for s in tmap.spot_ids] if tmap.spot_ids is not None else None,
        "outline": outline,
        "spots": None if spots is None else {
            "centres": np.round(spots.centres, 1).tolist(), "ids": spots.ids,
            "diameter": round(spots.diameter, 1)},
    }
    (folder / "slide.js").write_text(page.js_call("slide", sample, detail), encoding="utf-8")


def slide_outline(slide_path: Path, tmap: TileMap,
                  options: ViewerOptions) -> tuple[float | None, str | None, list]:
    """The slide's mpp (and its source) and tissue outline (level-0 px), as the heatmaps
    trace it on a thumbnail."""

    with open_matching_slide(slide_path, tmap, default_mpp=options.default_mpp) as slide:
        thumb, downsample = slide.thumbnail(OUTLINE_THUMBNAIL_PX)
        mpp, source = slide.mpp, slide.mpp_source
        width, height = slide.dimensions
    if not mpp:
        return None, None, []
    mask, mask_ds = tissue_mask(thumb, downsample, mpp=mpp, params=options.tissue)
    polygons = mask_polygons(mask, mask_ds, bounds=(float(width), float(height)))
    outline = [[np.round(np.asarray(ring), 0).astype(int).tolist() for ring in poly]
               for poly in polygons]
    return float(mpp), str(source) if source else None, outline


def spot_predictions(predictions: Path | None, *, explicit: bool) -> Path | None:
    """``predictions`` when it is a readable spot-mode predictions file, ``None`` when there
    is none or it was found by itself and is bulk mode (no spots: a note).

    Raises
    ------
    InputError
        When the file cannot be read, or was passed explicitly and is not spot mode: checked
        before any work, so a broken file never yields a viewer without its spots.
    """
    if predictions is None:
        return None
    try:
        read_predictions(predictions, need=(Key.SPATIAL,))
    except InputError as exc:
        if explicit or f"obsm['{Key.SPATIAL}']" not in exc.problem:
            raise
        log.info("no spots from %s (%s)", predictions, exc.problem)
        return None
    return predictions


def read_spots(predictions: Path | None, sample: str, genes: Sequence[str], *,
               explicit: bool) -> layers.SpotTable | None:
    """The slide's spots from spot-mode predictions, or None (bulk mode, not a training
    slide). A predictions file found by itself that is not spot-mode is skipped with a note."""
    if predictions is None:
        return None

    try:
        values = read_spot_values(predictions, sample, genes)
    except InputError as exc:
        if explicit:
            raise
        log.info("no spots from %s (%s)", predictions, exc.problem)
        return None
    return None if values is None else layers.spot_table(values)


def _du(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
