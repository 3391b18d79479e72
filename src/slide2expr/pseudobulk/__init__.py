"""Pseudo-bulk from spatial data: windows of a section as region samples.

:func:`make_pseudobulk` turns a spot-mode sample sheet (sections with spot counts and spot
positions) into a bulk-mode one: square windows over each section (on tissue, with a minimum
number of spots), each a region sample (:mod:`slide2expr.inputs.regions`) whose bulk profile
is the summed raw counts of its spots. It writes the region sheet and the bulk expression
matrix that the ordinary bulk join reads.
"""

from slide2expr.pseudobulk.run import PseudobulkParams, make_pseudobulk
from slide2expr.pseudobulk.windows import Window, place_windows

__all__ = ["PseudobulkParams", "Window", "make_pseudobulk", "place_windows"]
