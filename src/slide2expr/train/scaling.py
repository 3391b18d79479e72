"""Feature standardisation with a variance floor, shared by every head and baseline.

A feature whose standard deviation over the training units is near zero (a CNN channel that
barely fires in the training sections, a context block that is one value per section with one
training section) turns a modest shift in a held-out section into an enormous z-score: with
an SD of 1e-4 a shift of 3.4 is a z-score of 34,000, and predictions follow (issue 21, case 6).

scikit-learn's ``StandardScaler`` treats a feature whose variance is zero up to rounding as
constant and divides it by 1 (its raw units) instead of its SD. Here the same is done with a
tolerance *relative to the input block* (the whole matrix is one block unless the spot-mode
inputs concatenate several, e.g. spot embedding + neighbour mean + section mean, whose scales
differ): a feature whose SD is below ``SD_FLOOR_FRACTION`` x the median SD of its block is
*near constant* and is divided by 1, so a held-out shift of 3.4 gives a z-score of 3.4, not
34,000. Exactly constant features were already divided by 1; every other feature is divided
by its own SD exactly as before, so numbers move only where a feature's training SD is
positive but below the tolerance. A block that is constant in training (median SD 0) takes
the tolerance from the median SD of the whole matrix.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

#: A feature is near constant (divided by 1) when its SD is below this fraction of its
#: block's median SD.
SD_FLOOR_FRACTION = 0.01


def typical_sd(sd: np.ndarray, blocks: Sequence[int] | None = None) -> np.ndarray:
    """Each feature's block median SD (same shape as ``sd``; see the module docstring), the
    reference of the near-constant tolerance.

    Parameters
    ----------
    sd
        Training-fold SD of each feature, ``(D,)``.
    blocks
        Widths of the concatenated input blocks (summing to ``D``); ``None``: one block.
    """
    sd = np.asarray(sd, dtype=np.float64)
    widths = list(blocks) if blocks else [len(sd)]
    if sum(widths) != len(sd):
        raise ValueError(f"blocks {widths} do not add up to {len(sd)} features")
    overall = float(np.median(sd)) if len(sd) else 0.0
    scales: list[np.ndarray] = []
    for part in np.split(sd, np.cumsum(widths)[:-1]):
        reference = float(np.median(part)) if len(part) else 0.0
        if reference <= 0:
            reference = overall if overall > 0 else 1.0
        scales.append(np.full(len(part), reference))
    return np.concatenate(scales) if scales else np.zeros(0)


def near_constant(sd: np.ndarray, blocks: Sequence[int] | None = None) -> np.ndarray:
    """Mask of the features whose SD is below ``SD_FLOOR_FRACTION`` x their block's median."""
    sd = np.asarray(sd, dtype=np.float64)
    return sd < SD_FLOOR_FRACTION * typical_sd(sd, blocks)


def floored_sd(sd: np.ndarray, blocks: Sequence[int] | None = None) -> np.ndarray:
    """Each feature's SD, near-constant ones (zero included) replaced by 1; float64."""
    sd = np.asarray(sd, dtype=np.float64)
    return np.where(near_constant(sd, blocks), 1.0, sd)


def standardise(train: np.ndarray, *others: np.ndarray,
                blocks: Sequence[int] | None = None) -> list[np.ndarray]:
    """``train`` and ``others`` as z-scores with ``train``'s mean and floored SD."""
    mean = train.mean(axis=0)
    sd = floored_sd(train.std(axis=0), blocks)
    return [(a - mean) / sd for a in (train, *others)]


def block_widths(source: object) -> list[int] | None:
    """Widths of a feature source's input blocks (spot mode), ``None`` for one block."""
    return [int(width) for _, width in getattr(source, "blocks", [])] or None
