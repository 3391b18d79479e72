"""The shared LightningModule of every regression head.

A head maps features to *standardised* expression (per-gene z-scores fitted on the training
fold). The feature and target standardisation statistics are buffers of the module, so a
saved head is self-contained: it takes raw encoder features and, through
:meth:`RegressionHead.unstandardise`, returns expression in the dataset's units
(log1p CP10k).

Subclasses implement :meth:`forward` (batch -> standardised predictions) and
:meth:`tile_outputs` (one slide's tiles -> per-tile standardised predictions).
"""

from __future__ import annotations

import numpy as np
import pytorch_lightning as pl
import torch
from torch import nn
from torchmetrics.regression import PearsonCorrCoef

#: Metric logged on validation; EarlyStopping and ModelCheckpoint monitor it.
MONITOR = "val_pearson"


class RegressionHead(pl.LightningModule):
    """Base class: standardisation buffers, one shared ``step``, per-gene Pearson.

    Parameters
    ----------
    in_dim
        Feature dimension ``D``.
    n_genes
        Number of output genes ``G``.
    lr, weight_decay
        AdamW settings.
    """

    #: ``"spot"`` heads take one embedding per unit; ``"bulk"`` heads take a bag of tiles.
    kind: str = "spot"

    def __init__(self, *, in_dim: int, n_genes: int, lr: float = 1e-3,
                 weight_decay: float = 1e-4) -> None:
        super().__init__()
        self.in_dim = int(in_dim)
        self.n_genes = int(n_genes)
        self.lr = float(lr)
        self.weight_decay = float(weight_decay)
        self.register_buffer("feature_mean", torch.zeros(in_dim))
        self.register_buffer("feature_std", torch.ones(in_dim))
        self.register_buffer("target_mean", torch.zeros(n_genes))
        self.register_buffer("target_std", torch.ones(n_genes))
        self.metrics = nn.ModuleDict({
            stage: PearsonCorrCoef(num_outputs=n_genes) for stage in ("train_", "val_", "test_")
        })

    # -- standardisation -------------------------------------------------------------------
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

    def unstandardise(self, y: torch.Tensor) -> torch.Tensor:
        """Standardised predictions -> expression units of the dataset."""
        return y * self.target_std + self.target_mean

    # -- model -----------------------------------------------------------------------------
    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:  # pragma: no cover
        """Predict standardised expression ``(B, G)`` for a batch."""
        raise NotImplementedError

    def tile_outputs(self, features: torch.Tensor) -> torch.Tensor:  # pragma: no cover
        """Per-tile standardised predictions ``(N, G)`` for raw features ``(N, D)``."""
        raise NotImplementedError

    # -- training --------------------------------------------------------------------------
    def step(self, batch: dict[str, torch.Tensor], stage: str) -> torch.Tensor:
        """Shared by training, validation and test: loss, metric update and logging."""
        pred = self(batch)
        target = (batch["y"] - self.target_mean) / self.target_std
        loss = nn.functional.mse_loss(pred, target)
        self.metrics[f"{stage}_"].update(pred.detach().float(), target.float())
        self.log(f"{stage}_loss", loss, on_step=False, on_epoch=True,
                 batch_size=target.shape[0], prog_bar=stage == "val")
        return loss

    def _log_pearson(self, stage: str) -> None:
        metric = self.metrics[f"{stage}_"]
        if not metric.update_called:
            return
        r = torch.nan_to_num(metric.compute(), nan=0.0)
        self.log(f"{stage}_pearson", r.mean(), prog_bar=stage == "val")
        metric.reset()

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self.step(batch, "train")

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self.step(batch, "val")

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self.step(batch, "test")

    def on_train_epoch_end(self) -> None:
        self._log_pearson("train")

    def on_validation_epoch_end(self) -> None:
        self._log_pearson("val")

    def on_test_epoch_end(self) -> None:
        self._log_pearson("test")

    def predict_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        """Predictions in expression units."""
        return self.unstandardise(self(batch))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        decay, no_decay = [], []
        for name, param in self.named_parameters():
            (no_decay if param.ndim <= 1 or name.endswith(".bias") else decay).append(param)
        return torch.optim.AdamW(
            [{"params": decay, "weight_decay": self.weight_decay},
             {"params": no_decay, "weight_decay": 0.0}], lr=self.lr)


def mlp_block(in_dim: int, hidden: int, out_dim: int, dropout: float) -> nn.Sequential:
    """``Linear -> GELU -> Dropout -> Linear``, or a single ``Linear`` when ``hidden == 0``."""
    if hidden <= 0:
        return nn.Sequential(nn.Dropout(dropout), nn.Linear(in_dim, out_dim))
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.GELU(), nn.Dropout(dropout),
                         nn.Linear(hidden, out_dim))
