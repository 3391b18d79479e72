"""``abmil``: gated-attention multiple-instance regression (Ilse et al., ICML 2018).

Tiles are embedded (``D -> hidden``), weighted by gated attention
``w^T (tanh(V h) * sigmoid(U h))`` (softmax over the bag) and pooled; a linear layer maps the
pooled embedding to genes. Because that layer is linear, the slide prediction equals the
attention-weighted mean of per-tile predictions ``W h_i + b``; those are the tile-level output
used for heatmaps (:meth:`ABMILNet.tile_outputs`), and :meth:`ABMILNet.attention` gives the
weights.
"""

from __future__ import annotations

import torch
from torch import nn

from slide2expr.predict.nets.base import HeadNet


class ABMILNet(HeadNet):
    """Gated attention pooling.

    Parameters
    ----------
    in_dim, n_genes
        See :class:`~slide2expr.predict.nets.base.HeadNet`.
    hidden
        Tile embedding width.
    attention_dim
        Width of the gated attention branch.
    dropout
        Dropout on tile embeddings.
    """

    kind = "bulk"

    def __init__(self, *, in_dim: int, n_genes: int, hidden: int = 256, attention_dim: int = 128,
                 dropout: float = 0.25) -> None:
        super().__init__(in_dim=in_dim, n_genes=n_genes)
        hidden = hidden if hidden > 0 else in_dim
        self.embed = nn.Sequential(nn.Linear(in_dim, hidden), nn.GELU(), nn.Dropout(dropout))
        self.att_v = nn.Linear(hidden, attention_dim)
        self.att_u = nn.Linear(hidden, attention_dim)
        self.att_w = nn.Linear(attention_dim, 1)
        self.out = nn.Linear(hidden, n_genes)

    def _embed(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.embed(self.standardise_features(x))
        logits = self.att_w(torch.tanh(self.att_v(h)) * torch.sigmoid(self.att_u(h))).squeeze(-1)
        return h, logits

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        x = batch["x"]
        mask = batch.get("mask")
        if mask is None:
            mask = torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
        h, logits = self._embed(x)
        weights = torch.softmax(logits.masked_fill(~mask, float("-inf")), dim=1)
        pooled = (weights[:, :, None] * h).sum(dim=1)
        return self.out(pooled)

    def attention(self, features: torch.Tensor) -> torch.Tensor:
        """Attention weights ``(N,)`` (summing to 1) of one slide's raw features ``(N, D)``."""
        _, logits = self._embed(features)
        return torch.softmax(logits, dim=-1)

    def tile_outputs(self, features: torch.Tensor) -> torch.Tensor:
        """Per-tile standardised predictions ``(N, G)``; their attention-weighted mean is the slide's."""
        h, _ = self._embed(features)
        return self.out(h)
