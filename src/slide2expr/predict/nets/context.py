"""``context``: a spot-mode network that fuses the spot with its spatial context.

In the spirit of TRIPLEX (Chung et al., CVPR 2024): each input block (the spot embedding,
context windows ``ctx{um}``, neighbour means ``nbr{r}``, the slide mean; ``train.inputs``)
gets its own projection to a shared width; the spot token then attends over all block tokens
(multi-head attention, residual) and the fused token predicts the profile. Each block also
has its own linear read-out (:attr:`ContextNet.block_out`), trained as an auxiliary target by
:class:`~slide2expr.train.heads.context.ContextHead`; prediction uses the fused token only.

The input is the concatenation of the blocks in ``train.inputs`` order (the same matrix the
ridge baseline sees); ``blocks`` gives each block's width.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from slide2expr.predict.nets.base import HeadNet

#: :meth:`ContextNet.fit_bases` fits the axes on at most this many training rows (evenly
#: spaced): its cost, ``rows x 1280^2`` a block, was the largest part of a member's training
#: at 10x the her2st spots (docs/benchmarks.md, "Training cost at 10x and 100x the spots").
BASIS_ROWS = 8192


class ContextNet(HeadNet):
    """Per-block projections, spot-query attention fusion, and a linear read-out.

    Parameters
    ----------
    in_dim, n_genes
        See :class:`~slide2expr.predict.nets.base.HeadNet`; ``in_dim`` must equal
        ``sum(blocks)``.
    blocks
        Width of each input block, the spot embedding first.
    hidden
        Shared width of the block tokens.
    dropout
        Dropout after each projection and on the fused token.
    input_dropout
        Dropout on the standardised input features.
    heads
        Attention heads of the fusion (``hidden`` must be divisible by it).
    input_pca
        When > 0, each block is first reduced to its top ``input_pca`` principal components
        of the training fold (fixed, fitted by :meth:`fit_bases`): a strong regulariser with
        a few hundred spots and 1280-d blocks.
    output_rank
        When > 0, the network predicts ``output_rank`` coefficients of the training fold's
        top principal axes of the standardised targets (fixed basis, :meth:`fit_bases`).
    """

    kind = "spot"

    def __init__(self, *, in_dim: int, n_genes: int, blocks: Sequence[int] | None = None,
                 hidden: int = 256, dropout: float = 0.25, input_dropout: float = 0.0,
                 heads: int = 4, input_pca: int = 0, output_rank: int = 0) -> None:
        super().__init__(in_dim=in_dim, n_genes=n_genes)
        blocks = [int(b) for b in (blocks or [in_dim])]
        if sum(blocks) != in_dim:
            raise ValueError(f"blocks {blocks} do not add up to in_dim {in_dim}")
        hidden = max(int(hidden), heads)
        hidden -= hidden % heads
        self.blocks = blocks
        self.input_dropout = nn.Dropout(input_dropout)
        self.reduced = [min(int(input_pca), b) if input_pca > 0 else b for b in blocks]
        for i, (b, r) in enumerate(zip(blocks, self.reduced, strict=True)):
            # identity until fit_bases: an unfitted network is still a valid network
            self.register_buffer(f"pca_{i}", torch.eye(b)[:r].T.contiguous() if r < b
                                 else torch.zeros(0))
        self.rank = min(int(output_rank), n_genes) if output_rank > 0 else 0
        self.register_buffer("target_basis", torch.eye(n_genes)[: self.rank]
                             if self.rank else torch.zeros(0))
        out_dim = self.rank or n_genes
        self.projections = nn.ModuleList(
            nn.Sequential(nn.Linear(r, hidden), nn.LayerNorm(hidden), nn.GELU(),
                          nn.Dropout(dropout)) for r in self.reduced)
        self.block_embedding = nn.Parameter(torch.zeros(len(blocks), hidden))
        self.attention = nn.MultiheadAttention(hidden, heads, dropout=dropout, batch_first=True)
        self.norm = nn.LayerNorm(hidden)
        self.fused_out = nn.Sequential(nn.Dropout(dropout), nn.Linear(hidden, out_dim))
        self.block_out = nn.ModuleList(nn.Linear(hidden, out_dim) for _ in blocks)

    def fit_bases(self, x_train: np.ndarray, y_train: np.ndarray) -> None:
        """Fit the fixed input PCA (per block) and output basis on the training fold's raw
        features and targets, after :meth:`set_standardisation` (on :data:`BASIS_ROWS`
        evenly spaced rows of a larger fold)."""
        x = torch.as_tensor(x_train, dtype=torch.float32)
        y = torch.as_tensor(y_train, dtype=torch.float32)
        if len(x) > BASIS_ROWS:  # evenly spaced rows: the axes of a large fold at a fixed cost
            rows = torch.linspace(0, len(x) - 1, BASIS_ROWS).round().long()
            x, y = x[rows], y[rows]
        start = 0
        for i, (r, b) in enumerate(zip(self.reduced, self.blocks, strict=True)):
            if r < b:  # one block standardised at a time: no copy of the whole matrix
                cols = slice(start, start + b)
                part = (x[:, cols] - self.feature_mean[cols]) / self.feature_std[cols]
                getattr(self, f"pca_{i}").copy_(principal_axes(part, r).T)
            start += b
        if self.rank:
            y = (y - self.target_mean) / self.target_std
            self.target_basis.copy_(principal_axes(y, self.rank))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Output-basis coefficients -> standardised genes (identity without a basis)."""
        return z @ self.target_basis if self.rank else z

    def tokens(self, features: torch.Tensor) -> torch.Tensor:
        """Raw concatenated features ``(B, D)`` -> block tokens ``(B, n_blocks, hidden)``."""
        x = self.input_dropout(self.standardise_features(features))
        parts = [p @ getattr(self, f"pca_{i}") if r < b else p
                 for i, (p, r, b) in enumerate(zip(torch.split(x, self.blocks, dim=-1),
                                                   self.reduced, self.blocks, strict=True))]
        tokens = torch.stack([proj(p) for proj, p in zip(self.projections, parts, strict=True)],
                             dim=1)
        return tokens + self.block_embedding

    def fuse(self, tokens: torch.Tensor) -> torch.Tensor:
        """The spot token after attending over every block token."""
        spot = tokens[:, :1]
        attended, _ = self.attention(spot, tokens, tokens, need_weights=False)
        return self.norm(spot + attended)[:, 0]

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.decode(self.fused_out(self.fuse(self.tokens(batch["x"]))))

    def tile_outputs(self, features: torch.Tensor) -> torch.Tensor:
        """Per-unit standardised predictions for concatenated block features ``(N, D)``."""
        return self.forward({"x": features})


def principal_axes(x: torch.Tensor, r: int) -> torch.Tensor:
    """The top ``r`` principal axes ``(r, D)`` of the rows of ``x`` (centred here).

    One symmetric eigendecomposition in float64 of the smaller Gram matrix (``D x D``, or
    ``n x n`` with fewer rows than columns): the same axes as an SVD of the centred rows (up
    to sign), at a cost linear in the rows (an SVD of 9,000 x 1,280 rows took seconds a
    block). Signs are fixed so that each axis' largest-magnitude entry is positive.
    """
    xc = x.double()
    xc -= xc.mean(0)
    n, d = xc.shape
    if n < d:
        evals, u = torch.linalg.eigh(xc @ xc.T)
        order = torch.argsort(evals, descending=True)[:r]
        axes = (xc.T @ u[:, order]) / evals[order].clamp_min(1e-12).sqrt()
        axes = axes.T
    else:
        evals, v = torch.linalg.eigh(xc.T @ xc)
        axes = v[:, torch.argsort(evals, descending=True)[:r]].T
    signs = torch.sign(axes.gather(1, axes.abs().argmax(dim=1, keepdim=True)))
    return (axes * torch.where(signs == 0, 1.0, signs)).float()
