"""The train stage: cross-validated regression heads, with baselines, on ``dataset.h5ad``.

Modules: :mod:`.config` (settings), :mod:`.cv` (patient-grouped folds),
:mod:`.gene_selection` (genes chosen on training units), :mod:`.features` (spot matrices and
bulk feature files), :mod:`.data` (LightningDataModule), :mod:`.baselines` (ridge, HEST,
mean), :mod:`.heads` (the Lightning wrappers that train the networks of
:mod:`slide2expr.predict.nets`), :mod:`.save` (the fold folders' ``head.safetensors`` and
``head.json``), :mod:`.sources` (the dataset's feature blocks and checks), :mod:`.members`
(one head trained), :mod:`.folds` (one fold: genes, members, selection, baselines),
:mod:`.assembly` (the predictions file) and :mod:`.run` (the whole stage; its out-of-fold
predictions go through :func:`slide2expr.predict.predict_batches`). Applying a trained head to slides is
:mod:`slide2expr.predict`.

The entry point is imported on first use, so that importing this package does not import
Lightning.
"""

from __future__ import annotations

from typing import Any

__all__ = ["run_training"]


def __getattr__(name: str) -> Any:
    if name == "run_training":
        from slide2expr.train.run import run_training
        return run_training
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
