"""Where a unit's features come from: an ``obsm`` matrix (spot) or a feature file (bulk).

Bulk feature files (``features`` ``(N, D)``, ``coords`` ``(N, 2)``) are read one slide at a
time, never all at once: one streaming pass (:meth:`BagFeatures.scan`) collects per-slide
sums for standardisation and the mean-pooled features of the baselines; training then reads
each bag when its batch is drawn.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from slide2expr.errors import InputError
from slide2expr.predict.bags import pool_by_label, read_bag, supertile_labels

log = logging.getLogger(__name__)


def read_unit_bag(paths: Sequence[str | Path]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The tiles of one unit: its slides' feature files read and concatenated.

    A unit has one slide, or several when the join averaged a patient's slides
    (``join.patient_slides: average``): the patient's bag is then the union of their tiles.

    Returns
    -------
    tuple of numpy.ndarray
        ``features`` ``(N, D)`` float32, ``coords`` ``(N, 2)`` in each slide's own level-0
        pixels, and ``slide`` ``(N,)``: the index in ``paths`` of each tile's slide.
    """
    parts = [read_bag(p) for p in paths]
    dims = {f.shape[1] for f, _ in parts}
    if len(dims) > 1:
        raise InputError(paths[0], f"the slides of one unit have features of different sizes "
                         f"({sorted(dims)})", "extract every slide with the same encoder")
    features = np.concatenate([f for f, _ in parts]) if len(parts) > 1 else parts[0][0]
    coords = np.concatenate([c for _, c in parts]) if len(parts) > 1 else parts[0][1]
    slide = np.repeat(np.arange(len(parts)), [len(f) for f, _ in parts])
    return features, coords, slide


def unit_supertile_labels(coords: np.ndarray, slide: np.ndarray, n: int, *,
                          seed: int = 0) -> np.ndarray:
    """Supertile labels of a unit's tiles: ``n`` clusters within each slide, numbered on."""
    labels = np.empty(len(coords), dtype=np.int64)
    offset = 0
    for s in np.unique(slide):
        rows = slide == s
        own = supertile_labels(coords[rows], n, seed=seed)
        labels[rows] = own + offset
        offset += int(own.max()) + 1
    return labels


class SpotFeatures:
    """Spot mode: one embedding per unit, from ``obsm``."""

    kind = "spot"

    def __init__(self, matrix: np.ndarray,
                 blocks: list[tuple[str, int]] | None = None) -> None:
        self.matrix = np.ascontiguousarray(np.asarray(matrix, dtype=np.float32))
        self.dim = int(self.matrix.shape[1])
        #: ``(name, width)`` of each concatenated input block (``train.inputs``).
        self.blocks = blocks or [("spot", self.dim)]
        if sum(d for _, d in self.blocks) != self.dim:
            raise ValueError(f"blocks {self.blocks} do not add up to {self.dim} columns")

    def __len__(self) -> int:
        return int(self.matrix.shape[0])

    def moments(self, indices: np.ndarray,
                chunk: int = 8192) -> tuple[np.ndarray, np.ndarray]:
        """Feature mean and std over the units ``indices`` (float64, two passes over chunks
        of ``chunk`` rows: no float64 copy of the whole matrix)."""
        indices = np.asarray(indices)
        parts = [indices[i:i + chunk] for i in range(0, len(indices), chunk)]
        if not parts:
            return np.full(self.dim, np.nan), np.full(self.dim, np.nan)
        total = sum(self.matrix[p].astype(np.float64).sum(axis=0) for p in parts)
        mean = total / len(indices)
        squares = sum(((self.matrix[p].astype(np.float64) - mean) ** 2).sum(axis=0)
                      for p in parts)
        return mean, np.sqrt(squares / len(indices))

    def pooled(self, indices: np.ndarray) -> np.ndarray:
        """One feature vector per unit (the embedding itself)."""
        return self.matrix[indices]

    def dataset(self, indices: np.ndarray, targets: np.ndarray, *, train: bool,
                max_tiles: int = 0) -> Dataset:
        return SpotDataset(self.matrix[indices], targets[indices])


@dataclass
class BagFeatures:
    """Bulk mode: the feature file(s) of each unit (a bag of tiles), read on demand.

    ``paths[i]`` holds the files of unit ``i``: one slide's, or a patient's slides' when the
    join averaged them.
    """

    paths: list[tuple[Path, ...]]
    supertiles: int = 0
    seed: int = 0
    kind: str = "bulk"
    dim: int = 0
    n_tiles: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    sums: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))
    sumsq: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))
    labels: list[np.ndarray | None] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.paths)

    def scan(self) -> BagFeatures:
        """One pass over the files: tile counts, per-slide sums (float64), supertile labels."""
        n = len(self.paths)
        for unit in self.paths:
            for p in unit:
                if not p.is_file():
                    raise InputError(p, "features file listed in obs['features_path'] does not "
                                     "exist", "run the extract stage, or fix the path in the dataset")
        self.n_tiles = np.zeros(n, dtype=np.int64)
        self.labels = []
        for i, unit in enumerate(tqdm(self.paths, desc="scanning bags", unit="unit",
                                      disable=None)):
            features, coords, slide = read_unit_bag(unit)
            path = unit[0]
            if i == 0:
                self.dim = int(features.shape[1])
                self.sums = np.zeros((n, self.dim))
                self.sumsq = np.zeros((n, self.dim))
            elif features.shape[1] != self.dim:
                raise InputError(path, f"has {features.shape[1]}-d features, others "
                                 f"{self.dim}-d", "extract every slide with the same encoder")
            f64 = features.astype(np.float64)
            self.n_tiles[i] = len(features)
            self.sums[i] = f64.sum(axis=0)
            self.sumsq[i] = (f64 ** 2).sum(axis=0)
            self.labels.append(unit_supertile_labels(coords, slide, self.supertiles,
                                                     seed=self.seed)
                               if self.supertiles else None)
        return self

    def moments(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Tile-level feature mean and std over the slides ``indices``."""
        total = self.n_tiles[indices].sum()
        mean = self.sums[indices].sum(axis=0) / total
        var = self.sumsq[indices].sum(axis=0) / total - mean ** 2
        return mean, np.sqrt(np.maximum(var, 0.0))

    def pooled(self, indices: np.ndarray) -> np.ndarray:
        """Mean tile feature of each slide (the baselines' input)."""
        return (self.sums[indices] / self.n_tiles[indices, None]).astype(np.float32)

    def dataset(self, indices: np.ndarray, targets: np.ndarray, *, train: bool,
                max_tiles: int = 0) -> Dataset:
        return BagDataset([self.paths[i] for i in indices], targets[indices],
                          labels=[self.labels[i] for i in indices] if self.supertiles else None,
                          max_tiles=max_tiles if train else 0)


class SpotDataset(Dataset):
    """Rows of an embedding matrix with their targets."""

    def __init__(self, x: np.ndarray, y: np.ndarray) -> None:
        self.x = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
        self.y = torch.from_numpy(np.ascontiguousarray(y, dtype=np.float32))

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"x": self.x[i], "y": self.y[i]}


class BagDataset(Dataset):
    """Bags read from feature files when requested (optionally pooled into supertiles)."""

    def __init__(self, paths: list[tuple[Path, ...]], y: np.ndarray, *,
                 labels: list[np.ndarray] | None,
                 max_tiles: int = 0) -> None:
        self.paths = paths
        self.y = torch.from_numpy(np.ascontiguousarray(y, dtype=np.float32))
        self.labels = labels
        self.max_tiles = max_tiles

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        features, _, _ = read_unit_bag(self.paths[i])
        if self.labels is not None:
            features = pool_by_label(features, self.labels[i])
        x = torch.from_numpy(features)
        if self.max_tiles and len(x) > self.max_tiles:
            x = x[torch.randperm(len(x))[: self.max_tiles]]
        return {"x": x, "y": self.y[i]}


def collate_bags(items: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Pad bags to the longest one; ``mask`` marks real tiles."""
    n_max = max(item["x"].shape[0] for item in items)
    dim = items[0]["x"].shape[1]
    x = torch.zeros(len(items), n_max, dim)
    mask = torch.zeros(len(items), n_max, dtype=torch.bool)
    for b, item in enumerate(items):
        n = item["x"].shape[0]
        x[b, :n] = item["x"]
        mask[b, :n] = True
    return {"x": x, "mask": mask, "y": torch.stack([item["y"] for item in items])}
