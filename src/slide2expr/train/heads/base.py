"""The shared LightningModule that trains every head's network.

A head wraps one plain-PyTorch network (:mod:`slide2expr.predict.nets`: layers and the
standardisation buffers) and adds what only training needs: the optimiser, the shared
``step`` with its loss, and per-gene Pearson metrics (torchmetrics). ``head.safetensors``
holds the network's ``state_dict`` only, so prediction builds the network without importing
Lightning.

Subclasses pass their network to :class:`RegressionHead` and may override :meth:`step`.
"""

from __future__ import annotations

import numpy as np
import pytorch_lightning as pl
import torch
from torch import nn
from torchmetrics.regression import PearsonCorrCoef

from slide2expr.predict.nets.base import HeadNet, mlp_block

#: Metric logged on validation; EarlyStopping and ModelCheckpoint monitor it.
MONITOR = "val_pearson"

__all__ = ["MONITOR", "RegressionHead", "mlp_block"]


class RegressionHead(pl.LightningModule):
    """Base class: one network, one shared ``step``, per-gene Pearson.

    Parameters
    ----------
    network
        The network trained (its ``in_dim``, ``n_genes`` and ``kind`` are the head's).
    lr, weight_decay
        AdamW settings.
    """

    #: ``"spot"`` heads take one embedding per unit; ``"bulk"`` heads take a bag of tiles.
    kind: str = "spot"
    #: Weight of the ``1 - mean per-gene Pearson r`` term added to the MSE loss
    #: (``train.pearson_weight``; a training setting, not part of the saved network).
    pearson_weight: float = 0.0

    def __init__(self, network: HeadNet, *, lr: float = 1e-3, weight_decay: float = 1e-4) -> None:
        super().__init__()
        self.network = network
        self.in_dim = network.in_dim
        self.n_genes = network.n_genes
        self.lr = float(lr)
        self.weight_decay = float(weight_decay)
        self.metrics = nn.ModuleDict({
            stage: PearsonCorrCoef(num_outputs=network.n_genes)
            for stage in ("train_", "val_", "test_")
        })

    # -- the network -----------------------------------------------------------------------
    def set_standardisation(self, *, feature_mean: np.ndarray, feature_std: np.ndarray,
                            target_mean: np.ndarray, target_std: np.ndarray) -> None:
        """Store the training-fold statistics in the network (``std`` of 0 becomes 1)."""
        self.network.set_standardisation(feature_mean=feature_mean, feature_std=feature_std,
                                         target_mean=target_mean, target_std=target_std)

    def unstandardise(self, y: torch.Tensor) -> torch.Tensor:
        """Standardised predictions -> expression units of the dataset."""
        return self.network.unstandardise(y)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Predict standardised expression ``(B, G)`` for a batch."""
        return self.network(batch)

    def tile_outputs(self, features: torch.Tensor) -> torch.Tensor:
        """Per-tile standardised predictions ``(N, G)`` for raw features ``(N, D)``."""
        return self.network.tile_outputs(features)

    # -- training --------------------------------------------------------------------------
    def step(self, batch: dict[str, torch.Tensor], stage: str) -> torch.Tensor:
        """Shared by training, validation and test: loss, metric update and logging."""
        pred = self(batch)
        target = self.network.standardise_targets(batch["y"])
        loss = self.fitted_loss(pred, batch)
        self.metrics[f"{stage}_"].update(pred.detach().float(), target.float())
        self.log(f"{stage}_loss", loss, on_step=False, on_epoch=True,
                 batch_size=target.shape[0], prog_bar=stage == "val")
        return loss

    def fitted_loss(self, pred: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """MSE on standardised targets, plus the weighted ``1 - mean per-gene r`` term."""
        target = self.network.standardise_targets(batch["y"])
        loss = nn.functional.mse_loss(pred, target)
        if self.pearson_weight > 0 and target.shape[0] > 2:
            loss = loss + self.pearson_weight * (1.0 - batch_pearson(pred, target))
        return loss

    def training_loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The training loss of one batch without Lightning's logging and metrics (the plain
        loop, :mod:`slide2expr.train.loop`)."""
        return self.fitted_loss(self(batch), batch)

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


def batch_pearson(pred: torch.Tensor, target: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Mean over genes of the Pearson r between ``pred`` and ``target`` over the batch rows.

    A gene constant within the batch contributes r = 0 (``eps`` keeps the ratio finite), so
    the term is differentiable and never NaN.
    """
    p = pred - pred.mean(dim=0, keepdim=True)
    t = target - target.mean(dim=0, keepdim=True)
    r = (p * t).sum(0) / (p.pow(2).sum(0).sqrt() * t.pow(2).sum(0).sqrt() + eps)
    return r.mean()
