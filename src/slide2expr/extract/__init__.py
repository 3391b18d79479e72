"""The extract stage: every tile of a tiles file embedded by a pretrained encoder.

:func:`extract_features` streams tiles from the slide through the encoder into a resumable
features file (:mod:`slide2expr.contracts.features`); :mod:`.encoders` is the registry.
"""

from slide2expr.extract.run import ExtractResult, extract_features

__all__ = ["ExtractResult", "extract_features"]
