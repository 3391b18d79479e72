"""``abmil``: gated-attention multiple-instance regression (Ilse et al., ICML 2018).

The network is :class:`~slide2expr.predict.nets.abmil.ABMILNet`; this module only trains it.
"""

from __future__ import annotations

import torch

from slide2expr.predict.nets.abmil import ABMILNet
from slide2expr.train.heads.base import RegressionHead


class ABMILHead(RegressionHead):
    """Trains an :class:`~slide2expr.predict.nets.abmil.ABMILNet`.

    Parameters
    ----------
    in_dim, n_genes, hidden, attention_dim, dropout
        See :class:`~slide2expr.predict.nets.abmil.ABMILNet`.
    lr, weight_decay
        See :class:`~slide2expr.train.heads.base.RegressionHead`.
    """

    kind = ABMILNet.kind

    def __init__(self, *, in_dim: int, n_genes: int, hidden: int = 256, attention_dim: int = 128,
                 dropout: float = 0.25, lr: float = 1e-3, weight_decay: float = 1e-4) -> None:
        super().__init__(ABMILNet(in_dim=in_dim, n_genes=n_genes, hidden=hidden,
                                  attention_dim=attention_dim, dropout=dropout),
                         lr=lr, weight_decay=weight_decay)
        self.save_hyperparameters()

    def attention(self, features: torch.Tensor) -> torch.Tensor:
        """Attention weights ``(N,)`` (summing to 1) of one slide's raw features ``(N, D)``."""
        return self.network.attention(features)
