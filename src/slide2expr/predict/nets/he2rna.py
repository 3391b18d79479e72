"""``he2rna``: the HE2RNA bulk network (Schmauch et al., Nat. Commun. 2020).

A per-tile MLP (a 1x1 convolution over the bag) scores every tile for every gene; the slide's
prediction for a gene is the mean of its top-``k`` tile scores. During training ``k`` is drawn
for each batch from ``ks``; at evaluation the predictions for every ``k`` in ``ks`` are
averaged. The per-tile scores are the tile-level output used for heatmaps. Optional
"supertiles" (k-means clusters of tile coordinates, features averaged) are built by the data
module, not here.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from slide2expr.predict.nets.base import HeadNet, mlp_block

DEFAULT_KS = (1, 2, 5, 10, 20, 50, 100)


class HE2RNANet(HeadNet):
    """Per-tile MLP + top-k mean pooling.

    Parameters
    ----------
    in_dim, n_genes
        See :class:`~slide2expr.predict.nets.base.HeadNet`.
    hidden, dropout
        The per-tile MLP.
    ks
        Candidate ``k`` values of the top-k mean.
    """

    kind = "bulk"

    def __init__(self, *, in_dim: int, n_genes: int, hidden: int = 256, dropout: float = 0.25,
                 ks: Sequence[int] = DEFAULT_KS) -> None:
        super().__init__(in_dim=in_dim, n_genes=n_genes)
        self.ks = sorted({int(k) for k in ks})
        if not self.ks or self.ks[0] < 1:
            raise ValueError("ks must be positive integers")
        self.tile_net = mlp_block(in_dim, hidden, n_genes, dropout)

    def tile_scores(self, x: torch.Tensor) -> torch.Tensor:
        """Standardised per-tile scores ``(..., N, G)`` for raw features ``(..., N, D)``."""
        return self.tile_net(self.standardise_features(x))

    def tile_outputs(self, features: torch.Tensor) -> torch.Tensor:
        return self.tile_scores(features)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        x = batch["x"]
        mask = batch.get("mask")
        if mask is None:
            mask = torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
        scores = self.tile_scores(x)  # (B, N, G)
        if self.training:
            pick = int(torch.randint(len(self.ks), (1,)).item())
            ks = [self.ks[pick]]
        else:
            ks = self.ks
        return topk_mean(scores, mask, ks)


def topk_mean(scores: torch.Tensor, mask: torch.Tensor, ks: Sequence[int]) -> torch.Tensor:
    """Mean over ``ks`` of the per-gene mean of the top-``k`` valid tile scores.

    Parameters
    ----------
    scores
        ``(B, N, G)`` tile scores.
    mask
        ``(B, N)`` True for real tiles (bags are padded to a common ``N``).
    ks
        ``k`` values; each is capped at the bag's number of tiles.

    Returns
    -------
    torch.Tensor
        ``(B, G)``.
    """
    n_valid = mask.sum(dim=1).clamp(min=1)  # (B,)
    kmax = min(max(ks), scores.shape[1])
    masked = scores.masked_fill(~mask[:, :, None], float("-inf"))
    top = masked.topk(kmax, dim=1).values  # (B, kmax, G), descending
    top = torch.where(torch.isfinite(top), top, torch.zeros_like(top))
    csum = top.cumsum(dim=1)
    out = torch.zeros(scores.shape[0], scores.shape[2], dtype=scores.dtype, device=scores.device)
    for k in ks:
        k_eff = torch.clamp(n_valid, max=min(k, kmax))  # (B,)
        index = (k_eff - 1)[:, None, None].expand(-1, 1, scores.shape[2])
        out = out + csum.gather(1, index).squeeze(1) / k_eff[:, None].to(scores.dtype)
    return out / len(ks)
