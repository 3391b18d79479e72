"""The extract stage: every tile of a tiles file embedded by a pretrained encoder.

:func:`extract_features` streams tiles from the slide through the encoder into a resumable
features file (:mod:`slide2expr.contracts.features`), :func:`extract_tilings` every tiling
of a slide in one pass; both take an :class:`ExtractOptions` (:mod:`.options`) or its
fields as keywords. :mod:`.encoders` is the registry.
"""

from slide2expr.extract.options import ExtractOptions
from slide2expr.extract.run import ExtractResult, extract_features, extract_tilings

__all__ = ["ExtractOptions", "ExtractResult", "extract_features", "extract_tilings"]
