"""The train stage: cross-validated regression heads, with baselines, on ``dataset.h5ad``.

Modules: :mod:`.config` (settings), :mod:`.cv` (patient-grouped folds),
:mod:`.gene_selection` (genes chosen on training units), :mod:`.features` (spot matrices and
bulk feature files), :mod:`.data` (LightningDataModule), :mod:`.baselines` (ridge, HEST,
mean), :mod:`.nets` (the heads' plain networks), :mod:`.heads` (the Lightning wrappers that
train them), :mod:`.run` (the whole stage), :mod:`.trained` (saved heads) and
:mod:`.predict` (trained heads on new slides).

The two entry points are imported on first use, so that loading a trained head
(:mod:`.trained`, e.g. for heatmaps) does not import Lightning through this package.
"""

from __future__ import annotations

from typing import Any

__all__ = ["predict_files", "run_training"]


def __getattr__(name: str) -> Any:
    if name == "predict_files":
        from slide2expr.train.predict import predict_files
        return predict_files
    if name == "run_training":
        from slide2expr.train.run import run_training
        return run_training
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
