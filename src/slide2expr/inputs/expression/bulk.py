"""Bulk expression: one profile per sample, from a TSV/CSV matrix or an h5ad.

Layouts:

- **TSV/CSV** (optionally gzipped), samples x genes with the sample ID in the first column,
  or genes x samples with the gene ID in the first column (``orientation``). A genes x
  samples file may carry a text column of symbols beside the IDs (``gene_map`` names it).
- **h5ad**: ``obs_names`` are sample IDs, ``var_names`` genes; ``layers['counts']`` is used
  when present, else ``X``.

``orientation: auto`` decides by where the sample sheet's IDs are found: in the first column
(samples x genes) or in the header (genes x samples); when neither holds any, the longer
side is taken as genes, with a warning.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import sparse

from slide2expr.errors import InputError
from slide2expr.inputs.expression.gene_ids import map_column, read_gene_map, rename_genes
from slide2expr.inputs.expression.table import ExpressionTable, check_values, read_delimited
from slide2expr.inputs.textio import file_suffix
from slide2expr.keys import Key

log = logging.getLogger(__name__)

ORIENTATIONS = ("auto", "samples_x_genes", "genes_x_samples")


def read_bulk_matrix(
    path: str | Path,
    *,
    values: str = "counts",
    orientation: str = "auto",
    gene_map: str | Path | None = None,
    sample_ids: list[str] | None = None,
) -> ExpressionTable:
    """Read a bulk expression matrix as samples x genes.

    Parameters
    ----------
    path
        TSV/CSV (``.gz`` allowed) or h5ad.
    values
        ``counts``, ``tpm``, ``fpkm`` or ``log``; only ``log`` values may be negative.
    orientation
        ``auto``, ``samples_x_genes`` or ``genes_x_samples``.
    gene_map
        ``None``; a mapping file (ID -> symbol, see
        :func:`~slide2expr.inputs.expression.gene_ids.read_gene_map`); or the name of a symbol column
        in a genes x samples text file (or of an h5ad ``var`` column).
    sample_ids
        The sample sheet's IDs, used by ``orientation='auto'``.

    Returns
    -------
    ExpressionTable
        Samples x genes, unique symbols, values checked.

    Raises
    ------
    InputError
        For unreadable files, duplicate sample or gene IDs, non-numeric, missing, infinite
        or negative values, and an orientation that cannot be decided.
    """
    path = Path(path)
    if orientation not in ORIENTATIONS:
        raise InputError(None, f"orientation {orientation!r} is not one of {', '.join(ORIENTATIONS)}",
                         "fix join.orientation in the config")
    if not path.is_file():
        raise InputError(path, "the expression matrix does not exist", "fix join.expression in the config")
    map_file, map_col = _gene_map_kind(gene_map)
    if file_suffix(path) == ".h5ad":
        table, symbols = _read_h5ad(path, orientation=orientation, map_col=map_col)
    else:
        table, symbols = _read_text(path, orientation=orientation, map_col=map_col,
                                    sample_ids=sample_ids)
    check_values(table.matrix, source=path, values=values, ids=table.ids)
    mapping = _gene_mapping(table, symbols, path=path, map_file=map_file, map_col=map_col)
    table = rename_genes(table, mapping=mapping)
    log.info("%s: %d samples x %d genes (%s)", path, *table.shape, values)
    return table


def _gene_mapping(table: ExpressionTable, symbols: pd.Series | None, *, path: Path,
                  map_file: Path | None, map_col: str | None) -> pd.Series | None:
    """The gene ID -> symbol mapping: the file's symbol column, a mapping file, or None."""
    if map_col is not None:
        if symbols is None:
            raise InputError(path, f"has no gene symbol column {map_col!r} (join.gene_map)",
                             "give the column that holds symbols, or a mapping file")
        return map_column(table.genes, symbols)
    if map_file is not None:
        return read_gene_map(map_file)
    return None


def _gene_map_kind(gene_map: str | Path | None) -> tuple[Path | None, str | None]:
    if gene_map is None or str(gene_map) == "":
        return None, None
    candidate = Path(gene_map)
    if candidate.is_file():
        return candidate, None
    if candidate.suffix.lower() in (".tsv", ".csv", ".txt", ".gz") or "/" in str(gene_map):
        raise InputError(candidate, "the gene map file does not exist", "fix join.gene_map")
    return None, str(gene_map)


def _read_text(
    path: Path, *, orientation: str, map_col: str | None, sample_ids: list[str] | None,
) -> tuple[ExpressionTable, pd.Series | None]:
    what = {"samples_x_genes": "sample", "genes_x_samples": "gene"}.get(orientation, "row")
    keep = (map_col,) if map_col else ()
    frame, text = read_delimited(path, what=what, keep_text_columns=keep)
    if orientation == "auto":
        orientation = _detect(frame.index, frame.columns, sample_ids, path)
    symbols = text[map_col] if map_col and map_col in text.columns else None
    if orientation == "genes_x_samples":
        table = ExpressionTable(frame.to_numpy().T, frame.columns, frame.index, str(path))
    else:
        if symbols is not None:
            raise InputError(path, f"a symbol column {map_col!r} only fits a genes x samples "
                             "matrix", "give a mapping file as join.gene_map instead")
        table = ExpressionTable(frame.to_numpy(), frame.index, frame.columns, str(path))
    return table, symbols


def _read_h5ad(
    path: Path, *, orientation: str, map_col: str | None,
) -> tuple[ExpressionTable, pd.Series | None]:
    import anndata as ad

    try:
        adata = ad.read_h5ad(path)
    except (OSError, KeyError, ValueError) as exc:
        raise InputError(path, f"cannot read h5ad ({exc})", "") from exc
    matrix = adata.layers[Key.COUNTS] if "counts" in adata.layers else adata.X
    matrix = matrix.tocsr().astype(np.float64) if sparse.issparse(matrix) else \
        np.asarray(matrix, dtype=np.float64)
    ids, genes = adata.obs_names, adata.var_names
    symbols = None
    if map_col is not None and map_col in adata.var.columns:
        symbols = adata.var[map_col].astype(str)
    if orientation == "genes_x_samples":
        matrix, ids, genes = matrix.T, genes, ids
        symbols = adata.obs[map_col].astype(str) if map_col and map_col in adata.obs else None
    for kind, index in (("sample", ids), ("gene", genes)):
        dup = index[index.duplicated()].unique()
        if len(dup):
            raise InputError(path, f"{len(dup)} duplicate {kind} ID(s) (e.g. {', '.join(dup[:3])})",
                             f"make {kind} IDs unique")
    return ExpressionTable(matrix, ids, genes, str(path)), symbols


def _detect(rows: pd.Index, cols: pd.Index, sample_ids: list[str] | None, path: Path) -> str:
    wanted = set(sample_ids or [])
    in_rows, in_cols = len(wanted & set(rows)), len(wanted & set(cols))
    if in_rows > in_cols:
        return "samples_x_genes"
    if in_cols > in_rows:
        return "genes_x_samples"
    guess = "genes_x_samples" if len(rows) > len(cols) else "samples_x_genes"
    log.warning("%s: no sample ID of the sheet found in the first column or the header; "
                "taking it as %s from its shape (%d x %d); set join.orientation to be sure",
                path, guess, len(rows), len(cols))
    return guess
