"""Which genes to draw: an explicit list, else the report's best-predicted genes."""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from slide2expr.errors import InputError

log = logging.getLogger(__name__)

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


def gene_filename(gene: str) -> str:
    """A file-name-safe, unique version of a gene symbol (without ``.png``).

    A symbol of letters, digits and ``._-`` is its own file name. Any other (``HLA/A``,
    ``HLA A``) has its other characters replaced by ``_`` and a short hash of the symbol
    appended (``HLA_A-3f2a9c1d``), so two symbols that differ only there never share a file.
    """
    gene = str(gene)
    name = _UNSAFE.sub("_", gene)
    if name == gene and name.strip("._"):
        return name
    if not name.strip("._"):
        name = f"gene_{name}"
    return f"{name}-{_short_hash(gene)}"


def gene_filenames(genes: Sequence[str]) -> dict[str, str]:
    """:func:`gene_filename` of each gene, also unique on case-insensitive file systems.

    Names that differ only in case (``Gene``, ``GENE``) get the hash too.
    """
    names = {g: gene_filename(g) for g in genes}
    folded: dict[str, list[str]] = {}
    for g, name in names.items():
        folded.setdefault(name.casefold(), []).append(g)
    for group in folded.values():
        if len(group) > 1:
            for g in group:
                if not names[g].endswith(f"-{_short_hash(g)}"):
                    names[g] = f"{names[g]}-{_short_hash(g)}"
    return names


def _short_hash(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:8]


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
    report = Path(report)
    try:
        table = pd.read_csv(report, sep="\t", dtype={"gene": str})
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise InputError(report, f"is not a readable report table ({exc})",
                         "pass results/report/{head}/genes.tsv written by `slide2expr report`") from exc
    missing = {"gene", "pearson_r"} - set(table.columns)
    if missing:
        raise InputError(report, f"has no column(s) {', '.join(sorted(missing))}",
                         "pass the report's genes.tsv (columns gene, pearson_r, ...)")
    keep = set(available)
    table = table[table["gene"].isin(keep) & np.isfinite(pd.to_numeric(table["pearson_r"],
                                                                       errors="coerce"))]
    if table.empty:
        raise InputError(report, "shares no gene (with a finite pearson_r) with the model",
                         "use the report made from the same model directory")
    table = table.assign(pearson_r=pd.to_numeric(table["pearson_r"]))
    table = table.sort_values(["pearson_r", "gene"], ascending=[False, True], kind="mergesort")
    return table["gene"].head(n_genes).tolist()


def select_genes(available: Sequence[str], *, genes: Sequence[str] | None = None,
                 report: str | Path | None = None, n_genes: int = 4,
                 values: np.ndarray | None = None, source: str | Path | None = None) -> list[str]:
    """The genes to draw.

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
    values
        ``(N, G)`` tile predictions aligned with ``available``; without ``genes`` and
        ``report`` the ``n_genes`` most variable genes across tiles are drawn (a warning says
        so: that choice is per slide, not per cohort).
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
    if values is None:
        return list(available)[:n_genes]
    var = np.nanvar(np.asarray(values, dtype=np.float64), axis=0)
    order = np.argsort(-var, kind="stable")[:n_genes]
    chosen = [available[i] for i in order]
    log.warning("no genes and no report given: drawing the %d genes that vary most across "
                "this slide's tiles (%s)", len(chosen), ", ".join(chosen))
    return chosen
