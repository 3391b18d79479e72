"""Spatial context of each spot, computed per section by the join stage.

Three kinds of ``obsm`` blocks sit beside the spot embedding ``X_{encoder}`` (key names:
:meth:`slide2expr.keys.Key.context`):

- ``X_{encoder}_ctx{um}``: the embedding of a window ``um`` micrometres across centred on the
  spot (tiling ``ctx{um}``, :mod:`slide2expr.tile.context`), read from
  ``features/{encoder}/ctx{um}/{sample}.h5`` and aligned by spot ID;
- ``X_{encoder}_nbr{r}``: the mean spot embedding over the spots **of the same section**
  within ``r`` micrometres of the spot, the spot itself included. A spot with no other spot
  in reach therefore gets its own embedding (never NaN);
- ``X_{encoder}_slide``: the section's mean spot embedding, repeated on its spots.

Nothing is fitted and nothing crosses sections, so a held-out section's context comes from its
own images only, and no training section's context depends on it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import sparse
from scipy.spatial import cKDTree

from slide2expr.contracts.features import read_features
from slide2expr.errors import InputError
from slide2expr.keys import SLIDE_BLOCK, Key

log = logging.getLogger(__name__)


def neighbour_block(radius_um: float) -> str:
    """Block name of the neighbour mean within ``radius_um``, e.g. ``nbr300``."""
    return f"nbr{radius_um:g}".replace(".", "p")


def neighbour_mean(xy_um: np.ndarray, features: np.ndarray, sections: np.ndarray, *,
                   radius_um: float) -> np.ndarray:
    """Mean embedding of the same section's units within ``radius_um`` (self included).

    Parameters
    ----------
    xy_um
        ``(N, 2)`` unit centres in micrometres.
    features
        ``(N, D)`` embeddings.
    sections
        ``(N,)`` section of each unit; neighbours are only ever taken within a section.
    radius_um
        Disc radius in micrometres (inclusive).

    Returns
    -------
    numpy.ndarray
        ``(N, D)`` float32; a unit with no neighbour in reach gets its own embedding.
    """
    xy = np.asarray(xy_um, dtype=np.float64)
    f = np.asarray(features, dtype=np.float32)
    g = np.asarray(sections)
    if not radius_um > 0:
        raise InputError(None, f"neighbour radius {radius_um!r} um is not positive",
                         "use positive radii in join.neighbour_um, e.g. [300, 600]")
    out = np.empty_like(f)
    for section in pd.unique(g):
        idx = np.flatnonzero(g == section)
        tree = cKDTree(xy[idx])
        adj = tree.sparse_distance_matrix(tree, radius_um, output_type="coo_matrix")
        adj = sparse.csr_matrix((np.ones_like(adj.data), (adj.row, adj.col)),
                                shape=(len(idx), len(idx)))
        adj = adj.maximum(sparse.identity(len(idx), format="csr"))  # self always counts
        counts = np.asarray(adj.sum(axis=1)).ravel()
        out[idx] = (adj @ f[idx].astype(np.float64) / counts[:, None]).astype(np.float32)
    return out


def section_mean(features: np.ndarray, sections: np.ndarray) -> np.ndarray:
    """Each unit's section mean embedding ``(N, D)`` float32."""
    f = np.asarray(features, dtype=np.float32)
    g = np.asarray(sections)
    out = np.empty_like(f)
    for section in pd.unique(g):
        rows = g == section
        out[rows] = f[rows].astype(np.float64).mean(axis=0)
    return out


def read_context_windows(features_dir: Path, sample_id: str, spot_ids: Sequence[str],
                         context_um: Sequence[float], *, encoder: str,
                         embed_dim: int) -> tuple[dict[str, np.ndarray], dict[str, dict]]:
    """The ``ctx{um}`` embeddings of one section's spots, in the order of ``spot_ids``.

    ``features_dir`` is the spot features folder (``features/{encoder}/spots``); the context
    features sit beside it in ``features/{encoder}/ctx{um}``.

    Returns
    -------
    tuple of dict
        Block name -> ``(n, D)`` float32, and block name -> what to record (window size,
        windows padded past the slide edge).

    Raises
    ------
    InputError
        A missing file, another encoder, a spot without a window, or non-finite values.
    """
    from slide2expr.tile.context import context_tiling

    blocks, record = {}, {}
    for um in context_um:
        name = context_tiling(um)
        path = Path(features_dir).parent / name / f"{sample_id}.h5"
        fs = read_features(path)
        if fs.attrs.encoder not in (None, encoder):
            raise InputError(path, f"holds {fs.attrs.encoder!r} features, not {encoder!r}",
                             "re-run the extract stage for this tiling")
        if fs.spot_ids is None or fs.features.ndim != 2 or fs.features.shape[1] != embed_dim:
            raise InputError(path, f"is not a {embed_dim}-d context features file with spot IDs",
                             "re-run tile (context-tiles) and extract for this sample")
        order = pd.Index(fs.spot_ids).get_indexer(list(spot_ids))
        if (order < 0).any():
            missing = np.asarray(spot_ids)[order < 0]
            raise InputError(path, f"{len(missing)} spot(s) have no {name} window (e.g. "
                             f"{missing[0]})", "re-run context-tiles and extract for this sample")
        feats = np.asarray(fs.features[order], dtype=np.float32)
        if not np.isfinite(feats).all():
            raise InputError(path, "has NaN or infinite values", "re-run the extract stage")
        blocks[name] = feats
        record[name] = {"context_um": float(um), "n_padded": int(fs.attrs.n_padded or 0),
                        "padding": str(fs.attrs.padding if fs.attrs.padding is not None
                                       else "white")}
    return blocks, record


def add_context(obsm: dict[str, np.ndarray], *, encoder: str, sections: np.ndarray,
                xy_um: np.ndarray, neighbour_um: Sequence[float], slide_mean: bool) -> list[str]:
    """Add the neighbour-mean and slide blocks to ``obsm`` (in place); returns their names.

    Raises
    ------
    InputError
        When neighbour radii are asked for but some spots have no position in micrometres
        (their features record no ``slide_mpp``).
    """

    spot = obsm[Key.embedding(encoder)]
    if len(neighbour_um) and not np.isfinite(xy_um).all():
        raise InputError(None, "join.neighbour_um needs spot positions in micrometres, but some "
                               "features files record no slide_mpp",
                         "re-run the tile and extract stages (they record the slide's mpp), "
                         "or set join.neighbour_um to []")
    names = []
    for r in neighbour_um:
        name = neighbour_block(r)
        obsm[Key.context(encoder, name)] = neighbour_mean(xy_um, spot, sections, radius_um=r)
        names.append(name)
    if slide_mean:
        obsm[Key.context(encoder, SLIDE_BLOCK)] = section_mean(spot, sections)
        names.append(SLIDE_BLOCK)
    return names
