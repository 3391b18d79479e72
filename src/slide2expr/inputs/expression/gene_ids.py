"""Gene identifiers: Ensembl versions, mapping to symbols, duplicate names.

``var_names`` of the dataset are gene symbols (docs/architecture.md). Expression files often name
genes by versioned Ensembl IDs (``ENSG00000141510.16``); given a mapping (a file, or a
column of the expression file), they are renamed to symbols. Several IDs that end up with
one name (versions, PAR_Y copies, several IDs per symbol) are summed, with a warning.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import sparse

from slide2expr.errors import InputError
from slide2expr.inputs.expression.table import ExpressionTable

log = logging.getLogger(__name__)

ENSEMBL_VERSION = re.compile(r"^(ENS[A-Z]*[GTP]\d{6,})\.\d+(_PAR_Y)?$")
ENSEMBL_ID = re.compile(r"^ENS[A-Z]*G\d{6,}$")
_ID_NAMES = ("gene_id", "ensembl_gene_id", "ensembl_id", "ensembl", "id", "gene")
_SYMBOL_NAMES = ("gene_name", "gene_symbol", "symbol", "hgnc_symbol", "external_gene_name", "name")


def strip_version(gene_id: str) -> str:
    """``ENSG00000141510.16`` -> ``ENSG00000141510``; other names are returned unchanged."""
    m = ENSEMBL_VERSION.match(gene_id)
    return m.group(1) if m else gene_id


def read_gene_map(path: str | Path) -> pd.Series:
    """Read a gene ID -> symbol mapping file.

    Parameters
    ----------
    path
        TSV/CSV with a header. The ID column is ``gene_id`` (or ``ensembl_gene_id``,
        ``ensembl_id``, ``id``, ``gene``), the symbol column ``gene_name`` (or
        ``gene_symbol``, ``symbol``, ``hgnc_symbol``, ``name``); otherwise the first two
        columns. Ensembl versions are ignored.

    Returns
    -------
    pandas.Series
        Symbols indexed by version-less IDs (first occurrence kept).
    """
    path = Path(path)
    try:
        frame = pd.read_csv(path, sep=None, engine="python", dtype=str, keep_default_na=False)
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        raise InputError(path, f"cannot read the gene map ({exc})",
                         "give a TSV/CSV with columns gene_id and gene_name") from exc
    if frame.shape[1] < 2:
        raise InputError(path, "the gene map needs two columns (ID, symbol)",
                         "give a TSV/CSV with columns gene_id and gene_name")
    lower = {c.strip().lower(): c for c in frame.columns}
    id_col = next((lower[c] for c in _ID_NAMES if c in lower), frame.columns[0])
    sym_col = next((lower[c] for c in _SYMBOL_NAMES if c in lower and lower[c] != id_col),
                   next(c for c in frame.columns if c != id_col))
    return _as_mapping(frame[id_col], frame[sym_col])


def map_column(ids: pd.Index, symbols: pd.Series) -> pd.Series:
    """A mapping from a symbol column that sits beside the IDs in the expression file."""
    return _as_mapping(pd.Series(ids, dtype=str), pd.Series(symbols.to_numpy(), dtype=str))


def rename_genes(
    table: ExpressionTable,
    *,
    mapping: pd.Series | None = None,
) -> ExpressionTable:
    """Strip Ensembl versions, map IDs to symbols, sum genes that share a name.

    Parameters
    ----------
    table
        The expression table; its ``genes`` are IDs or symbols.
    mapping
        Symbols indexed by version-less IDs (from :func:`read_gene_map` or
        :func:`map_column`); ``None`` keeps the names (versions stripped).

    Returns
    -------
    ExpressionTable
        With unique gene names. Genes without a symbol keep their (version-less) ID, with a
        warning. With a mapping, the input's IDs (as written) are kept as ``gene_ids``.
    """
    names = pd.Index([strip_version(g) for g in table.genes])
    gene_ids = table.gene_ids
    if mapping is not None:
        mapped = names.map(lambda g: mapping.get(g))
        unmapped = pd.isna(np.asarray(mapped, dtype=object))
        if unmapped.all():
            raise InputError(table.source, f"none of the {len(names)} genes (e.g. "
                             f"{', '.join(names[:3])}) is in the gene map",
                             "check that the gene map's IDs match the expression file")
        if unmapped.any():
            log.warning("%s: %d of %d gene IDs have no symbol in the gene map and keep their "
                        "ID (e.g. %s)", table.source, int(unmapped.sum()), len(names),
                        ", ".join(names[unmapped][:3]))
        if gene_ids is None:
            gene_ids = table.genes
        names = pd.Index(np.where(unmapped, np.asarray(names, dtype=object),
                                  np.asarray(mapped, dtype=object)))
    elif sum(bool(ENSEMBL_ID.match(g)) for g in names[:1000]) > len(names[:1000]) // 2:
        log.warning("%s: genes are Ensembl IDs and no join.gene_map is set: var_names will be "
                    "Ensembl IDs, not symbols", table.source)
    return sum_duplicate_genes(ExpressionTable(table.matrix, table.ids, names, table.source,
                                               gene_ids))


def sum_duplicate_genes(table: ExpressionTable) -> ExpressionTable:
    """Sum columns that share a gene name (keeping the first occurrence's position)."""
    genes = table.genes
    if not genes.duplicated().any():
        return table
    codes, uniques = pd.factorize(genes)
    dup_names = genes[genes.duplicated(keep=False)].unique()
    log.warning("%s: %d gene name(s) occur more than once after mapping (%d columns, e.g. %s); "
                "their values are summed", table.source, len(dup_names),
                int(genes.isin(dup_names).sum()), ", ".join(map(str, dup_names[:3])))
    merge = sparse.csr_matrix(
        (np.ones(len(genes)), (np.arange(len(genes)), codes)), shape=(len(genes), len(uniques)))
    matrix = table.matrix @ merge
    matrix = matrix.tocsr() if sparse.issparse(matrix) else np.asarray(matrix)
    gene_ids = None
    if table.gene_ids is not None:  # the IDs summed into one name, joined in column order
        ids = pd.Series(np.asarray(table.gene_ids, dtype=object)).groupby(codes, sort=True)
        gene_ids = pd.Index(ids.agg(lambda s: ";".join(dict.fromkeys(s))).to_numpy())
    return ExpressionTable(matrix, table.ids, pd.Index(uniques), table.source, gene_ids)


def _as_mapping(ids: pd.Series, symbols: pd.Series) -> pd.Series:
    keys = [strip_version(str(i).strip()) for i in ids]
    values = symbols.astype(str).str.strip().to_numpy()
    series = pd.Series(values, index=pd.Index(keys))
    series = series[(series != "") & (series.str.lower() != "nan")]
    return series[~series.index.duplicated()]
