"""The train stage: cross-validated regression heads, with baselines, on ``dataset.h5ad``.

Modules: :mod:`.config` (settings), :mod:`.cv` (patient-grouped folds),
:mod:`.gene_selection` (genes chosen on training units), :mod:`.features` (spot matrices and
bulk feature files), :mod:`.data` (LightningDataModule), :mod:`.baselines` (ridge, HEST,
mean), :mod:`.heads` (the Lightning heads), :mod:`.run` (the whole stage) and
:mod:`.predict` (trained heads on new slides).
"""

from slide2expr.train.predict import predict_files
from slide2expr.train.run import run_training

__all__ = ["predict_files", "run_training"]
