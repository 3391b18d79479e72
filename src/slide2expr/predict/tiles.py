"""Apply a trained head to every tile of a slide: the tile map of predicted expression.

:func:`predict_slide_map` is the whole step for one features file (the model the slide gets,
its input blocks, the prediction and its spread); :func:`predict_tile_map` applies a given
model. The tile map file is owned by :mod:`slide2expr.contracts.tilemaps`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from slide2expr.contracts.features import FeatureSet, read_features
from slide2expr.contracts.tilemaps import UNITS, TileMap, TileMapAttrs
from slide2expr.errors import InputError
from slide2expr.inputs.samples import check_sample_id
from slide2expr.predict.inputs import model_inputs
from slide2expr.predict.model import check_encoder, load_model_for_sample
from slide2expr.predict.plausible import check_range

log = logging.getLogger(__name__)


class TileModel(Protocol):
    """What the heatmap stage needs from a model (``slide2expr.train.heads.TrainedHead`` fits)."""

    genes: list[str]

    def predict_tiles(self, features: np.ndarray) -> np.ndarray:
        """``(N, D)`` features -> ``(N, G)`` expression, columns in :attr:`genes`."""


def _predict(model: TileModel, x: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """The model's predictions and, when it averages several models
    (``predict_tiles_spread``, e.g. :class:`slide2expr.predict.TrainedHead`), their
    spread; None otherwise."""
    if hasattr(model, "predict_tiles_spread"):
        values, spread = model.predict_tiles_spread(x)
        return values, None if spread is None else np.asarray(spread, dtype=np.float32)
    return model.predict_tiles(x), None


def range_attrs(values: np.ndarray, model: TileModel, *, what: str) -> dict[str, Any]:
    """The map's count of values outside their gene's plausible range (attributes
    ``implausible_values``, ``plausible_checked``, ``plausible_rule``), logged as a warning
    when any; empty for a model without recorded bounds."""
    record = check_range(values, getattr(model, "plausible", None), model.genes, what=what)
    if record is None:
        return {}
    return {"implausible_values": record["outside"], "plausible_checked": record["checked"],
            "plausible_rule": record["rule"]}


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
        context head: :func:`slide2expr.predict.inputs.model_inputs`).

    Raises
    ------
    InputError
        If the features file has no tiles, lacks ``tile_px_level0``, or the model returns the
        wrong shape or non-finite values.
    """
    # the features file's own format stamp does not describe the map
    attrs = features.attrs.without_format().to_record(TileMapAttrs)
    if len(features) == 0:
        raise InputError(source, "has no tiles", "re-run the tile stage: no tissue was found")
    if attrs.tile_px_level0 is None:
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
    attrs.units = UNITS
    attrs.update(range_attrs(values, model, what=str(source or attrs.sample_id or "")))
    return TileMap(values=values, genes=genes,
                   coords=np.asarray(features.coords, dtype=np.int64).reshape(-1, 2),
                   tile_size0=float(attrs.tile_px_level0), attrs=attrs,
                   spot_ids=features.spot_ids, spread=spread)


def predict_slide_map(features_path: str | Path, model_dir: str | Path, *,
                      sample_id: str | None = None, fold: int | None = None,
                      dataset: str | Path | None = None) -> TileMap:
    """The tile map of one slide predicted from its features file.

    The model is the one the slide gets (:func:`~slide2expr.predict.model.load_model_for_sample`:
    on a training slide the fold model that held it out, an out-of-fold map; on a new slide
    the average of the fold models); ``fold`` forces one fold. How the model was used is
    recorded in ``attrs.model_use``. A head trained with context inputs (``head.json``
    ``inputs``) gets the same blocks built on the tiles
    (:func:`~slide2expr.predict.inputs.model_inputs`): the ``grid_ctx{um}`` features beside
    ``features_path``, neighbour means of the tiles, and the slide vector, taken from
    ``dataset`` (``dataset.h5ad``) when the slide has spots there. With several models
    averaged (fold models, ensemble members) the map carries their spread (``TileMap.spread``).

    Raises
    ------
    InputError
        If the file names no sample, the model was trained on another encoder, the features
        have NaN rows, or a block cannot be built.
    """
    features_path = Path(features_path)
    features = read_features(features_path)
    sample = sample_id or str(features.attrs.sample_id or "")
    if not sample:
        raise InputError(features_path, "names no sample_id", "pass --sample-id")
    check_sample_id(sample, source=None)
    features.attrs.sample_id = sample
    head, use = load_model_for_sample(model_dir, sample, fold=fold)
    check_encoder(head, features.attrs.encoder, source=features_path)
    provenance: dict[str, Any] = {
        "model_dir": str(Path(model_dir)), "head": head.head, "kind": head.kind,
        "model_use": use, "features": str(features_path), "n_models": len(head.members),
    }
    inputs, record = model_inputs(head.meta, features, features_path=features_path,
                                  dataset=dataset, model_source=model_dir)
    provenance.update(record)
    log.info("%s: predicting %d genes on %d tiles with %s (%s)", sample, len(head.genes),
             len(features), provenance["head"], use)
    return predict_tile_map(features, head, provenance=provenance, source=features_path,
                            inputs=inputs)
