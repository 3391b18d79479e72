"""Apply a trained head to every tile of a slide: the tile map of predicted expression.

The file is owned by :mod:`slide2expr.contracts.tilemaps`; its names are re-exported here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import numpy as np

from slide2expr.contracts._h5 import FORMAT_ATTR
from slide2expr.contracts.features import FeatureSet
from slide2expr.contracts.tilemaps import (
    UNITS,
    TileMap,
    read_tile_map,
    subset_genes,
    tile_map_to_anndata,
    write_tile_map,
)
from slide2expr.errors import InputError

__all__ = ["UNITS", "TileMap", "TileModel", "predict_tile_map", "read_tile_map", "subset_genes",
           "tile_map_to_anndata", "write_tile_map"]


class TileModel(Protocol):
    """What the heatmap stage needs from a model (``slide2expr.train.heads.TrainedHead`` fits)."""

    genes: list[str]

    def predict_tiles(self, features: np.ndarray) -> np.ndarray:
        """``(N, D)`` features -> ``(N, G)`` expression, columns in :attr:`genes`."""


def _predict(model: TileModel, x: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """The model's predictions and, when it averages several models
    (``predict_tiles_spread``, e.g. :class:`slide2expr.train.trained.TrainedHead`), their
    spread; None otherwise."""
    if hasattr(model, "predict_tiles_spread"):
        values, spread = model.predict_tiles_spread(x)
        return values, None if spread is None else np.asarray(spread, dtype=np.float32)
    return model.predict_tiles(x), None


def predict_tile_map(features: FeatureSet, model: TileModel, *,
                     provenance: dict[str, Any] | None = None,
                     source: str | Path | None = None,
                     inputs: np.ndarray | None = None) -> TileMap:
    """Apply ``model`` to every tile of ``features``.

    Parameters
    ----------
    features
        One slide's features (any tiling; grid for dense maps).
    model
        A trained head (``load_trained_head``) or anything with ``genes`` and
        ``predict_tiles``.
    provenance
        Extra entries for ``attrs`` (model directory, folds, ...).
    source
        The features file, named in errors.
    inputs
        The model's ``(N, D')`` input matrix when it is not the features themselves (a
        context head: :func:`slide2expr.heatmap.context.grid_input_matrix`).

    Raises
    ------
    InputError
        If the features file has no tiles, lacks ``tile_px_level0``, or the model returns the
        wrong shape or non-finite values.
    """
    # the features file's own format stamp does not describe the map
    attrs = {k: v for k, v in features.attrs.items() if k != FORMAT_ATTR}
    if len(features) == 0:
        raise InputError(source, "has no tiles", "re-run the tile stage: no tissue was found")
    if "tile_px_level0" not in attrs:
        raise InputError(source, "has no tile_px_level0 attribute",
                         "use a features file written by `slide2expr extract`")
    values, spread = _predict(model, features.features if inputs is None else inputs)
    values = np.asarray(values, dtype=np.float32)
    genes = [str(g) for g in model.genes]
    if values.shape != (len(features), len(genes)):
        raise InputError(source, f"the model returned shape {values.shape}, expected "
                         f"({len(features)}, {len(genes)})", "check the model directory")
    if spread is not None and spread.shape != values.shape:
        raise InputError(source, f"the model returned a spread of shape {spread.shape}, "
                         f"expected {values.shape}", "check the model directory")
    bad = ~np.isfinite(values)
    if bad.any():
        raise InputError(source, f"{int(bad.any(axis=1).sum())} tiles got non-finite predictions",
                         "check the features (NaN rows) and the model")
    attrs.update(provenance or {})
    attrs["units"] = UNITS
    return TileMap(values=values, genes=genes,
                   coords=np.asarray(features.coords, dtype=np.int64).reshape(-1, 2),
                   tile_size0=float(attrs["tile_px_level0"]), attrs=attrs,
                   spot_ids=features.spot_ids, spread=spread)
