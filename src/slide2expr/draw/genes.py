"""Which genes to draw: an explicit list, else the report's best-predicted genes."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from slide2expr.contracts.report import read_genes_table
from slide2expr.errors import InputError

log = logging.getLogger(__name__)

def split_gene_args(values: Sequence[str] | None) -> list[str] | None:
    """Flatten ``--genes A --genes B,C`` into ``["A", "B", "C"]`` (None when empty)."""
    if not values:
        return None
    genes = [g.strip() for v in values for g in str(v).split(",") if g.strip()]
    return genes or None


def top_report_genes(report: str | Path, available: Sequence[str], *, n_genes: int) -> list[str]:
    """The ``n_genes`` genes of ``report`` (``genes.tsv``) with the highest ``pearson_r``.

    Only genes in ``available`` (those the model predicts) are considered; genes whose
    ``pearson_r`` is missing (constant, not modelled) are skipped.

    Raises
    ------
    InputError
        If the report is unreadable, lacks ``gene``/``pearson_r``, or shares no gene with the
        model.
    """
    table = read_genes_table(report)
    keep = set(available)
    table = table[table["gene"].isin(keep) & np.isfinite(table["pearson_r"])]
    if table.empty:
        raise InputError(report, "shares no gene (with a finite pearson_r) with the model",
                         "use the report made from the same model directory")
    table = table.sort_values(["pearson_r", "gene"], ascending=[False, True], kind="mergesort")
    return table["gene"].head(n_genes).tolist()


#: Without genes or a report: the ``n_genes`` genes varying most across a slide's tiles
#: (``values`` needed; a per-slide choice, so a warning says so), or the first ``n_genes`` in
#: the model's order (the same for every slide: the cohort scale).
FALLBACKS = ("most_variable", "model_order")


def select_genes(available: Sequence[str], *, genes: Sequence[str] | None = None,
                 report: str | Path | None = None, n_genes: int = 4,
                 fallback: str = "most_variable", values: np.ndarray | None = None,
                 source: str | Path | None = None) -> list[str]:
    """The genes to draw: the one choice heatmaps, the cohort scale and the viewer make.

    In order: ``genes`` when given (each checked against ``available``), else the report's
    top ``n_genes``, else ``fallback``. Heatmaps pass ``fallback="most_variable"`` with the
    slide's values, the cohort scale (``slide2expr heatmap-scale``) ``"model_order"``; the
    viewer draws every gene unless ``genes`` are given.

    Parameters
    ----------
    available
        Genes the model predicts, in model order.
    genes
        Explicit choice; every one must be in ``available``.
    report
        ``genes.tsv`` of the report: its top ``n_genes`` by ``pearson_r`` are used when
        ``genes`` is None.
    n_genes
        How many genes to take from the report (or the fallback).
    fallback
        Without ``genes`` and ``report``: ``"most_variable"`` (the ``n_genes`` genes varying
        most across ``values``' tiles; a warning says so: that choice is per slide, not per
        cohort) or ``"model_order"`` (the first ``n_genes`` of ``available``).
    values
        ``(N, G)`` tile predictions aligned with ``available`` (``"most_variable"``).
    source
        The model directory, named in errors.

    Returns
    -------
    list of str
        Gene symbols, no duplicates, in the order given (or by decreasing score).
    """
    if n_genes < 1:
        raise InputError(None, f"n_genes must be at least 1 (got {n_genes})", "pass --n-genes 1 or more")
    if genes:
        wanted = list(dict.fromkeys(genes))
        unknown = [g for g in wanted if g not in set(available)]
        if unknown:
            shown = ", ".join(unknown[:5]) + (" ..." if len(unknown) > 5 else "")
            raise InputError(source, f"the model does not predict {len(unknown)} requested "
                             f"gene(s): {shown}",
                             f"choose among the model's {len(available)} genes "
                             f"(e.g. {', '.join(list(available)[:5])})")
        return wanted
    if report is not None:
        return top_report_genes(report, available, n_genes=n_genes)
    if fallback not in FALLBACKS:
        raise ValueError(f"fallback must be one of {FALLBACKS}, not {fallback!r}")
    if fallback == "model_order" or values is None:
        return list(available)[:n_genes]
    var = np.nanvar(np.asarray(values, dtype=np.float64), axis=0)
    order = np.argsort(-var, kind="stable")[:n_genes]
    chosen = [available[i] for i in order]
    log.warning("no genes and no report given: drawing the %d genes that vary most across "
                "this slide's tiles (%s)", len(chosen), ", ".join(chosen))
    return chosen
