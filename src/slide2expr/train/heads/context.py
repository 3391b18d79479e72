"""``context``: a spot-mode head that fuses the spot with its spatial context.

The network (TRIPLEX-style block projections and attention fusion) is
:class:`~slide2expr.predict.nets.context.ContextNet`. This module trains it, with TRIPLEX's
multi-branch loss: each block's own linear read-out is an auxiliary target (weight
``aux_weight``), so every branch learns on its own; prediction uses the fused token only.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from slide2expr.predict.nets.context import ContextNet
from slide2expr.train.heads.base import RegressionHead


class ContextHead(RegressionHead):
    """Trains a :class:`~slide2expr.predict.nets.context.ContextNet`.

    Parameters
    ----------
    in_dim, n_genes, blocks, hidden, dropout, input_dropout, heads, input_pca, output_rank
        See :class:`~slide2expr.predict.nets.context.ContextNet`.
    aux_weight
        Weight of the per-block auxiliary losses (0: fused output only).
    lr, weight_decay
        See :class:`~slide2expr.train.heads.base.RegressionHead`.
    """

    kind = ContextNet.kind

    def __init__(self, *, in_dim: int, n_genes: int, blocks: Sequence[int] | None = None,
                 hidden: int = 256, dropout: float = 0.25, input_dropout: float = 0.0,
                 aux_weight: float = 0.5, heads: int = 4, input_pca: int = 0,
                 output_rank: int = 0, lr: float = 1e-3, weight_decay: float = 1e-4) -> None:
        super().__init__(ContextNet(in_dim=in_dim, n_genes=n_genes, blocks=blocks,
                                    hidden=hidden, dropout=dropout,
                                    input_dropout=input_dropout, heads=heads,
                                    input_pca=input_pca, output_rank=output_rank),
                         lr=lr, weight_decay=weight_decay)
        self.save_hyperparameters()
        self.aux_weight = float(aux_weight)

    def fit_bases(self, x_train: np.ndarray, y_train: np.ndarray) -> None:
        """Fit the network's fixed input PCA and output basis on the training fold
        (:meth:`~slide2expr.predict.nets.context.ContextNet.fit_bases`)."""
        self.network.fit_bases(x_train, y_train)

    def step(self, batch: dict[str, torch.Tensor], stage: str) -> torch.Tensor:
        """The shared step, plus the per-block auxiliary losses while training."""
        loss = super().step(batch, stage)
        if stage != "train" or self.aux_weight <= 0:
            return loss
        net = self.network
        tokens = net.tokens(batch["x"])
        target = net.standardise_targets(batch["y"])
        aux = torch.stack([nn.functional.mse_loss(net.decode(out(tokens[:, b])), target)
                           for b, out in enumerate(net.block_out)]).mean()
        return loss + self.aux_weight * aux

    def training_loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The plain loop's loss: the fused output's loss plus the per-block auxiliary
        losses, all from one set of block tokens (one input dropout mask and one pass
        through the projections, where :meth:`step` runs them twice)."""
        net = self.network
        tokens = net.tokens(batch["x"])
        loss = self.fitted_loss(net.decode(net.fused_out(net.fuse(tokens))), batch)
        if self.aux_weight <= 0:
            return loss
        target = net.standardise_targets(batch["y"])
        aux = torch.stack([nn.functional.mse_loss(net.decode(out(tokens[:, b])), target)
                           for b, out in enumerate(net.block_out)]).mean()
        return loss + self.aux_weight * aux
