"""How a slide's tiles are embedded: one options record for every extraction entry point.

:func:`~slide2expr.extract.run.extract_features` (one tiling) and
:func:`~slide2expr.extract.run.extract_tilings` (every tiling of a slide in one pass) take an
:class:`ExtractOptions` and/or its fields as keywords. This module imports no torch, so the
command line can build the options before loading the encoder.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from slide2expr.keys import DEFAULT_ENCODER

if TYPE_CHECKING:
    from slide2expr.extract.encoders import Encoder


@dataclass(frozen=True)
class ExtractOptions:
    """Settings of one extraction run (the defaults are the command line's).

    Attributes
    ----------
    encoder
        A registry name or a built :class:`~slide2expr.extract.encoders.Encoder`.
    weights
        Local weights file for ``encoder`` (when it is a name).
    slide
        The slide file; default: the tiles' ``slide`` attr.
    batch_size
        Tiles per forward pass.
    num_workers
        Reader processes (0: read in the main process); default
        :func:`~slide2expr.extract.run.default_num_workers` for the device and ``threads``.
    threads
        CPU cores the job may use; sets torch's intra-op threads. Default: all available
        (:func:`~slide2expr.extract.run.available_cores`) and torch's own thread setting.
    device
        ``auto``, ``cpu`` or ``cuda``.
    dtype
        Storage type of the features: ``float32`` or ``float16``.
    stain_normalize
        ``none``, ``macenko`` or ``reinhard``: every tile is normalised to the reference
        before embedding, with the slide's own stain statistics fitted once on its
        low-resolution read (:func:`slide2expr.extract.stain.build_normalizer`). A slide with
        too little tissue is embedded unnormalised, with a warning and ``stain_status``
        recorded. The method, reference and fits are recorded in the file's attrs.
    stain_reference
        An H&E image to fit the reference on; None: the fixed reference.
    views
        Augmentation views (:data:`slide2expr.extract.stain.VIEWS`) embedded beside each tile
        into ``views/{name}`` of the features file; none for a ``grid`` or ``grid_ctx{um}``
        tiling (heatmaps use no views). Each view costs one more forward pass per tile.
    resume
        Continue a partial file left by an interrupted run with the same inputs.
    progress
        Show a progress bar (tiles/s).
    """

    encoder: str | Encoder = DEFAULT_ENCODER
    weights: str | Path | None = None
    slide: str | Path | None = None
    batch_size: int = 64
    num_workers: int | None = None
    threads: int | None = None
    device: str = "auto"
    dtype: str = "float32"
    stain_normalize: str = "none"
    stain_reference: str | Path | None = None
    views: tuple[str, ...] = ()
    resume: bool = True
    progress: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "views", tuple(self.views))  # a list from the CLI or a caller

    @classmethod
    def of(cls, options: ExtractOptions | None = None, **fields: Any) -> ExtractOptions:
        """``options`` (default: the defaults) with ``fields`` replaced; an unknown field is a
        ``TypeError`` naming it."""
        return dataclasses.replace(options or cls(), **fields)
