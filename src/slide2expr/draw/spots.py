"""Measured and predicted expression at a slide's spots, read from the train stage's
predictions to be drawn (the heatmap's comparison figure, the viewer's spot layer)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from slide2expr.contracts.features import spot_diameter_level0
from slide2expr.contracts.predictions import read_predictions
from slide2expr.keys import Key

log = logging.getLogger(__name__)


@dataclass
class SpotValues:
    """Measured and predicted expression of one slide's spots.

    Attributes
    ----------
    centres
        ``(S, 2)`` level-0 spot centres.
    measured, predicted
        ``(S, G)`` log1p CP10k; predicted may be NaN where a spot's fold did not model a gene.
    genes
        Column names.
    ids
        Spot IDs (the predictions' ``obs_names``), when read from a file.
    """

    centres: np.ndarray
    measured: np.ndarray
    predicted: np.ndarray
    genes: list[str]
    spot_ids: list[str] | None = None
    diameter0: float | None = None

    def subset(self, genes: Sequence[str]) -> SpotValues | None:
        """The columns of ``genes`` that are here, in that order (None if none is)."""
        cols = [self.genes.index(g) for g in genes if g in self.genes]
        if not cols:
            return None
        return SpotValues(centres=self.centres, measured=self.measured[:, cols],
                          predicted=self.predicted[:, cols], genes=[self.genes[c] for c in cols],
                          spot_ids=self.spot_ids, diameter0=self.diameter0)


def read_spot_values(path: str | Path, sample_id: str, genes: Sequence[str]) -> SpotValues | None:
    """The spots of ``sample_id`` in a predictions file, or None when it has none.

    Raises
    ------
    InputError
        If the file is unreadable, lacks ``layers['predicted']``, ``obsm['spatial']`` or
        ``obs['sample_id']``.
    """
    import scipy.sparse as sp

    adata = read_predictions(path, need=(Key.SPATIAL,))
    rows = np.flatnonzero(adata.obs[Key.SAMPLE_ID].astype(str).to_numpy() == sample_id)
    var = {g: i for i, g in enumerate(map(str, adata.var_names))}
    keep = [g for g in genes if g in var]
    if rows.size == 0 or not keep:
        return None
    cols = np.array([var[g] for g in keep])

    def take(matrix: Any) -> np.ndarray:
        block = matrix[rows][:, cols]
        return np.asarray(block.toarray() if sp.issparse(block) else block, dtype=np.float32)

    measured = take(adata.X)
    predicted = take(adata.layers[Key.PREDICTED])
    centres = np.asarray(adata.obsm[Key.SPATIAL], dtype=np.float64)[rows]
    ids = adata.obs[Key.SPOT_ID] if Key.SPOT_ID in adata.obs else adata.obs_names
    return SpotValues(centres=centres, measured=measured, predicted=predicted, genes=keep,
                      spot_ids=[str(v) for v in np.asarray(ids)[rows]],
                      diameter0=_spot_diameter(adata, sample_id))


def _spot_diameter(adata: Any, sample_id: str) -> float | None:
    """Spot diameter in level-0 px: ``uns['spatial']``'s scale factors, else provenance."""

    lib = dict(adata.uns.get(Key.SPATIAL_UNS, {})).get(sample_id, {})
    value = dict(lib.get("scalefactors", {})).get("spot_diameter_fullres")
    if value:
        return float(value)
    samples = dict(dict(adata.uns.get(Key.PROVENANCE, {})).get("samples", {}))
    return spot_diameter_level0(dict(samples.get(sample_id, {})))  # a section_record
