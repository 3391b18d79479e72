"""``mlp``: the spot-mode head (ST-Net/HEST style): one embedding -> one profile.

The network is :class:`~slide2expr.predict.nets.mlp.MLPNet`; this module only trains it.
"""

from __future__ import annotations

from slide2expr.predict.nets.mlp import MLPNet
from slide2expr.train.heads.base import RegressionHead


class MLPHead(RegressionHead):
    """Trains an :class:`~slide2expr.predict.nets.mlp.MLPNet`.

    Parameters
    ----------
    in_dim, n_genes, hidden, dropout, input_dropout
        See :class:`~slide2expr.predict.nets.mlp.MLPNet`.
    lr, weight_decay
        See :class:`~slide2expr.train.heads.base.RegressionHead`.
    """

    kind = MLPNet.kind

    def __init__(self, *, in_dim: int, n_genes: int, hidden: int = 256, dropout: float = 0.25,
                 input_dropout: float = 0.0, lr: float = 1e-3,
                 weight_decay: float = 1e-4) -> None:
        super().__init__(MLPNet(in_dim=in_dim, n_genes=n_genes, hidden=hidden, dropout=dropout,
                                input_dropout=input_dropout), lr=lr, weight_decay=weight_decay)
        self.save_hyperparameters()
