"""The join stage: features of every sample joined with its expression in one AnnData.

:func:`build_dataset` returns the AnnData; :func:`write_dataset` writes ``dataset.h5ad``.
"""

from slide2expr.contracts.dataset import write_dataset
from slide2expr.join.run import JoinParams, build_dataset

__all__ = ["JoinParams", "build_dataset", "write_dataset"]
