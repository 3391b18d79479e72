"""Spot expression: counts of one section, spots x genes, kept sparse.

Layouts (the sample sheet's ``counts`` column):

- **her2st / demo / generic TSV or CSV** (optionally gzipped): one row per spot, the spot ID
  in the first column (her2st: ``"{x}x{y}"``), genes as columns.
- **10x Space Ranger**: ``filtered_feature_bc_matrix.h5`` (Cell Ranger v3+ layout with
  ``matrix/features``, or the v2 layout with one group per genome), or the ``outs/`` folder
  holding it, read by :func:`scanpy.read_10x_h5`. Only ``Gene Expression`` features are
  kept; genes are named by symbol, their IDs kept as ``gene_ids``.
- **h5ad**: ``obs_names`` are spot IDs; ``layers['counts']`` if present, else ``X``;
  ``var['gene_ids']`` kept when present.

Spot positions come from :func:`slide2expr.inputs.spots.read_spot_positions`.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import sparse

from slide2expr.errors import InputError
from slide2expr.inputs.expression.gene_ids import read_gene_map, rename_genes
from slide2expr.inputs.expression.table import ExpressionTable, check_values, read_delimited
from slide2expr.inputs.spots import find_spaceranger_matrix
from slide2expr.inputs.textio import file_suffix
from slide2expr.keys import Key

log = logging.getLogger(__name__)


def read_spot_counts(
    counts_path: str | Path,
    *,
    values: str = "counts",
    gene_map: str | Path | None = None,
    patch_um: float | None = None,
) -> ExpressionTable:
    """Read the spot counts of one section.

    Parameters
    ----------
    counts_path
        A spots x genes TSV/CSV, a 10x ``.h5``, a Space Ranger ``outs/`` folder or an h5ad.
    values
        Declared value type (``counts`` for spatial data; ``log`` allows negatives).
    gene_map
        Optional mapping file (ID -> symbol) applied to the gene names.
    patch_um
        The patch edge (``tiling.spot_diameter_um``). For a Visium HD bin folder the bins'
        counts are summed into spots of this size, named as
        :func:`slide2expr.inputs.spots.read_spot_positions` names them; ``None``: bins.

    Returns
    -------
    ExpressionTable
        Spots x genes with a CSR float64 matrix, unique spot IDs and gene names.

    Raises
    ------
    InputError
        Unreadable file, duplicate spot IDs or gene names, non-numeric, missing, infinite or
        negative values.
    """
    path = Path(counts_path)
    if not path.exists():
        raise InputError(path, "counts file not found", "check the `counts` column of the sample sheet")
    hd_folder = path
    if path.is_dir():
        path = find_spaceranger_matrix(path)
    suffix = file_suffix(path)
    if suffix == ".h5":
        table = read_10x_h5(path)
    elif suffix == ".h5ad":
        table = _read_h5ad(path)
    else:
        frame, _ = read_delimited(path, what="spot")
        table = ExpressionTable(sparse.csr_matrix(frame.to_numpy()), frame.index, frame.columns,
                                str(path))
    check_values(table.matrix, source=path, values=values, ids=table.ids)
    table = _hd_blocks(table, hd_folder, patch_um)
    mapping = None
    if gene_map is not None and str(gene_map) != "":
        if not Path(gene_map).is_file():
            raise InputError(gene_map, "the gene map file does not exist (spot mode takes a "
                             "mapping file, not a column name)", "fix join.gene_map")
        mapping = read_gene_map(gene_map)
    return rename_genes(table, mapping=mapping)


def _hd_blocks(table: ExpressionTable, folder: Path, patch_um: float | None) -> ExpressionTable:
    """Visium HD bins summed into spots of ``patch_um`` (unchanged for other layouts)."""
    from slide2expr.inputs.spaceranger import bin_size_um, block_bins, block_edge, sum_into_blocks
    from slide2expr.inputs.spots import read_spaceranger_frame

    bin_um = bin_size_um(folder) if patch_um else None
    if bin_um is None or block_edge(bin_um, float(patch_um)) < 2:
        return table
    frame = read_spaceranger_frame(folder if folder.is_dir() else folder.parent)
    _, names = block_bins(frame, bin_um=bin_um, patch_um=float(patch_um), keep=table.ids)
    matrix, blocks = sum_into_blocks(sparse.csr_matrix(table.matrix), table.ids, names)
    return ExpressionTable(matrix, blocks, table.genes, table.source, table.gene_ids)


def read_10x_h5(path: str | Path) -> ExpressionTable:
    """Read a 10x ``filtered_feature_bc_matrix.h5`` (v3+ or v2 layout) as spots x genes.

    Read through :func:`scanpy.read_10x_h5` (``gex_only``: only ``Gene Expression``
    features). Genes are named by symbol and their Ensembl IDs kept as ``gene_ids``;
    symbols shared by several IDs are summed later by the caller's
    :func:`~slide2expr.inputs.expression.gene_ids.rename_genes` (their IDs joined by ``;``).
    """
    import warnings

    import scanpy as sc

    path = Path(path)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*names are not unique.*")
            adata = sc.read_10x_h5(path, gex_only=True)
    except (OSError, KeyError, ValueError, IndexError, TypeError) as exc:
        raise InputError(path, f"is not a readable 10x feature-barcode matrix ({exc})",
                         "give Space Ranger's filtered_feature_bc_matrix.h5") from exc
    barcodes = pd.Index(adata.obs_names.astype(str))
    dup = barcodes[barcodes.duplicated()].unique()
    if len(dup):
        raise InputError(path, f"{len(dup)} duplicate barcode(s) (e.g. {', '.join(dup[:3])})",
                         "make spot IDs unique")
    matrix = sparse.csr_matrix(adata.X, dtype=np.float64)
    matrix.sum_duplicates()
    gene_ids = adata.var[Key.GENE_IDS] if Key.GENE_IDS in adata.var else None
    return ExpressionTable(matrix, barcodes, pd.Index(adata.var_names.astype(str)), str(path),
                           None if gene_ids is None else pd.Index(gene_ids.astype(str)))


def _read_h5ad(path: Path) -> ExpressionTable:
    import anndata as ad

    try:
        adata = ad.read_h5ad(path)
    except (OSError, KeyError, ValueError) as exc:
        raise InputError(path, f"cannot read h5ad ({exc})", "") from exc
    matrix = adata.layers[Key.COUNTS] if "counts" in adata.layers else adata.X
    matrix = sparse.csr_matrix(matrix, dtype=np.float64)
    for kind, index in (("spot", adata.obs_names), ("gene", adata.var_names)):
        dup = index[index.duplicated()].unique()
        if len(dup):
            raise InputError(path, f"{len(dup)} duplicate {kind} ID(s) (e.g. {', '.join(dup[:3])})",
                             f"make {kind} IDs unique")
    gene_ids = adata.var[Key.GENE_IDS].astype(str) if Key.GENE_IDS in adata.var else None
    return ExpressionTable(matrix, adata.obs_names, adata.var_names, str(path),
                           None if gene_ids is None else pd.Index(gene_ids))
