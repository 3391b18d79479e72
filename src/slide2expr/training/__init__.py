"""Cross-validated training of regression heads, with baselines, on ``dataset.h5ad``.

Modules: :mod:`.config` (settings), :mod:`.cv` (patient-grouped folds), :mod:`.genes`
(gene selection on training units), :mod:`.features` (spot matrices and bulk feature files),
:mod:`.data` (LightningDataModule), :mod:`.baselines` (ridge, HEST, mean), :mod:`.run`
(the whole stage).
"""
