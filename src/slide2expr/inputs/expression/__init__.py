"""Readers for the expression data users have: bulk matrices and spatial spot counts.

Every reader returns an :class:`~slide2expr.inputs.expression.table.ExpressionTable` (units x
genes, values checked, unique IDs and gene names).
"""

from slide2expr.inputs.expression.bulk import ORIENTATIONS, read_bulk_matrix
from slide2expr.inputs.expression.gene_ids import read_gene_map, rename_genes, strip_version
from slide2expr.inputs.expression.spatial import read_10x_h5, read_spot_counts
from slide2expr.inputs.expression.table import VALUE_TYPES, ExpressionTable, check_values

__all__ = [
    "ORIENTATIONS",
    "VALUE_TYPES",
    "ExpressionTable",
    "check_values",
    "read_10x_h5",
    "read_bulk_matrix",
    "read_gene_map",
    "read_spot_counts",
    "rename_genes",
    "strip_version",
]
