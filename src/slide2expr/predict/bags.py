"""A slide's tiles as a model's bag: the features and coordinates of one features file, and
HE2RNA supertiles (tile features averaged over k-means clusters of their positions).

Training (:mod:`slide2expr.train.features`) and prediction read bags through these functions,
so a bulk head sees the same bag in both.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from slide2expr.contracts.features import read_features
from slide2expr.errors import InputError


def read_bag(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """``features`` (float32) and ``coords`` of one feature file."""
    path = Path(path)
    fs = read_features(path)
    features, coords = fs.features.astype(np.float32, copy=False), fs.coords
    if features.ndim != 2 or len(features) == 0:
        raise InputError(path, f"has features of shape {features.shape}",
                         "re-run the extract stage; a slide needs at least one tile")
    return features, coords




def make_supertiles(features: np.ndarray, coords: np.ndarray, n: int, *, seed: int = 0) -> np.ndarray:
    """Average features over ``n`` k-means clusters of tile coordinates (HE2RNA supertiles)."""
    labels = supertile_labels(coords, n, seed=seed)
    return pool_by_label(features, labels)


def supertile_labels(coords: np.ndarray, n: int, *, seed: int = 0) -> np.ndarray:
    """Cluster label of each tile (k-means on coordinates, ``min(n, N)`` clusters)."""
    from sklearn.cluster import KMeans

    coords = np.asarray(coords, dtype=np.float64)
    if len(coords) <= n:
        return np.arange(len(coords))
    km = KMeans(n_clusters=n, n_init=1, random_state=seed, max_iter=50)
    return km.fit_predict(coords)


def pool_by_label(features: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Mean feature of each label (labels ``0..L-1``; empty labels dropped)."""
    n_labels = int(labels.max()) + 1
    sums = np.zeros((n_labels, features.shape[1]), dtype=np.float64)
    np.add.at(sums, labels, features)
    counts = np.bincount(labels, minlength=n_labels)
    keep = counts > 0
    return (sums[keep] / counts[keep, None]).astype(np.float32)
