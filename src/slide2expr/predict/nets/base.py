"""The shared plain-PyTorch network of every regression head (no Lightning).

A network maps features to *standardised* expression (per-gene z-scores fitted on the
training fold). The feature and target standardisation statistics are buffers of the network,
so a saved network is self-contained: it takes raw encoder features and, through
:meth:`HeadNet.unstandardise`, returns expression in the dataset's units (log1p CP10k).

The Lightning wrappers in :mod:`slide2expr.train.heads` train these networks; prediction
(:mod:`slide2expr.predict.model`, heatmaps) builds only the network, so it never imports
Lightning or torchmetrics. The network's ``state_dict`` is what ``head.safetensors`` holds.

Subclasses implement :meth:`forward` (batch -> standardised predictions) and
:meth:`tile_outputs` (one slide's tiles -> per-tile standardised predictions).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


class HeadNet(nn.Module):
    """Base class: the standardisation buffers.

    Parameters
    ----------
    in_dim
        Feature dimension ``D``.
    n_genes
        Number of output genes ``G``.
    """

    #: ``"spot"`` networks take one embedding per unit; ``"bulk"`` ones take a bag of tiles.
    kind: str = "spot"

    def __init__(self, *, in_dim: int, n_genes: int) -> None:
        super().__init__()
        self.in_dim = int(in_dim)
        self.n_genes = int(n_genes)
        self.register_buffer("feature_mean", torch.zeros(in_dim))
        self.register_buffer("feature_std", torch.ones(in_dim))
        self.register_buffer("target_mean", torch.zeros(n_genes))
        self.register_buffer("target_std", torch.ones(n_genes))

    def set_standardisation(self, *, feature_mean: np.ndarray, feature_std: np.ndarray,
                            target_mean: np.ndarray, target_std: np.ndarray) -> None:
        """Store the training-fold statistics (``std`` of 0 is replaced by 1)."""
        for name, value in (("feature_mean", feature_mean), ("feature_std", feature_std),
                            ("target_mean", target_mean), ("target_std", target_std)):
            tensor = torch.as_tensor(np.asarray(value, dtype=np.float32))
            if name.endswith("std"):
                tensor = torch.where(tensor > 0, tensor, torch.ones_like(tensor))
            getattr(self, name).copy_(tensor)

    def standardise_features(self, x: torch.Tensor) -> torch.Tensor:
        """Raw features -> z-scores with the training-fold statistics."""
        return (x - self.feature_mean) / self.feature_std

    def standardise_targets(self, y: torch.Tensor) -> torch.Tensor:
        """Expression in the dataset's units -> z-scores with the training-fold statistics."""
        return (y - self.target_mean) / self.target_std

    def unstandardise(self, y: torch.Tensor) -> torch.Tensor:
        """Standardised predictions -> expression units of the dataset."""
        return y * self.target_std + self.target_mean

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:  # pragma: no cover
        """Predict standardised expression ``(B, G)`` for a batch."""
        raise NotImplementedError

    def tile_outputs(self, features: torch.Tensor) -> torch.Tensor:  # pragma: no cover
        """Per-tile standardised predictions ``(N, G)`` for raw features ``(N, D)``."""
        raise NotImplementedError


def mlp_block(in_dim: int, hidden: int, out_dim: int, dropout: float) -> nn.Sequential:
    """``Linear -> GELU -> Dropout -> Linear``, or a single ``Linear`` when ``hidden == 0``."""
    if hidden <= 0:
        return nn.Sequential(nn.Dropout(dropout), nn.Linear(in_dim, out_dim))
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.GELU(), nn.Dropout(dropout),
                         nn.Linear(hidden, out_dim))
