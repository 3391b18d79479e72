"""Regression heads (LightningModules that train the networks of :mod:`slide2expr.predict.nets`).

Registry: ``mlp`` and ``context`` (spot mode; ``context`` fuses the blocks of
``train.inputs``), ``he2rna`` and ``abmil`` (bulk mode, multiple-instance).
Every head predicts standardised expression and carries its standardisation statistics, so a
trained head takes raw encoder features and returns expression in the dataset's units.

For heatmaps and new slides use :func:`slide2expr.predict.load_trained_head`::

    head = load_trained_head("results/models/mlp")          # ensemble of the fold models
    head = load_trained_head("results/models/mlp", sample_id="demo1")  # the fold that held demo1 out
    head.genes                      # gene order of the columns
    head.predict_tiles(features)    # (N, D) -> (N, G), log1p CP10k
    head.predict_bag(features, coords)  # bulk heads: one slide -> (G,)
"""

from __future__ import annotations

from slide2expr.predict.nets import net_kwargs
from slide2expr.train.heads.abmil import ABMILHead
from slide2expr.train.heads.base import MONITOR, RegressionHead
from slide2expr.train.heads.context import ContextHead
from slide2expr.train.heads.he2rna import HE2RNAHead
from slide2expr.train.heads.mlp import MLPHead

#: Head name -> class.
HEADS: dict[str, type[RegressionHead]] = {
    "mlp": MLPHead,
    "context": ContextHead,
    "he2rna": HE2RNAHead,
    "abmil": ABMILHead,
}

__all__ = [
    "HEADS",
    "MONITOR",
    "ABMILHead",
    "ContextHead",
    "HE2RNAHead",
    "MLPHead",
    "RegressionHead",
    "build_head",
]


def build_head(name: str, **hparams: object) -> RegressionHead:
    """Instantiate head ``name`` with ``hparams`` (unknown keys are ignored).

    Raises
    ------
    KeyError
        If ``name`` is not in :data:`HEADS`.
    """
    cls = HEADS[name]
    return cls(**net_kwargs(cls, hparams))
