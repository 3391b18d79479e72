"""``he2rna``: the HE2RNA bulk head (Schmauch et al., Nat. Commun. 2020).

The network (per-tile MLP + top-k mean) is :class:`~slide2expr.predict.nets.he2rna.HE2RNANet`;
this module only trains it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from slide2expr.predict.nets.he2rna import DEFAULT_KS, HE2RNANet, topk_mean
from slide2expr.train.heads.base import RegressionHead

__all__ = ["DEFAULT_KS", "HE2RNAHead", "topk_mean"]


class HE2RNAHead(RegressionHead):
    """Trains an :class:`~slide2expr.predict.nets.he2rna.HE2RNANet`.

    Parameters
    ----------
    in_dim, n_genes, hidden, dropout, ks
        See :class:`~slide2expr.predict.nets.he2rna.HE2RNANet`.
    lr, weight_decay
        See :class:`~slide2expr.train.heads.base.RegressionHead`.
    """

    kind = HE2RNANet.kind

    def __init__(self, *, in_dim: int, n_genes: int, hidden: int = 256, dropout: float = 0.25,
                 ks: Sequence[int] = DEFAULT_KS, lr: float = 1e-3,
                 weight_decay: float = 1e-4) -> None:
        super().__init__(HE2RNANet(in_dim=in_dim, n_genes=n_genes, hidden=hidden,
                                   dropout=dropout, ks=ks), lr=lr, weight_decay=weight_decay)
        self.ks = self.network.ks
        self.save_hyperparameters()

    def tile_scores(self, x: torch.Tensor) -> torch.Tensor:
        """Standardised per-tile scores ``(..., N, G)`` for raw features ``(..., N, D)``."""
        return self.network.tile_scores(x)
