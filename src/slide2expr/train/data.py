"""The LightningDataModule of one fold: training, validation and held-out units."""

from __future__ import annotations

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from slide2expr.train.features import BagFeatures, SpotFeatures, collate_bags
from slide2expr.train.scaling import block_widths, floored_sd


class FoldDataModule(pl.LightningDataModule):
    """Serves one fold's units; standardisation statistics come from its training units only.

    Parameters
    ----------
    source
        :class:`~slide2expr.train.features.SpotFeatures` (``obsm`` rows) or
        :class:`~slide2expr.train.features.BagFeatures` (bags streamed from files).
    targets
        ``(n_units, G)`` expression of the fold's selected genes (log1p CP10k).
    train_idx, val_idx, test_idx
        Unit indices of the inner training, inner validation and held-out units.
    batch_size
        Units per batch (spots, or bags in bulk mode).
    max_tiles
        In bulk mode, tiles sampled per bag per training step (0: all).
    seed
        Seeds the shuffling of training batches.
    num_workers
        DataLoader workers.
    """

    def __init__(self, source: SpotFeatures | BagFeatures, targets: np.ndarray, *,
                 train_idx: np.ndarray, val_idx: np.ndarray, test_idx: np.ndarray,
                 batch_size: int, max_tiles: int = 0, seed: int = 0,
                 num_workers: int = 0) -> None:
        super().__init__()
        self.source = source
        self.targets = np.asarray(targets, dtype=np.float32)
        self.train_idx = np.asarray(train_idx)
        self.val_idx = np.asarray(val_idx)
        self.test_idx = np.asarray(test_idx)
        self.batch_size = int(batch_size)
        self.max_tiles = int(max_tiles)
        self.seed = int(seed)
        self.num_workers = int(num_workers)

    def standardisation(self) -> dict[str, np.ndarray]:
        """Feature and target mean/std fitted on the inner training units only; the feature
        SD of a near-constant feature is floored (:mod:`slide2expr.train.scaling`)."""
        feature_mean, feature_std = self.source.moments(self.train_idx)
        feature_std = floored_sd(feature_std, block_widths(self.source))
        y = self.targets[self.train_idx].astype(np.float64)
        return {"feature_mean": feature_mean, "feature_std": feature_std,
                "target_mean": y.mean(axis=0), "target_std": y.std(axis=0)}

    def refit_on(self, train_idx: np.ndarray) -> FoldDataModule:
        """A copy that trains on ``train_idx`` (the whole training fold), with no validation."""
        return FoldDataModule(self.source, self.targets, train_idx=train_idx,
                              val_idx=np.zeros(0, dtype=np.int64), test_idx=self.test_idx,
                              batch_size=self.batch_size, max_tiles=self.max_tiles,
                              seed=self.seed, num_workers=self.num_workers)

    def _loader(self, indices: np.ndarray, *, train: bool) -> DataLoader:
        dataset = self.source.dataset(indices, self.targets, train=train,
                                      max_tiles=self.max_tiles)
        generator = torch.Generator().manual_seed(self.seed)
        return DataLoader(
            dataset, batch_size=self.batch_size, shuffle=train, generator=generator,
            drop_last=train and len(indices) > self.batch_size and
            len(indices) % self.batch_size == 1,
            num_workers=self.num_workers, persistent_workers=False,
            collate_fn=collate_bags if self.source.kind == "bulk" else None,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_idx, train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_idx, train=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_idx, train=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader(self.test_idx, train=False)
