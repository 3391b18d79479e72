"""``context``: a spot-mode head that fuses the spot with its spatial context.

In the spirit of TRIPLEX (Chung et al., CVPR 2024): each input block (the spot embedding,
context windows ``ctx{um}``, neighbour means ``nbr{r}``, the slide mean; ``train.inputs``)
gets its own projection to a shared width; the spot token then attends over all block tokens
(multi-head attention, residual) and the fused token predicts the profile. Each block also
has its own linear read-out, trained as an auxiliary target (weight ``aux_weight``), so
every branch learns on its own as in TRIPLEX's multi-branch loss; prediction uses the fused
token only.

The input is the concatenation of the blocks in ``train.inputs`` order (the same matrix the
ridge baseline sees); ``blocks`` gives each block's width.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from slide2expr.train.heads.base import RegressionHead


class ContextHead(RegressionHead):
    """Per-block projections, spot-query attention fusion, and a linear read-out.

    Parameters
    ----------
    in_dim, n_genes, lr, weight_decay
        See :class:`~slide2expr.train.heads.base.RegressionHead`; ``in_dim`` must equal
        ``sum(blocks)``.
    blocks
        Width of each input block, the spot embedding first.
    hidden
        Shared width of the block tokens.
    dropout
        Dropout after each projection and on the fused token.
    input_dropout
        Dropout on the standardised input features.
    aux_weight
        Weight of the per-block auxiliary losses (0: fused output only).
    heads
        Attention heads of the fusion (``hidden`` must be divisible by it).
    """

    kind = "spot"

    def __init__(self, *, in_dim: int, n_genes: int, blocks: Sequence[int] | None = None,
                 hidden: int = 256, dropout: float = 0.25, input_dropout: float = 0.0,
                 aux_weight: float = 0.5, heads: int = 4, lr: float = 1e-3,
                 weight_decay: float = 1e-4) -> None:
        super().__init__(in_dim=in_dim, n_genes=n_genes, lr=lr, weight_decay=weight_decay)
        blocks = [int(b) for b in (blocks or [in_dim])]
        if sum(blocks) != in_dim:
            raise ValueError(f"blocks {blocks} do not add up to in_dim {in_dim}")
        hidden = max(int(hidden), heads)
        hidden -= hidden % heads
        self.save_hyperparameters()
        self.blocks = blocks
        self.aux_weight = float(aux_weight)
        self.input_dropout = nn.Dropout(input_dropout)
        self.projections = nn.ModuleList(
            nn.Sequential(nn.Linear(b, hidden), nn.LayerNorm(hidden), nn.GELU(),
                          nn.Dropout(dropout)) for b in blocks)
        self.block_embedding = nn.Parameter(torch.zeros(len(blocks), hidden))
        self.attention = nn.MultiheadAttention(hidden, heads, dropout=dropout, batch_first=True)
        self.norm = nn.LayerNorm(hidden)
        self.fused_out = nn.Sequential(nn.Dropout(dropout), nn.Linear(hidden, n_genes))
        self.block_out = nn.ModuleList(nn.Linear(hidden, n_genes) for _ in blocks)

    def tokens(self, features: torch.Tensor) -> torch.Tensor:
        """Raw concatenated features ``(B, D)`` -> block tokens ``(B, n_blocks, hidden)``."""
        x = self.input_dropout(self.standardise_features(features))
        parts = torch.split(x, self.blocks, dim=-1)
        tokens = torch.stack([proj(p) for proj, p in zip(self.projections, parts, strict=True)],
                             dim=1)
        return tokens + self.block_embedding

    def fuse(self, tokens: torch.Tensor) -> torch.Tensor:
        """The spot token after attending over every block token."""
        spot = tokens[:, :1]
        attended, _ = self.attention(spot, tokens, tokens, need_weights=False)
        return self.norm(spot + attended)[:, 0]

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.fused_out(self.fuse(self.tokens(batch["x"])))

    def tile_outputs(self, features: torch.Tensor) -> torch.Tensor:
        """Per-unit standardised predictions for concatenated block features ``(N, D)``."""
        return self.forward({"x": features})

    def step(self, batch: dict[str, torch.Tensor], stage: str) -> torch.Tensor:
        """The shared step, plus the per-block auxiliary losses while training."""
        loss = super().step(batch, stage)
        if stage != "train" or self.aux_weight <= 0:
            return loss
        tokens = self.tokens(batch["x"])
        target = (batch["y"] - self.target_mean) / self.target_std
        aux = torch.stack([nn.functional.mse_loss(out(tokens[:, b]), target)
                           for b, out in enumerate(self.block_out)]).mean()
        return loss + self.aux_weight * aux
