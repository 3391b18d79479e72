"""``mlp``: the spot-mode network (ST-Net/HEST style): one embedding -> one profile.

Applied to any ``(N, D)`` feature matrix (for instance a slide's grid tiles) it gives per-tile
predictions, which is how a spot-trained model paints a dense heatmap.
"""

from __future__ import annotations

import torch

from slide2expr.predict.nets.base import HeadNet, mlp_block


class MLPNet(HeadNet):
    """Embedding -> hidden -> genes, with dropout.

    Parameters
    ----------
    in_dim, n_genes
        See :class:`~slide2expr.predict.nets.base.HeadNet`.
    hidden
        Hidden width; 0 gives a linear model.
    dropout
        Dropout before the output layer (and on the input of a linear model).
    input_dropout
        Dropout on the standardised input features.
    """

    kind = "spot"

    def __init__(self, *, in_dim: int, n_genes: int, hidden: int = 256, dropout: float = 0.25,
                 input_dropout: float = 0.0) -> None:
        super().__init__(in_dim=in_dim, n_genes=n_genes)
        self.net = torch.nn.Sequential(torch.nn.Dropout(input_dropout),
                                       *mlp_block(in_dim, hidden, n_genes, dropout))

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.net(self.standardise_features(batch["x"]))

    def tile_outputs(self, features: torch.Tensor) -> torch.Tensor:
        """Per-tile standardised predictions: the network applied to each row."""
        return self.net(self.standardise_features(features))
