"""The sample sheet: one row per slide, validated before any job runs.

Columns: ``sample_id`` (letters, digits, ``._-``; it becomes a file name), ``slide``,
optional ``patient`` (defaults to ``sample_id``), ``mpp``, ``split`` (``train``/``test``),
and in spot mode ``counts`` and ``spots``. Relative paths are taken relative to the
directory the workflow runs in, or to ``root`` (the config's ``data_root``) when given.
"""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from slide2expr.errors import InputError

SAMPLE_ID_PATTERN = re.compile(r"^[A-Za-z0-9._-]+$")
SPLITS = {"train", "test"}
#: Columns that hold file paths (resolved against ``root`` when relative).
FILE_COLUMNS = ("slide", "counts", "spots")


def check_sample_id(sample_id: str, *, source: str | Path | None) -> None:
    """Raise :class:`InputError` unless ``sample_id`` is safe as a file name.

    Rejects path separators, ``..``, names starting with a dot (hidden files, ``.``) and
    anything outside letters, digits and ``._-``.
    """
    if not sample_id or not SAMPLE_ID_PATTERN.match(sample_id) or sample_id.startswith(".") \
            or ".." in sample_id:
        raise InputError(source, f"sample_id {sample_id!r} is not allowed: it becomes a file name",
                         "use only letters, digits, '.', '_' and '-', not starting with '.' "
                         "and without '..'")


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
    if not path.is_file():
        raise InputError(path, "the sample sheet does not exist",
                         "create it or set 'samples' in the config to its path")
    sheet = pd.read_csv(path, sep="\t", dtype=str, comment="#", keep_default_na=False)
    sheet.columns = [c.strip() for c in sheet.columns]
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
    if "patient" not in sheet.columns:
        sheet["patient"] = sheet["sample_id"]
    sheet["patient"] = sheet["patient"].where(sheet["patient"] != "", sheet["sample_id"])
    if "mpp" in sheet.columns:
        mpp = pd.to_numeric(sheet["mpp"].replace("", None), errors="coerce")
        bad = sheet["mpp"].ne("") & (mpp.isna() | (mpp <= 0))
        if bad.any():
            raise InputError(path, f"mpp is not a positive number for {', '.join(sheet['sample_id'][bad])}",
                             "give micrometres per pixel (e.g. 0.5) or leave the cell empty")
        sheet["mpp"] = mpp
    if "split" in sheet.columns:
        bad = ~sheet["split"].isin(SPLITS | {""})
        if bad.any():
            raise InputError(path, f"split must be 'train' or 'test', not "
                             f"{sorted(set(sheet['split'][bad]))}", "fix the split column")
    if root is not None:
        for col in [c for c in FILE_COLUMNS if c in sheet.columns]:
            sheet[col] = [str(Path(root) / p) if p and not Path(p).is_absolute() else p
                          for p in sheet[col]]
    if check_files:
        file_cols = [c for c in FILE_COLUMNS if c in sheet.columns]
        absent = [f"{row.sample_id}: {getattr(row, c)}" for row in sheet.itertuples()
                  for c in file_cols if getattr(row, c) and not Path(getattr(row, c)).exists()]
        if absent:
            shown = "; ".join(absent[:5]) + (f" (and {len(absent) - 5} more)" if len(absent) > 5 else "")
            raise InputError(path, f"{len(absent)} file(s) not found: {shown}",
                             "fix the paths (relative paths are relative to the config's "
                             "data_root, else to the directory snakemake runs in)")
    return sheet.set_index("sample_id", drop=False)
