"""Read spot positions of spatial transcriptomics data into one table.

Every layout becomes a :class:`pandas.DataFrame` with columns ``spot_id`` (str), ``x``,
``y`` (float): the spot *centre* in level-0 pixels of the slide, origin top-left
(docs/architecture.md, "Conventions"). Layouts understood:

- **her2st / ST selection table** (TSV): columns ``x y ... pixel_x pixel_y [selected]``;
  ``x, y`` are array positions and the spot ID is ``f"{x}x{y}"`` (the counts' row names).
- **10x Space Ranger**: ``spatial/tissue_positions.parquet`` (Space Ranger 3, Visium HD
  bins such as ``binned_outputs/square_016um/``; needs pyarrow),
  ``spatial/tissue_positions.csv`` (with header, Space Ranger >= 2) or
  ``spatial/tissue_positions_list.csv`` (no header, Space Ranger 1); columns ``barcode,
  in_tissue, array_row, array_col, pxl_row_in_fullres, pxl_col_in_fullres``. The path may
  be the table, the ``spatial/`` folder or the ``outs/`` (or bin) folder.
- **generic / demo** (TSV or CSV): ``spot_id, pixel_x, pixel_y`` (``barcode`` or
  ``spot`` also name the ID column; ``x, y`` name the centre when there is no
  ``pixel_x``).
- **h5ad** with ``obsm['spatial']`` (x, y) and the spot IDs as ``obs_names``.

Spot IDs of a counts file (the spots that have expression) are read cheaply by
:func:`read_count_spot_ids`, without loading the counts.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from slide2expr.errors import InputError
from slide2expr.inputs.textio import file_suffix, open_text, sniff_separator
from slide2expr.keys import Key

log = logging.getLogger(__name__)

SPACERANGER_COLUMNS = (
    "barcode", "in_tissue", "array_row", "array_col", "pxl_row_in_fullres", "pxl_col_in_fullres",
)
_ID_COLUMNS = ("spot_id", "barcode", "spot", "barcodes", "id")


def read_spot_positions(
    spots_path: str | Path,
    *,
    counts_path: str | Path | None = None,
    patch_um: float | None = None,
) -> pd.DataFrame:
    """Read a spot table into ``[spot_id, x, y]`` (spot centres, level-0 px).

    Parameters
    ----------
    spots_path
        The spot table: a her2st selection TSV, a Space Ranger ``tissue_positions*.csv``
        (or its ``spatial/`` or ``outs/`` folder), a generic ``spot_id, pixel_x, pixel_y``
        TSV/CSV, or an h5ad with ``obsm['spatial']``.
    counts_path
        The spot counts (TSV/CSV with spot IDs as the first column, a 10x ``.h5``, a Space
        Ranger ``outs/`` folder or an h5ad). When given, only spots that have counts are
        kept, in the order of the spot table; spots with a position but no counts are
        dropped (logged). Without it, Space Ranger spots outside the tissue
        (``in_tissue == 0``) are dropped.
    patch_um
        The patch edge (``tiling.spot_diameter_um``). For a Visium HD bin folder
        (``binned_outputs/square_008um``) the bins are grouped into spots of this size
        (:func:`slide2expr.inputs.spaceranger.block_bins`); ``None``: each bin is a spot.

    Returns
    -------
    pandas.DataFrame
        Columns ``spot_id`` (str), ``x``, ``y`` (float64), with a default integer index.

    Raises
    ------
    InputError
        If the table cannot be read or understood, has duplicate spot IDs or non-finite
        positions, or if spots in ``counts_path`` have no position in the table.
    """
    path = Path(spots_path)
    if not path.exists():
        raise InputError(path, "spot table not found", "check the `spots` column of the sample sheet")
    bin_um = _hd_bin_um(path, patch_um)
    if bin_um is not None:
        table = _read_hd_blocks(path, bin_um=bin_um, patch_um=float(patch_um or 0),
                                counts_path=None if counts_path is None else Path(counts_path))
        counts_path = None  # the blocks are those with counts already
    elif path.is_dir() or path.name.startswith("tissue_positions") or path.suffix == ".parquet":
        table = _read_spaceranger_positions(path, keep_off_tissue=counts_path is not None)
    elif file_suffix(path) == ".h5ad":
        table = _read_h5ad_positions(path)
    else:
        table = _read_table_positions(path, keep_off_tissue=counts_path is not None)
    source = table.attrs.get("source", path)
    _check_positions(table, source)
    if counts_path is not None:
        table = _restrict_to_counts(table, source, Path(counts_path))
    table = table.reset_index(drop=True)
    table.attrs["source"] = str(source)
    return table


def _hd_bin_um(path: Path, patch_um: float | None) -> float | None:
    """The bin edge when ``path`` is a Visium HD bin folder and bins are to be grouped."""
    if not patch_um:
        return None
    from slide2expr.inputs.spaceranger import bin_size_um, block_edge

    bin_um = bin_size_um(path)
    if bin_um is None or block_edge(bin_um, patch_um) < 2:
        return None
    return bin_um


def read_count_spot_ids(counts_path: str | Path) -> pd.Index:
    """Return the spot IDs of a spot counts file without reading the counts.

    Parameters
    ----------
    counts_path
        A spots x genes TSV/CSV (optionally gzipped; IDs in the first column), a 10x
        ``filtered_feature_bc_matrix.h5``, a Space Ranger ``outs/`` folder, or an h5ad.

    Returns
    -------
    pandas.Index
        The spot IDs as strings, in file order.
    """
    path = Path(counts_path)
    if not path.exists():
        raise InputError(path, "counts file not found", "check the `counts` column of the sample sheet")
    try:
        if path.is_dir():
            path = find_spaceranger_matrix(path)
        suffix = file_suffix(path)
        if suffix == ".h5":
            import h5py

            with h5py.File(path, "r") as f:
                ids = f["matrix/barcodes"].asstr()[:]
        elif suffix == ".h5ad":
            import anndata as ad

            adata = ad.read_h5ad(path, backed="r")
            ids = np.asarray(adata.obs_names)
            adata.file.close()
        else:
            ids = pd.read_csv(path, sep=sniff_separator(path), usecols=[0], dtype=str).iloc[:, 0].to_numpy()
    except InputError:
        raise
    except (OSError, KeyError, ValueError, pd.errors.ParserError) as exc:
        raise InputError(path, f"cannot read spot IDs ({exc})",
                         "give a spots x genes TSV/CSV, a 10x .h5, an outs/ folder or an h5ad") from exc
    return pd.Index([str(i) for i in ids], name="spot_id")


def find_spaceranger_matrix(outs: Path) -> Path:
    """Return ``filtered_feature_bc_matrix.h5`` inside a Space Ranger ``outs/`` folder."""
    for candidate in (outs / "filtered_feature_bc_matrix.h5", outs.parent / "filtered_feature_bc_matrix.h5"):
        if candidate.is_file():
            return candidate
    hits = sorted(outs.glob("*filtered_feature_bc_matrix.h5"))
    if hits:
        return hits[0]
    raise InputError(outs, "no filtered_feature_bc_matrix.h5 in this Space Ranger folder",
                     "point `counts` at the outs/ folder or at the .h5 file")


def read_scalefactors(spots_path: str | Path) -> dict[str, float] | None:
    """Space Ranger's ``scalefactors_json.json`` beside the positions, or ``None``.

    Parameters
    ----------
    spots_path
        The ``outs/`` folder, its ``spatial/`` folder, or the positions CSV.

    Returns
    -------
    dict or None
        E.g. ``spot_diameter_fullres``, ``tissue_hires_scalef``, ``tissue_lowres_scalef``,
        ``fiducial_diameter_fullres``.
    """
    import json

    path = Path(spots_path)
    folder = path if path.is_dir() else path.parent
    for candidate in (folder / "scalefactors_json.json", folder / "spatial" / "scalefactors_json.json"):
        if candidate.is_file():
            try:
                data = json.loads(candidate.read_text())
            except (OSError, ValueError) as exc:
                raise InputError(candidate, f"is not valid JSON ({exc})", "") from exc
            return {k: float(v) for k, v in data.items() if isinstance(v, int | float)}
    return None


# -- layouts ----------------------------------------------------------------------------------

def read_spaceranger_frame(path: Path) -> pd.DataFrame:
    """Space Ranger's positions table as read, with its six standard columns (all spots).

    ``path`` is the table, its ``spatial/`` folder or the ``outs/`` (or bin) folder.
    """
    csv = _find_positions_csv(Path(path))
    if csv.suffix == ".parquet":
        frame = _read_positions_parquet(csv)
        has_header = True
    else:
        with open_text(csv) as fh:
            first = fh.readline().strip().split(",")
        has_header = "barcode" in [c.strip().lower() for c in first]
        try:
            frame = pd.read_csv(csv, header=0 if has_header else None, dtype={0: str})
        except (OSError, ValueError, pd.errors.ParserError) as exc:
            raise InputError(csv, f"cannot read Space Ranger positions ({exc})", "") from exc
    if not has_header:
        if frame.shape[1] != len(SPACERANGER_COLUMNS):
            raise InputError(csv, f"has {frame.shape[1]} columns, expected the 6 Space Ranger "
                             f"columns {', '.join(SPACERANGER_COLUMNS)}",
                             "give tissue_positions.csv from Space Ranger")
        frame.columns = list(SPACERANGER_COLUMNS)
    missing = [c for c in SPACERANGER_COLUMNS if c not in frame.columns]
    if missing:
        raise InputError(csv, f"lacks the Space Ranger column(s) {', '.join(missing)}",
                         "give tissue_positions.csv from Space Ranger")
    frame.attrs["source"] = str(csv)
    return frame


def _read_spaceranger_positions(path: Path, *, keep_off_tissue: bool) -> pd.DataFrame:
    frame = read_spaceranger_frame(path)
    source = frame.attrs["source"]
    if not keep_off_tissue:
        frame = frame[frame["in_tissue"].astype(int) == 1]
    table = pd.DataFrame({
        "spot_id": frame["barcode"].astype(str).to_numpy(),
        "x": pd.to_numeric(frame["pxl_col_in_fullres"], errors="coerce").to_numpy(float),
        "y": pd.to_numeric(frame["pxl_row_in_fullres"], errors="coerce").to_numpy(float),
    })
    table.attrs["source"] = source
    return table


def _read_hd_blocks(path: Path, *, bin_um: float, patch_um: float,
                    counts_path: Path | None) -> pd.DataFrame:
    """Visium HD bins of ``path`` grouped into spots of ``patch_um`` (spaceranger.block_bins)."""
    from slide2expr.inputs.spaceranger import block_bins

    frame = read_spaceranger_frame(path)
    keep = read_count_spot_ids(counts_path) if counts_path is not None else None
    table, _ = block_bins(frame, bin_um=bin_um, patch_um=patch_um, keep=keep)
    table.attrs["source"] = frame.attrs["source"]
    return table


def _read_positions_parquet(path: Path) -> pd.DataFrame:
    """Space Ranger 3 / Visium HD ``tissue_positions.parquet`` (same columns as the CSV)."""
    try:
        frame = pd.read_parquet(path)
    except ImportError as exc:
        raise InputError(path, "reading Parquet needs pyarrow, which is not installed",
                         "pip install pyarrow (a slide2expr dependency)") from exc
    except (OSError, ValueError) as exc:
        raise InputError(path, f"cannot read Space Ranger positions ({exc})",
                         "give tissue_positions.parquet from Space Ranger") from exc
    frame.columns = [str(c).strip().lower() for c in frame.columns]
    return frame


def _find_positions_csv(path: Path) -> Path:
    if path.is_file():
        return path
    for folder in (path, path / "spatial"):
        for name in ("tissue_positions.parquet", "tissue_positions.csv",
                     "tissue_positions_list.csv"):
            if (folder / name).is_file():
                return folder / name
    raise InputError(path, "no spatial/tissue_positions.parquet, tissue_positions.csv or "
                     "tissue_positions_list.csv here",
                     "point `spots` at the Space Ranger outs/ folder or the positions CSV")


def _read_h5ad_positions(path: Path) -> pd.DataFrame:
    import anndata as ad

    try:
        adata = ad.read_h5ad(path, backed="r")
    except (OSError, KeyError, ValueError) as exc:
        raise InputError(path, f"cannot read h5ad ({exc})", "") from exc
    try:
        if "spatial" not in adata.obsm:
            raise InputError(path, "has no obsm['spatial']",
                             "store the spot centres (level-0 px x, y) in obsm['spatial']")
        xy = np.asarray(adata.obsm[Key.SPATIAL], dtype=float)
        ids = np.asarray(adata.obs_names).astype(str)
    finally:
        adata.file.close()
    if xy.ndim != 2 or xy.shape[1] < 2:
        raise InputError(path, f"obsm['spatial'] has shape {xy.shape}, expected (n_spots, 2)", "")
    return pd.DataFrame({"spot_id": ids, "x": xy[:, 0], "y": xy[:, 1]})


def _read_table_positions(path: Path, *, keep_off_tissue: bool) -> pd.DataFrame:
    try:
        frame = pd.read_csv(path, sep=sniff_separator(path), dtype=str)
    except (OSError, ValueError, pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise InputError(path, f"cannot read spot table ({exc})", "") from exc
    columns = {c.strip().lower(): c for c in frame.columns}
    if "pxl_col_in_fullres" in columns:  # a Space Ranger table under another name
        return _read_spaceranger_positions(path, keep_off_tissue=keep_off_tissue)
    id_col = next((columns[c] for c in _ID_COLUMNS if c in columns), None)
    if "pixel_x" in columns and "pixel_y" in columns:
        px, py = columns["pixel_x"], columns["pixel_y"]
        if id_col is None:
            if "x" not in columns or "y" not in columns:
                raise InputError(path, "has pixel_x, pixel_y but no spot ID column and no array "
                                 "x, y to name spots", "add a spot_id column")
            # her2st / ST selection table: the ID is the array position "{x}x{y}"
            ids = (_int_text(frame[columns["x"]], path) + "x" + _int_text(frame[columns["y"]], path))
        else:
            ids = frame[id_col].astype(str)
    elif id_col is not None and "x" in columns and "y" in columns:
        px, py = columns["x"], columns["y"]
        ids = frame[id_col].astype(str)
    else:
        raise InputError(path, f"spot table layout not recognised (columns: {', '.join(map(str, frame.columns[:8]))})",
                         "give spot_id, pixel_x, pixel_y (level-0 px), a her2st selection table, "
                         "or Space Ranger tissue_positions.csv")
    x = pd.to_numeric(frame[px].str.strip(), errors="coerce")
    y = pd.to_numeric(frame[py].str.strip(), errors="coerce")
    bad = int((x.isna() & frame[px].notna()).sum() + (y.isna() & frame[py].notna()).sum())
    if bad:
        raise InputError(path, f"{bad} spot position cell(s) are not numbers", "fix those cells")
    return pd.DataFrame({"spot_id": ids.to_numpy(), "x": x.to_numpy(float), "y": y.to_numpy(float)})


# -- checks -----------------------------------------------------------------------------------

def _check_positions(table: pd.DataFrame, source: str | Path) -> None:
    if table.empty:
        raise InputError(source, "has no spots", "check the spot table")
    dup = table["spot_id"].duplicated()
    if dup.any():
        examples = ", ".join(table.loc[dup, "spot_id"].head(3))
        raise InputError(source, f"{int(dup.sum())} duplicate spot ID(s) (e.g. {examples})",
                         "make spot IDs unique")
    bad = ~np.isfinite(table[["x", "y"]].to_numpy(float)).all(axis=1)
    if bad.any():
        examples = ", ".join(table.loc[bad, "spot_id"].head(3))
        raise InputError(source, f"{int(bad.sum())} spot(s) have a missing or non-finite "
                         f"position (e.g. {examples})", "fill in or remove those rows")


def _restrict_to_counts(table: pd.DataFrame, source: str | Path, counts_path: Path) -> pd.DataFrame:
    return match_spots_to_counts(table, read_count_spot_ids(counts_path), spots_source=source,
                                 counts_source=counts_path)


def match_spots_to_counts(
    table: pd.DataFrame,
    count_ids: pd.Index,
    *,
    spots_source: str | Path,
    counts_source: str | Path,
) -> pd.DataFrame:
    """Keep the spots of ``table`` that have counts; every counted spot must have a position.

    Parameters
    ----------
    table
        ``[spot_id, x, y]`` from :func:`read_spot_positions`.
    count_ids
        Spot IDs of the counts file.
    spots_source, counts_source
        The two files, named in messages.

    Returns
    -------
    pandas.DataFrame
        The rows of ``table`` whose spot has counts, in the table's order.

    Raises
    ------
    InputError
        If spots with counts have no position.
    """
    count_ids = pd.Index(count_ids).astype(str)
    without_position = count_ids[~count_ids.isin(table["spot_id"])]
    if len(without_position):
        examples = ", ".join(without_position[:3])
        raise InputError(counts_source, f"{len(without_position)} spot(s) with counts have no "
                         f"position in {spots_source} (e.g. {examples})",
                         "give the spot table that belongs to these counts")
    keep = table["spot_id"].isin(set(count_ids))
    dropped = int((~keep).sum())
    if dropped:
        log.info("%s: dropped %d spot(s) with a position but no counts in %s",
                 spots_source, dropped, counts_source)
    return table[keep]


# -- helpers ----------------------------------------------------------------------------------

def _int_text(column: pd.Series, path: Path) -> pd.Series:
    numbers = pd.to_numeric(column.str.strip(), errors="coerce")
    if numbers.isna().any() or (numbers != numbers.round()).any():
        raise InputError(path, f"{int(numbers.isna().sum())} array position(s) in column "
                         f"{column.name!r} are not whole numbers", "fix the selection table")
    return numbers.astype(int).astype(str)
