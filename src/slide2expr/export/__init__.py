"""Exports of a run's results to other ecosystems' formats.

- :mod:`.spatialdata`: a SpatialData zarr store (scverse) of a spot-mode run, with the
  optional ``spatialdata`` extra (``pip install 'slide2expr[spatialdata]'``).
"""
