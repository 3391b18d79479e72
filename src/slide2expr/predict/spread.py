"""The calibrated spread's formula, shared by training (which fits it,
:mod:`slide2expr.train.spread`) and prediction (which applies a fold's fit to new tiles):
per gene ``sd = scale * (terms @ coef)`` over the terms of
:data:`slide2expr.contracts.models.SPREAD_TERMS`."""

from __future__ import annotations

import numpy as np


def member_sd(predictions: np.ndarray) -> np.ndarray:
    """Members' standard deviation (``ddof=1``) over axis 0; zeros with one member."""
    predictions = np.asarray(predictions, dtype=np.float64)
    if len(predictions) < 2:
        return np.zeros(predictions.shape[1:])
    return predictions.std(axis=0, ddof=1)


def spread_terms(level: np.ndarray, head: np.ndarray, ridge: np.ndarray | None,
                 sd: np.ndarray) -> np.ndarray:
    """The ``(n, G, 4)`` terms of :data:`~slide2expr.contracts.models.SPREAD_TERMS`: a
    constant, the prediction's level (clipped at 0), ``|head - ridge|`` (zero without
    ``ridge``) and the members' SD ``sd``."""
    level = np.asarray(level, dtype=np.float64)
    disagreement = (np.zeros_like(level) if ridge is None
                    else np.abs(np.asarray(head, dtype=np.float64) - ridge))
    return np.stack([np.ones_like(level), np.maximum(level, 0.0), disagreement,
                     np.asarray(sd, dtype=np.float64)], axis=-1)


def apply_spread(coef: np.ndarray, scale: np.ndarray, terms: np.ndarray) -> np.ndarray:
    """The calibrated SD ``(n, G)`` float64: ``scale * (terms @ coef)`` per gene, ``coef``
    ``(G, 4)`` and ``scale`` ``(G,)`` over :func:`spread_terms` ``terms``."""
    return scale * np.einsum("ngt,gt->ng", terms, coef)
