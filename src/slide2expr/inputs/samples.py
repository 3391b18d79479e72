"""The sample sheet: one row per slide, validated before any job runs.

Columns: ``sample_id`` (letters, digits, ``._-``; it becomes a file name), ``slide``,
optional ``patient`` (defaults to ``sample_id``), ``mpp``, ``split`` (``train``/``test``),
and in spot mode ``counts`` and ``spots``; ``roi`` and ``roi_units`` make a row a region of its
slide (:mod:`slide2expr.inputs.regions`; several rows may then share a slide). Relative paths are taken relative to the
directory the workflow runs in, or to ``root`` (the config's ``data_root``) when given.

Other columns are kept and ignored with a warning, except near-misses of a known column
(``Patient``, `` patient``, ``Sample ID``): those are refused, as ignoring them would change
the result silently (a misspelt ``patient`` puts sections of one patient in different folds).
No cell may hold a control character (a quoted tab or line break).
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pandas as pd

from slide2expr.errors import InputError
from slide2expr.inputs.mpp import MPP_FIX, PLAUSIBLE_MPP, is_plausible
from slide2expr.inputs.regions import check_sheet_regions, with_root

log = logging.getLogger(__name__)

SAMPLE_ID_PATTERN = re.compile(r"^[A-Za-z0-9._-]+$")
#: A sample_id becomes file names with prefixes and suffixes (``.{id}.partial-{host}-{pid}.h5``,
#: ``{id}.geojson``); file systems allow 255 bytes a name, so ids are kept well below that.
MAX_SAMPLE_ID_CHARS = 128
SPLITS = {"train", "test"}
#: Columns that hold file paths (resolved against ``root`` when relative).
FILE_COLUMNS = ("slide", "counts", "spots")
#: Every column the sheet may have.
KNOWN_COLUMNS = ("sample_id", "slide", "patient", "mpp", "split", "counts", "spots", "roi",
                 "roi_units", "section")
_CONTROL = re.compile(r"[\x00-\x1f\x7f\x85\u2028\u2029]")


def _folded(name: str) -> str:
    """A column name without case, spaces, ``_`` and ``-``: ``' Sample ID'`` -> ``sampleid``."""
    return re.sub(r"[\s_-]+", "", name).lower()


def check_columns(columns: list[str], *, source: str | Path) -> None:
    """Refuse near-misses of known columns; warn about (and ignore) other unknown ones."""
    known = {_folded(k): k for k in KNOWN_COLUMNS}
    unknown = [c for c in columns if c not in KNOWN_COLUMNS]
    near = [(c, known[_folded(c)]) for c in unknown if _folded(c) in known]
    if near:
        shown = ", ".join(f"{c!r} (for {k!r})" for c, k in near)
        raise InputError(source, f"column name(s) {shown} differ from the known column(s) "
                         "in case or spaces", "rename them exactly (lower case, no spaces); "
                         f"known columns: {', '.join(KNOWN_COLUMNS)}")
    if unknown:
        log.warning("%s: column(s) %s are not used (known: %s)", source,
                    ", ".join(repr(c) for c in unknown), ", ".join(KNOWN_COLUMNS))


def _check_cells(sheet: pd.DataFrame, source: Path) -> None:
    for column in sheet.columns:
        bad = sheet[column].astype(str).str.contains(_CONTROL)
        if bad.any():
            row = int(bad.to_numpy().nonzero()[0][0])
            raise InputError(source, f"column {column!r} holds control characters (a tab or "
                             f"line break) in {int(bad.sum())} row(s), e.g. row {row + 1}: "
                             f"{sheet[column].iloc[row]!r}", "remove them")


def check_sample_id(sample_id: str, *, source: str | Path | None) -> None:
    """Raise :class:`InputError` unless ``sample_id`` is safe as a file name.

    Rejects path separators, ``..``, names starting with a dot (hidden files, ``.``),
    anything outside letters, digits and ``._-``, and names longer than
    :data:`MAX_SAMPLE_ID_CHARS`.
    """
    if not sample_id or not SAMPLE_ID_PATTERN.match(sample_id) or sample_id.startswith(".") \
            or ".." in sample_id:
        raise InputError(source, f"sample_id {sample_id!r} is not allowed: it becomes a file name",
                         "use only letters, digits, '.', '_' and '-', not starting with '.' "
                         "and without '..'")
    if len(sample_id) > MAX_SAMPLE_ID_CHARS:
        raise InputError(source, f"sample_id {sample_id[:20]}... is {len(sample_id)} "
                         f"characters long: it becomes file names, which the file system "
                         f"limits to 255 bytes", f"use a sample_id of at most "
                         f"{MAX_SAMPLE_ID_CHARS} characters")


def read_sample_sheet(path: str | Path, *, mode: str = "spot", check_files: bool = True,
                      root: str | Path | None = None) -> pd.DataFrame:
    """Read and validate a sample sheet.

    Parameters
    ----------
    path
        TSV file.
    mode
        ``"spot"`` requires ``counts`` and ``spots`` columns; ``"bulk"`` does not.
    check_files
        Check that every referenced file exists.
    root
        Directory that relative ``slide``, ``counts`` and ``spots`` paths are taken relative
        to (the config's ``data_root``); ``None``: the working directory.

    Returns
    -------
    pandas.DataFrame
        Indexed by ``sample_id``, with ``patient`` filled in.

    Raises
    ------
    InputError
        Naming the sheet, the rows at fault and the fix.
    """
    path = Path(path)
    sheet = _read_table(path)
    check_columns([str(c) for c in sheet.columns], source=path)
    _check_cells(sheet, path)
    _check_rows(sheet, path, mode)
    if "patient" not in sheet.columns:
        sheet["patient"] = sheet["sample_id"]
    sheet["patient"] = sheet["patient"].where(sheet["patient"] != "", sheet["sample_id"])
    if "mpp" in sheet.columns:
        sheet["mpp"] = _mpp_column(sheet, path)
    if "split" in sheet.columns:
        bad = ~sheet["split"].isin(SPLITS | {""})
        if bad.any():
            raise InputError(path, f"split must be 'train' or 'test', not "
                             f"{sorted(set(sheet['split'][bad]))}", "fix the split column")
    if root is not None:
        _under_root(sheet, root)
    if check_files:
        _check_files(sheet, path)
    check_sheet_regions(sheet, source=path)
    return sheet.set_index("sample_id", drop=False)


def _read_table(path: Path) -> pd.DataFrame:
    """The sheet as strings (empty cells ``""``); a missing, empty or headerless file
    refused."""
    if not path.is_file():
        raise InputError(path, "the sample sheet does not exist",
                         "create it or set 'samples' in the config to its path")
    try:
        return pd.read_csv(path, sep="\t", dtype=str, comment="#", keep_default_na=False)
    except pd.errors.EmptyDataError:
        size = path.stat().st_size
        raise InputError(path, "is empty (0 bytes)" if size == 0 else
                         "has no header line (only comments or blank lines)",
                         "write a tab-separated header (sample_id, slide, ...) and one row per "
                         "slide (config/README.md)") from None


def _check_rows(sheet: pd.DataFrame, path: Path, mode: str) -> None:
    """The mode's required columns, at least one row, and unique, safe sample ids."""
    required = ["sample_id", "slide"] + (["counts", "spots"] if mode == "spot" else [])
    missing = [c for c in required if c not in sheet.columns]
    if missing:
        raise InputError(path, f"missing column(s) {', '.join(missing)} (has: "
                         f"{', '.join(sheet.columns)})",
                         f"a {mode}-mode sample sheet needs {', '.join(required)}")
    if sheet.empty:
        raise InputError(path, "has no samples", "add one row per slide")
    for sid in sheet["sample_id"]:
        check_sample_id(sid, source=path)
    dup = sheet["sample_id"][sheet["sample_id"].duplicated()].unique()
    if len(dup):
        raise InputError(path, f"duplicate sample_id(s): {', '.join(dup)}",
                         "give every slide its own sample_id (use 'patient' to group slides)")


def _mpp_column(sheet: pd.DataFrame, path: Path) -> pd.Series:
    """The ``mpp`` column as numbers (NaN where empty); a value that is not a positive
    number, or not a plausible mpp, refused."""
    mpp = pd.to_numeric(sheet["mpp"].replace("", None), errors="coerce")
    bad = sheet["mpp"].ne("") & (mpp.isna() | (mpp <= 0))
    if bad.any():
        raise InputError(path, f"mpp is not a positive number for {', '.join(sheet['sample_id'][bad])}",
                         "give micrometres per pixel (e.g. 0.5) or leave the cell empty")
    implausible = mpp.notna() & ~mpp.map(lambda v: pd.isna(v) or is_plausible(float(v)))
    if implausible.any():
        named = ", ".join(f"{sid} ({v:g})" for sid, v in
                          zip(sheet["sample_id"][implausible], mpp[implausible], strict=True))
        raise InputError(path, f"mpp outside the plausible range {PLAUSIBLE_MPP[0]:g}-"
                         f"{PLAUSIBLE_MPP[1]:g} um/px for {named}",
                         f"{MPP_FIX}, or leave the cell empty")
    return mpp


def _under_root(sheet: pd.DataFrame, root: str | Path) -> None:
    """Relative file paths (and a ``roi`` file) taken relative to ``root``, in place."""
    for col in [c for c in FILE_COLUMNS if c in sheet.columns]:
        sheet[col] = [str(Path(root) / p) if p and not Path(p).is_absolute() else p
                      for p in sheet[col]]
    if "roi" in sheet.columns:
        sheet["roi"] = [with_root(spec, root) for spec in sheet["roi"]]


def _check_files(sheet: pd.DataFrame, path: Path) -> None:
    """Every file the sheet names exists (the first five missing named)."""
    file_cols = [c for c in FILE_COLUMNS if c in sheet.columns]
    absent = [f"{row.sample_id}: {getattr(row, c)}" for row in sheet.itertuples()
              for c in file_cols if getattr(row, c) and not Path(getattr(row, c)).exists()]
    if absent:
        shown = "; ".join(absent[:5]) + (f" (and {len(absent) - 5} more)" if len(absent) > 5 else "")
        raise InputError(path, f"{len(absent)} file(s) not found: {shown}",
                         "fix the paths (relative paths are relative to the config's "
                         "data_root, else to the directory snakemake runs in)")
