"""The report stage: per-gene statistics of out-of-fold predictions, a summary and a page.

:func:`write_report` turns ``results/predictions/{head}.h5ad`` into ``genes.tsv``,
``summary.json`` and a self-contained ``index.html`` in one directory, all three written
atomically together.
"""

from __future__ import annotations

import logging
from pathlib import Path

from slide2expr.atomic import atomic_outputs
from slide2expr.contracts.report import (
    GENES_TSV,
    MAP_VS_SPOTS_TSV,
    SUMMARY_JSON,
    write_genes_table,
    write_map_vs_spots,
    write_summary,
)
from slide2expr.keys import Key
from slide2expr.report.evaluate import ReportData, build_report, by_r, load_predictions
from slide2expr.report.html import render_html
from slide2expr.report.links import VIEWER, find_links

log = logging.getLogger(__name__)

__all__ = ["ReportData", "build_report", "load_predictions", "render_html", "write_report"]

OUTPUT_NAMES = (GENES_TSV, SUMMARY_JSON, "index.html")
#: Written beside them when the run's regions carry spot truth.
MAP_VS_SPOTS = MAP_VS_SPOTS_TSV


def write_report(predictions: str | Path, out_dir: str | Path, *, top_n: int = 50,
                 n_hvg: int = 50, n_boot: int = 1000, alpha: float = 0.05, seed: int = 0,
                 baseline: str = "ridge", n_scatter: int = 8, viewer: str = VIEWER,
                 model_dir: str | Path | None = None,
                 ceiling: str | Path | None = None) -> ReportData:
    """Evaluate a predictions file and write ``genes.tsv``, ``summary.json``, ``index.html``.

    Parameters
    ----------
    predictions
        The train stage's out-of-fold predictions (``.h5ad``).
    out_dir
        Directory of the three outputs (created).
    top_n, n_hvg, n_boot, alpha, seed, baseline
        See :func:`~slide2expr.report.evaluate.build_report`.
    n_scatter
        Best and worst genes drawn as predicted-vs-observed scatter plots.
    viewer
        The viewer page relative to ``index.html`` (each gene links to ``{viewer}#gene=G``;
        empty: no viewer links). Heatmap and QC links follow the ``results/`` layout
        (:mod:`slide2expr.report.links`).
    model_dir
        The head's fold models (default: ``models/{head}`` beside ``predictions/``). When the
        run's regions carry spot truth (``slide2expr pseudobulk``), the map-versus-spots
        score (:mod:`slide2expr.report.map_vs_spots`) is added: ``map_vs_spots.tsv``,
        ``summary['map_vs_spots']`` and its own section of the page.
    ceiling
        A spot run's predictions of the same sections (one held out a fold), scored at the
        spots as the map-versus-spots ceiling (:func:`~slide2expr.report.map_vs_spots.read_ceiling`).

    Returns
    -------
    ReportData
        The tables and summary that were written.
    """
    adata = load_predictions(predictions)
    data = build_report(adata, top_n=top_n, n_hvg=n_hvg, n_boot=n_boot, alpha=alpha,
                        seed=seed, baseline=baseline, source=predictions)
    log.info("rendering the page")
    out = Path(out_dir)
    head = str(data.summary.get("head") or out.name)
    links = find_links(out, head=head, samples=adata.obs[Key.SAMPLE_ID].astype(str).unique(),
                       genes=data.genes["gene"].astype(str).tolist(), viewer=viewer)
    map_scores = _map_scores(adata, predictions, data, model_dir, top_n=top_n, n_boot=n_boot,
                             seed=seed, ceiling=ceiling)
    page = render_html(data, n_scatter=n_scatter, seed=seed, links=links, map_scores=map_scores)
    names = OUTPUT_NAMES + ((MAP_VS_SPOTS,) if map_scores is not None else ())
    with atomic_outputs(*(out / name for name in names)) as (tsv, js, page_path, *extra):
        write_genes_table(by_r(data.genes), tsv)
        if map_scores is not None:
            write_map_vs_spots(map_scores, extra[0])
        write_summary(data.summary, js)
        page_path.write_text(page, encoding="utf-8")
    m = data.summary["model"]["all"]
    log.info("wrote %s: mean r %s over %d genes, %d significantly well predicted", out,
             m["mean_r"], m["n_defined"], data.summary["counts"]["n_significant"])
    return data


def _map_scores(adata, predictions: str | Path, data: ReportData,
                model_dir: str | Path | None, *, top_n: int, n_boot: int, seed: int,
                ceiling: str | Path | None = None):
    """The map-versus-spots table of a bulk run whose regions carry spot truth, else None;
    its summary block goes into ``data.summary['map_vs_spots']``."""
    from slide2expr.report.map_vs_spots import has_spot_truth, score_maps

    if "features_path" not in adata.obs or not has_spot_truth(adata.obs):
        return None
    head = str(data.summary.get("head") or Path(predictions).stem)
    model_dir = Path(model_dir) if model_dir is not None else \
        Path(predictions).resolve().parent.parent / "models" / head
    log.info("map versus spots: tile maps of %s read at the measured spots", model_dir)
    table, block = score_maps(adata, model_dir, top_n=top_n, n_boot=n_boot, seed=seed,
                              ceiling=ceiling)
    data.summary["map_vs_spots"] = block
    return table
