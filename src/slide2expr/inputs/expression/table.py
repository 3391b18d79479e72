"""An expression table (units x genes) and its reader for delimited text files.

Every reader in :mod:`slide2expr.inputs.expression` returns an :class:`ExpressionTable`: a matrix
of non-negative finite values with unique row IDs (samples or spots) and unique gene names.
The checks that make this true live here, so each layout reports bad cells the same way:
the file, what is wrong, how many cells, and an example.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import sparse

from slide2expr.errors import InputError
from slide2expr.inputs.textio import sniff_separator

log = logging.getLogger(__name__)

#: What the values of an expression file are; decides the transform into ``X``.
VALUE_TYPES = ("counts", "tpm", "fpkm", "log")


@dataclass
class ExpressionTable:
    """Expression of some units (rows) over genes (columns).

    Attributes
    ----------
    matrix
        ``(n_units, n_genes)``: a dense float64 array or a CSR matrix.
    ids
        Row IDs (sample IDs or spot IDs), unique strings.
    genes
        Gene names, unique strings.
    source
        The file it came from, named in errors.
    gene_ids
        The input's gene identifiers (e.g. Ensembl IDs) aligned with ``genes``, when the
        input named genes by ID and symbol (10x ``features/id``, a gene map); several IDs
        summed into one name are joined with ``;``. ``None`` when the input had only names.
    """

    matrix: np.ndarray | sparse.csr_matrix
    ids: pd.Index
    genes: pd.Index
    source: str
    gene_ids: pd.Index | None = None

    def __post_init__(self) -> None:
        self.ids = pd.Index([str(i) for i in self.ids])
        self.genes = pd.Index([str(g) for g in self.genes])
        if self.matrix.shape != (len(self.ids), len(self.genes)):
            raise ValueError(f"matrix shape {self.matrix.shape} does not match "
                             f"{len(self.ids)} ids x {len(self.genes)} genes")
        check_names(self.genes, what="gene name", source=self.source)
        check_names(self.ids, what="row ID", source=self.source)
        if self.gene_ids is not None:
            self.gene_ids = pd.Index([str(g) for g in self.gene_ids])
            if len(self.gene_ids) != len(self.genes):
                raise ValueError(f"{len(self.gene_ids)} gene IDs for {len(self.genes)} genes")

    @property
    def shape(self) -> tuple[int, int]:
        """``(n_units, n_genes)``."""
        return (len(self.ids), len(self.genes))

    def dense(self) -> np.ndarray:
        """The matrix as a dense float64 array."""
        m = self.matrix
        return np.asarray(m.toarray() if sparse.issparse(m) else m, dtype=np.float64)

    def select(self, ids: list[str] | pd.Index) -> ExpressionTable:
        """Rows ``ids``, in that order (all must exist)."""
        pos = self.ids.get_indexer(pd.Index(ids))
        if (pos < 0).any():
            raise KeyError(f"unknown ids: {list(pd.Index(ids)[pos < 0][:3])}")
        return ExpressionTable(self.matrix[pos], pd.Index(ids), self.genes, self.source,
                               self.gene_ids)


#: Characters no name may hold: ASCII controls (tab, newline...) and Unicode line breaks,
#: which would add lines or columns to every TSV the name is written into.
CONTROL_CHARACTERS = re.compile(r"[\x00-\x1f\x7f\x85\u2028\u2029]")


def check_names(names: pd.Index | list[str], *, what: str, source: str | Path | None) -> None:
    """Raise :class:`InputError` if a name holds a control character (tab, newline...)."""
    bad = [n for n in names if CONTROL_CHARACTERS.search(str(n))]
    if bad:
        raise InputError(source, f"{len(bad)} {what}(s) contain control characters such as "
                         f"tabs or line breaks (e.g. {str(bad[0])!r})",
                         f"remove them from the {what}s")


def read_delimited(
    path: str | Path,
    *,
    what: str,
    keep_text_columns: tuple[str, ...] = (),
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Read a TSV/CSV (optionally gzipped) whose first column holds row IDs.

    Parameters
    ----------
    path
        The file. Separator: ``,`` for ``.csv``, tab for ``.tsv``/``.txt``, sniffed otherwise.
    what
        What the rows are ("sample", "spot", "gene"), used in error messages.
    keep_text_columns
        Columns that are allowed to hold text (e.g. a gene-symbol column); they are returned
        separately and not checked.

    Returns
    -------
    values, text
        ``values``: the numeric cells (float64), indexed by the row IDs, with the header's
        column names exactly as written; ``text``: the ``keep_text_columns`` found.

    Raises
    ------
    InputError
        Duplicate row IDs or column names, empty IDs, non-numeric cells, missing/NaN,
        infinite or (see :func:`check_values`) negative values.
    """
    path = Path(path)
    sep = sniff_separator(path)
    header = _header(path, sep)
    if len(header) < 2:
        raise InputError(path, "has fewer than two columns",
                         f"give one row per {what} with its ID in the first column")
    try:
        frame = pd.read_csv(path, sep=sep, header=0, index_col=0, low_memory=False,
                            converters={0: str})
    except (OSError, ValueError, pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise InputError(path, f"cannot be read as a {'CSV' if sep == ',' else 'TSV'} table ({exc})",
                         "give a delimited text file with a header row") from exc
    _name_columns(frame, header, path)
    _check_row_ids(frame, path, what)
    text_cols = [c for c in frame.columns if c in keep_text_columns]
    text = frame[text_cols].astype(str)
    values = frame.drop(columns=text_cols)
    return _numeric(values, path), text


def _name_columns(frame: pd.DataFrame, header: list[str], path: Path) -> None:
    """The header's column names exactly as written, in place; duplicates refused. The
    header names the ID column, or (R's write.table) only the data columns."""
    names = header if frame.shape[1] == len(header) else header[1:]
    dup_cols = pd.Index(names)[pd.Index(names).duplicated()].unique()
    if len(dup_cols):
        raise InputError(path, f"{len(dup_cols)} duplicate column name(s) (e.g. "
                         f"{', '.join(map(str, dup_cols[:3]))})", "make column names unique")
    if len(names) == frame.shape[1]:
        frame.columns = names  # undo pandas' renaming of duplicates


def _check_row_ids(frame: pd.DataFrame, path: Path, what: str) -> None:
    """Row IDs stripped, in place; empty or duplicate ones refused."""
    frame.index = frame.index.map(lambda v: "" if pd.isna(v) else str(v).strip())
    empty = int((frame.index == "").sum())
    if empty:
        raise InputError(path, f"{empty} row(s) have an empty {what} ID", f"give every {what} an ID")
    dup = frame.index[frame.index.duplicated()].unique()
    if len(dup):
        raise InputError(path, f"{len(dup)} duplicate {what} ID(s) (e.g. {', '.join(dup[:3])})",
                         f"make {what} IDs unique")


def check_values(
    matrix: np.ndarray | sparse.spmatrix,
    *,
    source: str | Path,
    values: str,
    ids: pd.Index | None = None,
) -> None:
    """Raise :class:`InputError` on NaN, infinite or (unless ``values='log'``) negative values.

    Parameters
    ----------
    matrix
        Dense array or sparse matrix.
    source
        File named in the error.
    values
        The declared value type; only ``"log"`` values may be negative.
    ids
        Row IDs, to name an example row.
    """
    data = matrix.data if sparse.issparse(matrix) else np.asarray(matrix)
    nan = int(np.isnan(data).sum())
    if nan:
        raise InputError(source, f"{nan} missing or NaN value(s){_example(matrix, np.isnan, ids)}",
                         "fill them in (0 for not detected) or remove those rows")
    inf = int(np.isinf(data).sum())
    if inf:
        raise InputError(source, f"{inf} infinite value(s){_example(matrix, np.isinf, ids)}",
                         "fix those cells")
    if values != "log":
        neg = int((data < 0).sum())
        if neg:
            raise InputError(source, f"{neg} negative value(s){_example(matrix, lambda a: a < 0, ids)}",
                             f"give non-negative {values}, or set join.values: log if the values "
                             "are log-transformed")


def _numeric(frame: pd.DataFrame, path: Path) -> pd.DataFrame:
    """Coerce every column to float64, counting cells that are not numbers."""
    dtypes = frame.dtypes
    is_number = np.array([pd.api.types.is_numeric_dtype(t) and not pd.api.types.is_bool_dtype(t)
                          for t in dtypes])
    if is_number.all():
        array = frame.to_numpy(dtype=np.float64)
    else:
        array = np.empty(frame.shape, dtype=np.float64)
        array[:, is_number] = frame.loc[:, is_number].to_numpy(dtype=np.float64)
        bad_total, example = 0, None
        for j in np.flatnonzero(~is_number):
            series = frame.iloc[:, j]
            converted = pd.to_numeric(series.astype(str).str.strip(), errors="coerce")
            bad = converted.isna() & series.notna()
            if bad.any():
                bad_total += int(bad.sum())
                if example is None:
                    i = int(np.flatnonzero(bad.to_numpy())[0])
                    example = (f"row {frame.index[i]!r}, column {frame.columns[j]!r}: "
                               f"{series.iloc[i]!r}")
            array[:, j] = converted.to_numpy(dtype=np.float64, na_value=np.nan)
        if bad_total:
            raise InputError(path, f"{bad_total} non-numeric cell(s) (e.g. {example})",
                             "expression cells must be numbers")
    return pd.DataFrame(array, index=frame.index, columns=frame.columns, copy=False)


def _example(matrix: np.ndarray | sparse.spmatrix, test, ids: pd.Index | None) -> str:
    if sparse.issparse(matrix):
        coo = matrix.tocoo()
        hit = np.flatnonzero(test(coo.data))
        row = int(coo.row[hit[0]]) if len(hit) else None
    else:
        rows = np.flatnonzero(test(np.asarray(matrix)).any(axis=1))
        row = int(rows[0]) if len(rows) else None
    if row is None or ids is None:
        return ""
    return f" (e.g. in row {ids[row]!r})"


def _header(path: Path, sep: str) -> list[str]:
    """The header's names as pandas parses them (quotes resolved), without its renaming of
    duplicates (``A``, ``A.1``), surrounding spaces stripped."""
    try:
        first = pd.read_csv(path, sep=sep, header=None, nrows=1, dtype=str,
                            keep_default_na=False)
    except pd.errors.EmptyDataError as exc:
        raise InputError(path, "is empty", "give a table with a header row") from exc
    except (OSError, ValueError, pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise InputError(path, f"cannot be read ({exc})", "") from exc
    return [c.strip() for c in first.iloc[0].tolist()]
