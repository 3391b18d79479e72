"""The report's tables: ``report/{head}/genes.tsv``, ``summary.json``, and the heatmaps'
cohort colour scale ``heatmaps/{head}/scale.tsv``.

Contract:

- ``genes.tsv``: one row per gene, best ``pearson_r`` first; columns ``gene``, ``pearson_r``
  and the statistics of :data:`slide2expr.report.evaluate` (``NaN`` where undefined),
  numbers to 8 significant digits. Written by ``slide2expr report``; read by heatmaps (the
  top genes to draw), the viewer (r beside each gene) and people.
- ``summary.json``: the run's summary (JSON object, no NaN), written by ``slide2expr report``,
  read by ``slide2expr compare`` and ``verify``.
- ``scale.tsv``: ``gene, vmin, vmax, n_tiles, n_slides`` (6 significant digits), written by
  ``slide2expr heatmap-scale``, read by heatmaps and the viewer.
- ``map_vs_spots.tsv``: the report's map-versus-spots table (bulk regions with spot truth),
  written beside ``genes.tsv`` by ``slide2expr report``.

This module owns the file names and every reader and writer of the four, so a column is
named, parsed and checked in one place.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from slide2expr.atomic import atomic_output
from slide2expr.errors import InputError

GENES_TSV = "genes.tsv"
SUMMARY_JSON = "summary.json"
SCALE_TSV = "scale.tsv"
MAP_VS_SPOTS_TSV = "map_vs_spots.tsv"
SCALE_COLUMNS = ("gene", "vmin", "vmax", "n_tiles", "n_slides")

_GENES_FIX = "pass results/report/{head}/genes.tsv written by `slide2expr report`"
_SCALE_FIX = "pass heatmaps/{head}/scale.tsv written by `slide2expr heatmap-scale`"


def write_genes_table(table: pd.DataFrame, path: str | Path) -> None:
    """Write ``genes.tsv`` (the caller's row order; NaN as ``NaN``, 8 significant digits).

    ``path`` is written as given: the report writes its three files into temporaries it
    renames together.
    """
    table.to_csv(path, sep="\t", index=False, na_rep="NaN", float_format="%.8g")


def read_genes_table(path: str | Path, *, columns: tuple[str, ...] = ("gene", "pearson_r")
                     ) -> pd.DataFrame:
    """``genes.tsv`` as a table, ``gene`` as text and ``pearson_r`` numeric (NaN where
    undefined).

    Raises
    ------
    InputError
        If the file is unreadable or lacks one of ``columns``.
    """
    path = Path(path)
    try:
        # gene symbols such as NA or NULL stay symbols: only the numbers' NaN is missing
        table = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
    except (OSError, UnicodeDecodeError, pd.errors.ParserError,
            pd.errors.EmptyDataError) as exc:
        raise InputError(path, f"is not a readable report table ({exc})", _GENES_FIX) from exc
    missing = set(columns) - set(table.columns)
    if missing:
        raise InputError(path, f"has no column(s) {', '.join(sorted(missing))}",
                         "pass the report's genes.tsv (columns gene, pearson_r, ...)")
    for column in table.columns.drop("gene", errors="ignore"):
        numbers = pd.to_numeric(table[column].replace("", "NaN"), errors="coerce")
        if column == "pearson_r" or numbers.notna().sum() == (table[column] != "NaN").sum():
            table[column] = numbers
    return table


def read_gene_r(path: str | Path) -> dict[str, float]:
    """``{gene: pearson_r}`` of ``genes.tsv`` (NaN where undefined)."""
    table = read_genes_table(path)
    return {str(g): float(v) for g, v in zip(table["gene"], table["pearson_r"], strict=True)}


def write_map_vs_spots(table: pd.DataFrame, path: str | Path) -> None:
    """Write ``map_vs_spots.tsv`` (tile maps read at the spot centres of held-out sections,
    :mod:`slide2expr.report.map_vs_spots`; NaN as ``NaN``, 6 significant digits)."""
    table.to_csv(path, sep="\t", index=False, na_rep="NaN", float_format="%.6g")


def read_map_vs_spots(path: str | Path) -> pd.DataFrame:
    """``map_vs_spots.tsv`` as a table (``NaN`` as missing).

    Raises
    ------
    InputError
        If the file is missing or unreadable.
    """
    path = Path(path)
    try:
        return pd.read_csv(path, sep="\t")
    except (OSError, UnicodeDecodeError, pd.errors.ParserError,
            pd.errors.EmptyDataError) as exc:
        raise InputError(path, f"is not a readable map-versus-spots table ({exc})",
                         "rerun `slide2expr report` on bulk regions with spot truth") from exc


def write_summary(summary: dict[str, Any], path: str | Path) -> None:
    """Write ``summary.json`` (indented, no NaN: a NaN is a bug upstream and fails here)."""
    Path(path).write_text(json.dumps(summary, indent=2, allow_nan=False) + "\n",
                          encoding="utf-8")


def read_summary(path: str | Path) -> dict[str, Any]:
    """``summary.json`` as a dict.

    Raises
    ------
    InputError
        If the file is missing, not JSON, or not a JSON object.
    """
    path = Path(path)
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise InputError(path, "does not exist",
                         "run `slide2expr report` first (it writes summary.json)") from exc
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(path, f"is not a readable summary ({exc})",
                         "rerun `slide2expr report` to rewrite it") from exc
    if not isinstance(summary, dict):
        raise InputError(path, "is not a JSON object", "rerun `slide2expr report` to rewrite it")
    return summary


def write_scale(path: str | Path, table: pd.DataFrame) -> None:
    """Write a scale table (``scale.tsv``, 6 significant digits) atomically."""
    with atomic_output(path) as tmp:
        table.to_csv(tmp, sep="\t", index=False, float_format="%.6g")


def read_scale(path: str | Path) -> dict[str, tuple[float, float]]:
    """``{gene: (vmin, vmax)}`` from a scale table.

    Raises
    ------
    InputError
        If the file is unreadable, lacks ``gene, vmin, vmax``, or a gene has no finite
        ``vmin < vmax``.
    """
    path = Path(path)
    try:
        table = pd.read_csv(path, sep="\t", dtype={"gene": str})
    except (OSError, UnicodeDecodeError, pd.errors.ParserError,
            pd.errors.EmptyDataError) as exc:
        raise InputError(path, f"is not a readable scale table ({exc})", _SCALE_FIX) from exc
    missing = {"gene", "vmin", "vmax"} - set(table.columns)
    if missing:
        raise InputError(path, f"has no column(s) {', '.join(sorted(missing))}",
                         "pass a scale table written by `slide2expr heatmap-scale`")
    bad = ~(np.isfinite(table["vmin"]) & np.isfinite(table["vmax"])
            & (table["vmax"] > table["vmin"]))
    if bad.any():
        raise InputError(path, f"gene {table.loc[bad, 'gene'].iloc[0]!r} has no valid vmin < vmax",
                         "re-run `slide2expr heatmap-scale`")
    return {str(g): (float(a), float(b)) for g, a, b in
            zip(table["gene"], table["vmin"], table["vmax"], strict=True)}
