"""Gene selection inside a fold, on that fold's training units only."""

from __future__ import annotations

import logging

import numpy as np
import scipy.sparse as sp

from slide2expr.errors import InputError
from slide2expr.train.config import GeneSelection

log = logging.getLogger(__name__)


def column_stats(x: np.ndarray | sp.spmatrix) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-column mean, variance and fraction of non-zero entries (dense or sparse)."""
    if sp.issparse(x):
        x = sp.csr_matrix(x, dtype=np.float64)
        mean = np.asarray(x.mean(axis=0)).ravel()
        sq = np.asarray(x.multiply(x).mean(axis=0)).ravel()
        nonzero = np.asarray((x != 0).mean(axis=0)).ravel()
        return mean, np.maximum(sq - mean ** 2, 0.0), nonzero
    x = np.asarray(x, dtype=np.float64)
    return x.mean(axis=0), x.var(axis=0), (x != 0).mean(axis=0)


def select_training_genes(x_train: np.ndarray | sp.spmatrix, var_names: list[str] | np.ndarray, *,
                 settings: GeneSelection, counts_train: np.ndarray | sp.spmatrix | None = None,
                 source: str | None = None) -> np.ndarray:
    """Indices (into ``var_names``) of the genes a fold models, in dataset order.

    Parameters
    ----------
    x_train
        ``(n_train, n_genes)`` log1p CP10k of the training units only.
    var_names
        Gene symbols.
    settings
        Filter and ranking (:class:`~slide2expr.train.config.GeneSelection`).
    counts_train
        Raw counts of the same units, for the detection filter (``x_train`` otherwise).

    Raises
    ------
    InputError
        When no gene varies or passes the filter in the training units.
    """
    mean, var, _ = column_stats(x_train)
    _, _, detected = column_stats(counts_train if counts_train is not None else x_train)
    keep = (var > 0) & (detected >= settings.min_fraction) & (mean >= settings.min_mean)
    if settings.list:
        keep &= np.isin(np.asarray(var_names, dtype=str), read_gene_list(settings.list))
    if not (var > 0).any():
        raise InputError(source, "all target genes are constant across the training units",
                         "check the counts: a model cannot learn constant expression")
    if not keep.any():
        raise InputError(source, "no gene passes the expression filter in the training units "
                         f"(min_fraction {settings.min_fraction}, min_mean {settings.min_mean})",
                         "lower train.genes.min_fraction / min_mean")
    candidates = np.flatnonzero(keep)
    n_top = settings.n_top
    if settings.method == "all" or n_top is None or n_top >= len(candidates):
        chosen = candidates
    elif settings.method == "mean":
        order = np.argsort(-mean[candidates], kind="stable")
        chosen = candidates[order[:n_top]]
    else:
        chosen = candidates[_hvg_rank(x_train, candidates, n_top)]
    log.info("gene selection (%s): %d of %d genes", settings.method, len(chosen), len(var_names))
    return np.sort(chosen)


def read_gene_list(path: str) -> list[str]:
    """Gene symbols from a file, one a line (blank lines and ``#`` comments skipped)."""
    from pathlib import Path

    file = Path(path)
    if not file.is_file():
        raise InputError(file, "the gene list (train.genes.list) does not exist",
                         "give a file of gene symbols, one a line, or set it to null")
    genes = [line.split("#", 1)[0].strip() for line in file.read_text().splitlines()]
    genes = [g for g in genes if g]
    if not genes:
        raise InputError(file, "the gene list is empty", "give gene symbols, one a line")
    return genes


def _hvg_rank(x_train: np.ndarray | sp.spmatrix, candidates: np.ndarray, n_top: int) -> np.ndarray:
    """Positions in ``candidates`` of the ``n_top`` most variable genes (scanpy seurat)."""
    import anndata as ad
    import scanpy as sc

    sub = x_train[:, candidates]
    adata = ad.AnnData(sub.astype(np.float32))
    sc.pp.highly_variable_genes(adata, n_top_genes=n_top, flavor="seurat", inplace=True)
    dispersion = adata.var["dispersions_norm"].to_numpy(dtype=np.float64)
    dispersion = np.where(np.isnan(dispersion), -np.inf, dispersion)
    return np.argsort(-dispersion, kind="stable")[:n_top]
