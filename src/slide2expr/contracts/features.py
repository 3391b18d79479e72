"""Read and write the extract stage's file: ``features/{encoder}/{tiling}/{sample}.h5``.

Contract (docs/architecture.md): dataset ``features`` ``(N, D)`` float32 or float16, ``coords`` int64
``(N, 2)`` (level-0 x, y of each tile's top-left corner, as in the tiles file), ``spot_ids``
``(N,)`` in spot mode; attrs ``encoder``, ``weights`` (sha256 of the weights file, or
``"random-init"``), ``weights_source``, ``embed_dim``, ``input_px`` and ``input_mpp`` (the
pixels the encoder saw), and every attr of the tiles file; read and written as a
:class:`FeatureAttrs` record (a field each; others kept in ``extra``). An encoder whose
embedding concatenates several layers' pooled outputs (``efficientnet_lite0_layers``) adds
``feature_layout``: JSON ``[[part, width], ...]``, the column ranges in order (absent: one
part); an addition older readers ignore.

Stain normalisation (:mod:`slide2expr.extract.stain`) is recorded in attrs (:data:`STAIN_ATTRS`,
read back with :func:`stain_record`): ``stain_normalize`` (``none``, ``macenko`` or
``reinhard``; absent in files written before it existed, which mean ``none``) and, with a
method, ``stain_reference`` (``published`` / ``fixed`` or the reference image's path),
``stain_reference_sha256`` (a file), ``stain_reference_fit`` and ``stain_fit`` (JSON: the
reference's and this slide's fitted stain vectors and concentration ranges, or l-alpha-beta
means and SDs), ``stain_fit_source`` (the low-resolution read the slide was fitted on) and
``stain_status`` (``normalised``, or ``not normalised: <why>`` for a slide with too little
tissue, embedded as it is). These attrs are additions that older readers ignore, so the
stamp stays ``features/1``.

**Augmentation views** (``extract.views``): each view ``v`` is one more dataset
``views/{v}`` ``(N, D)`` (same dtype) of the same tiles transformed before embedding (a
rotation/flip or a per-tile HED jitter, :data:`slide2expr.extract.stain.VIEWS`); attr
``views`` lists them (JSON; ``[]`` or absent: none). Readers that do not know views ignore
the group, so this too stays ``features/1``.

The file is written batch by batch into a hidden partial file beside the output
(``.{sample}.partial.h5``) that records how many rows are done (attr ``n_done``); it is
renamed to the output name when complete. A run that is killed leaves only the partial
file, and the next run with the same inputs and encoder resumes from it. The file is stamped
``slide2expr_format = "features/1"``. One run at a time writes an output: the writer holds
:func:`slide2expr.atomic.output_lock` on it from start to finish, and a second run for the
same output stops at once with one line naming the first one's process (it never touches
the first one's partial file).

The ``features`` dataset is allocated in full when the partial file is created, so a disk
that is too small fails at once, before any tile is embedded, and a disk that fills up
later (another job) does not stop the rows still to come. Each batch is flushed before
``n_done`` counts it, so a write that fails all the same (a full disk, a quota) leaves the
partial file valid up to the last counted row: the run stops at the first failed write with
one line, "free space and rerun; it resumes". A run that fails before any row is written
(an unreadable slide) leaves no partial file.

**Files from other tools.** The readers also accept the TRIDENT and CLAM layout (a
``features`` dataset ``(N, D)``, or ``(1, N, D)``, and ``coords`` ``(N, 2)``: level-0
top-left corners, as ours), whose patch attributes sit on the ``coords`` dataset instead of
the file. They are mapped onto this contract's attrs (:func:`foreign_layout_attrs`):

==============================  =================================================
theirs (on ``coords``)          ours
==============================  =================================================
``patch_size_level0``           ``tile_px_level0`` (TRIDENT)
``patch_size`` x ``downsample``  ``tile_px_level0`` (CLAM: ``downsample`` of
  x ``custom_downsample``        ``patch_level``; at ``patch_level`` 0 without
                                 ``downsample``, 1 is assumed)
``patch_size``                  ``tile_px`` (pixels the encoder saw)
``level0_width/height``         the same, when present; CLAM's ``level_dim`` only
                                 at ``patch_level`` 0 (else it is not level 0)
``level0_magnification``,       kept as they are; no mpp is derived from a
``target_magnification``        magnification (heatmaps read the slide's own mpp)
``name``                        ``slide_name`` (not ``sample_id``: the sample is the
                                 file name ``{sample_id}.h5``, as for ours)
``encoder`` (on either          ``encoder``; otherwise none is recorded and any
dataset or the file)            ``join.encoder`` is accepted
==============================  =================================================

plus ``mode = "grid"`` (such files have no ``spot_ids``: bulk mode and heatmaps, not spot
mode), ``embed_dim`` and ``n_tiles`` from the shape, and ``source_layout`` ``trident`` or
``clam``. A CLAM file above level 0 without ``downsample`` is refused (its patch size in
level-0 pixels cannot be known).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from slide2expr.atomic import output_lock
from slide2expr.contracts._h5 import (
    FORMAT_ATTR,
    check_format,
    format_stamp,
    open_h5,
    plain_attr,
    read_attrs,
)
from slide2expr.contracts.tiles import TileAttrs, TileSet
from slide2expr.errors import NO_SPACE_ERRNOS, InputError, environment_fault, fault_errno

CONTRACT = "features"
VERSION = "1"
#: What to do about a features file that is missing or broken.
REDO = "re-run the extract stage for this sample"

log = logging.getLogger(__name__)

FEATURE_DTYPES = ("float32", "float16")
#: Attrs that must match for a partial file to be resumed.
_SIGNATURE = ("encoder", "weights", "embed_dim", "dtype", "n_tiles", "coords_sha1", "input_px",
              "views", "stain_normalize", "stain_reference", "stain_reference_sha256", "stain_fit")
#: Attrs recording the stain normalisation (module docstring).
STAIN_ATTRS = ("stain_normalize", "stain_reference", "stain_reference_sha256",
               "stain_reference_fit", "stain_fit", "stain_fit_source", "stain_status")


@dataclass(kw_only=True, repr=False)
class FeatureAttrs(TileAttrs):
    """The attributes of a features file (module docstring), typed; the rest in ``extra``.

    A features file carries its tiles file's attributes (the :class:`TileAttrs` fields) and
    the encoder's, declared in the order the extract stage sets them.
    """

    encoder: str | None = None
    weights: str | None = None
    weights_source: str | None = None
    input_px: int | None = None
    device: str | None = None
    input_mpp: float | None = None
    feature_layout: str | None = None
    stain_normalize: str | None = None
    stain_reference: str | None = None
    stain_reference_sha256: str | None = None
    stain_reference_fit: str | None = None
    stain_status: str | None = None
    stain_fit_source: str | None = None
    stain_fit: str | None = None
    embed_dim: int | None = None
    dtype: str | None = None
    n_tiles: int | None = None
    coords_sha1: str | None = None
    views: str | None = None
    n_done: int | None = None
    complete: bool | None = None
    # files of other tools (TRIDENT, CLAM): :func:`foreign_layout_attrs`
    source_layout: str | None = None
    level0_magnification: Any = None
    target_magnification: Any = None
    overlap: Any = None
    slide_name: str | None = None

    @property
    def view_names(self) -> tuple[str, ...]:
        """The augmentation views the file holds (attr ``views``; none if absent)."""
        return tuple(json.loads(str(self.views))) if self.views not in (None, "") else ()


def as_feature_attrs(attrs: FeatureAttrs | TileAttrs | Mapping[str, Any]) -> FeatureAttrs:
    """``attrs`` as a :class:`FeatureAttrs` (a mapping or tile record is converted)."""
    if isinstance(attrs, FeatureAttrs):
        return attrs
    if isinstance(attrs, TileAttrs):
        return attrs.to_record(FeatureAttrs)
    return FeatureAttrs.from_attrs(attrs)


@dataclass
class FeatureSet:
    """Embeddings of the tiles of one slide.

    Attributes
    ----------
    features
        ``(N, D)`` embeddings.
    coords
        ``(N, 2)`` int64 level-0 ``x, y`` of each tile's top-left corner.
    attrs
        Encoder and tiling attributes (see module docstring).
    spot_ids
        Spot identifiers aligned with ``coords`` in spot mode, else ``None``.
    views
        Augmentation view name -> ``(N, D)`` embeddings of the transformed tiles.
    """

    features: np.ndarray
    coords: np.ndarray
    attrs: FeatureAttrs
    spot_ids: np.ndarray | None = None
    views: dict[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.attrs = as_feature_attrs(self.attrs)

    def __len__(self) -> int:
        return int(self.features.shape[0])

    @property
    def centres(self) -> np.ndarray:
        """``(N, 2)`` float64 tile centres in level-0 px (attr ``tile_px_level0``)."""
        if self.attrs.tile_px_level0 is None:
            raise KeyError("tile_px_level0")
        return self.coords.astype(np.float64) + float(self.attrs.tile_px_level0) / 2.0


def partial_path(path: str | Path) -> Path:
    """The hidden file a features file is written into before it is complete."""
    path = Path(path)
    return path.with_name(f".{path.stem}.partial{path.suffix}")


def coords_digest(coords: np.ndarray) -> str:
    """sha1 of the coordinates, to recognise a partial file made from the same tiles."""
    return hashlib.sha1(np.ascontiguousarray(coords, dtype=np.int64).tobytes()).hexdigest()


class FeatureWriter:
    """Stream features into ``path`` batch by batch, resumably.

    Use as a context manager; call :meth:`write` for consecutive row blocks and
    :meth:`finish` at the end, which renames the partial file to ``path``. On an error the
    partial file is kept (flushed up to the last complete batch) for the next run.

    Parameters
    ----------
    path
        The final features file.
    tiles
        The tiles being embedded (coords, spot ids and tiling attrs are copied).
    embed_dim
        ``D``.
    attrs
        Encoder attrs: at least ``encoder`` and ``weights`` (a mapping given is converted).
    dtype
        ``"float32"`` or ``"float16"``.
    resume
        Continue a matching partial file if there is one.
    views
        Names of the augmentation views written beside ``features`` (``views/{name}``).
    """

    def __init__(self, path: str | Path, tiles: TileSet, *, embed_dim: int,
                 attrs: FeatureAttrs | Mapping[str, Any], dtype: str = "float32",
                 resume: bool = True,
                 views: Sequence[str] = ()) -> None:
        if dtype not in FEATURE_DTYPES:
            raise InputError(None, f"unknown feature dtype {dtype!r}",
                             f"use one of {', '.join(FEATURE_DTYPES)}")
        self.path = Path(path)
        self.partial = partial_path(self.path)
        self.n_tiles = len(tiles)
        self.dtype = dtype
        self.views = tuple(views)
        self.attrs = as_feature_attrs(tiles.attrs).copy()
        self.attrs.update(as_feature_attrs(attrs).to_attrs())
        self.attrs.embed_dim = int(embed_dim)
        self.attrs.dtype = dtype
        self.attrs.n_tiles = self.n_tiles
        self.attrs.coords_sha1 = coords_digest(tiles.coords)
        self.attrs.views = json.dumps(list(self.views))
        self.attrs.update(format_stamp(CONTRACT, VERSION))
        self._tiles = tiles
        self._resume = resume
        self._file: h5py.File | None = None
        self._lock = contextlib.ExitStack()
        self.n_done = 0

    # -- context -------------------------------------------------------------------------
    def __enter__(self) -> FeatureWriter:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # one run per output: a second one stops here, before touching the partial file
            self._lock.enter_context(output_lock(self.path))
        except OSError as exc:
            self._raise_fault(exc)
            raise
        try:
            if self._resume and self.partial.exists():
                self._file = self._open_matching_partial()
            if self._file is None:
                with contextlib.suppress(FileNotFoundError):
                    self.partial.unlink()
                self._file = self._create()
        except BaseException as exc:
            self._abandon()
            self._lock.close()
            if isinstance(exc, Exception):
                self._raise_fault(exc)
            raise
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        try:
            if exc is None:
                if self._file is not None:
                    self._file.close()
                    self._file = None
                return
            self._abandon()
        finally:
            self._lock.close()

    # -- writing -------------------------------------------------------------------------
    def write(self, start: int, rows: np.ndarray,
              views: dict[str, np.ndarray] | None = None) -> None:
        """Write ``rows`` (and each view's rows) at ``start`` (the rows done so far).

        The rows reach the disk before ``n_done`` counts them; a failed write closes the
        file, keeping it valid up to the rows written before, and raises.
        """
        if start != self.n_done:
            raise RuntimeError(f"batches out of order: got row {start}, expected {self.n_done}")
        if self._file is None:
            raise RuntimeError(f"{self.partial} is closed after a failed write")
        stop = start + rows.shape[0]
        try:
            self._file["features"][start:stop] = rows.astype(self.dtype, copy=False)
            for name in self.views:
                self._file["views"][name][start:stop] = \
                    np.asarray((views or {})[name]).astype(self.dtype, copy=False)
            self._file.flush()
            self._file.attrs["n_done"] = stop
            self._file.flush()
        except Exception as exc:
            self._abandon()
            self._raise_fault(exc)
            raise
        self.n_done = stop

    def finish(self) -> Path:
        """Close the partial file and rename it to the output path."""
        if self.n_done != self.n_tiles:
            raise RuntimeError(f"only {self.n_done} of {self.n_tiles} rows were written")
        assert self._file is not None
        try:
            self._file.attrs["complete"] = True
            self._file.close()
            self._file = None
            os.replace(self.partial, self.path)
        except Exception as exc:
            self._abandon()
            self._raise_fault(exc)
            raise
        return self.path

    # -- failure -------------------------------------------------------------------------
    def _abandon(self) -> None:
        """Close the file after an error, silently; remove it if it holds no row."""
        if self._file is not None:
            with contextlib.suppress(Exception):
                self._file.close()
            self._file = None
        if self.n_done == 0:
            with contextlib.suppress(OSError):
                self.partial.unlink()

    def _raise_fault(self, exc: Exception) -> None:
        """Raise an EnvironmentFault for a disk or permission fault behind ``exc``."""
        if fault_errno(exc) not in NO_SPACE_ERRNOS:
            fix = None  # not writable: environment_fault's own fix
        elif self.n_done:
            fix = f"free space and rerun; it resumes after tile {self.n_done} of {self.n_tiles}"
        else:
            size = (self.n_tiles * int(self.attrs.embed_dim or 0) * np.dtype(self.dtype).itemsize
                    * (1 + len(self.views)))
            fix = f"free space (the file needs about {size / 1e6:.1f} MB) and rerun"
        fault = environment_fault(exc, self.path, fix=fix)
        if fault is not None:
            if self.n_done and self.partial.exists():
                fault.problem += (f"; the {self.n_done} tiles done are kept in "
                                  f"{self.partial.name}")
                fault.args = (fault.one_line(),)
            raise fault from exc

    # -- helpers -------------------------------------------------------------------------
    def _create(self) -> h5py.File:
        f = h5py.File(self.partial, "w")
        try:
            self._fill_new(f)
        except BaseException:
            with contextlib.suppress(Exception):
                f.close()
            raise
        return f

    def _fill_new(self, f: h5py.File) -> None:
        n, d = self.n_tiles, int(self.attrs.embed_dim or 0)
        chunk_rows = max(1, min(n, max(1, (1 << 20) // (4 * d))))  # about 1 MB chunks
        # Allocated (and written) in full now: a too-small disk fails before any work.
        dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
        dcpl.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)
        f.create_dataset("features", shape=(n, d), dtype=self.dtype,
                         chunks=(chunk_rows, d) if n else None, dcpl=dcpl,
                         fill_time="alloc")
        for name in self.views:
            f.require_group("views").create_dataset(
                name, shape=(n, d), dtype=self.dtype, chunks=(chunk_rows, d) if n else None,
                dcpl=dcpl, fill_time="alloc")
        f.create_dataset("coords", data=np.asarray(self._tiles.coords, dtype=np.int64).reshape(-1, 2))
        if self._tiles.spot_ids is not None:
            f.create_dataset("spot_ids", data=np.asarray(self._tiles.spot_ids, dtype=object),
                             dtype=h5py.string_dtype("utf-8"))
        for key, value in self.attrs.items():
            f.attrs[key] = value
        f.attrs["n_done"] = 0
        f.flush()

    def _open_matching_partial(self) -> h5py.File | None:
        try:
            f = h5py.File(self.partial, "r+")
        except OSError as exc:
            log.warning("%s: unreadable partial file (%s); starting over", self.partial, exc)
            return None
        try:
            mine = self.attrs.to_attrs()
            same = all(plain_attr(f.attrs.get(k)) == mine[k] for k in _SIGNATURE if k in mine)
            n_done = int(f.attrs.get("n_done", 0))
            if same and 0 <= n_done <= self.n_tiles and f["features"].shape[0] == self.n_tiles:
                self.n_done = n_done
                log.info("%s: resuming after %d of %d tiles", self.path, n_done, self.n_tiles)
                return f
        except (KeyError, OSError, ValueError) as exc:
            log.warning("%s: broken partial file (%s); starting over", self.partial, exc)
        f.close()
        log.info("%s: partial file is from other inputs; starting over", self.partial)
        return None


@dataclass
class FeatureMeta:
    """What a features file holds, without its feature rows.

    Attributes
    ----------
    shape
        ``(N, D)`` of the ``features`` dataset.
    attrs
        Encoder and tiling attributes.
    spot_ids
        Spot identifiers in spot mode, else ``None``.
    n_coords
        Rows of ``coords``.
    """

    shape: tuple[int, ...]
    attrs: FeatureAttrs
    spot_ids: np.ndarray | None
    n_coords: int
    dtype: str = "float32"
    views: tuple[str, ...] = ()

    @property
    def sample_id(self) -> str:
        """The sample the file belongs to."""
        return str(self.attrs.sample_id or "")


def _read_checked_attrs(path: Path, f: h5py.File) -> FeatureAttrs:
    attrs = read_attrs(f)
    check_format(path, attrs, CONTRACT, (VERSION,))
    foreign = foreign_layout_attrs(path, f, attrs)
    return FeatureAttrs.from_attrs(attrs if foreign is None else foreign)


def foreign_layout_attrs(path: Path, f: h5py.File,
                         file_attrs: dict[str, object]) -> dict[str, object] | None:
    """Our attrs for a TRIDENT/CLAM-layout features file, or ``None`` for one of ours.

    See the module docstring for the mapping and what it assumes.

    Raises
    ------
    InputError
        A CLAM-layout file whose patch size in level-0 pixels cannot be known.
    """
    if FORMAT_ATTR in file_attrs or "coords" not in f or "features" not in f:
        return None
    coords = read_attrs(f["coords"])
    if "patch_size" not in coords and "patch_size_level0" not in coords:
        return None
    layout = "trident" if "patch_size_level0" in coords else "clam"
    if "patch_size_level0" in coords:
        size0 = float(coords["patch_size_level0"])  # type: ignore[arg-type]
    else:
        level = int(coords.get("patch_level", 0) or 0)  # type: ignore[arg-type]
        downsample = coords.get("downsample")
        if downsample is None and level != 0:
            raise InputError(path, f"is a CLAM-layout features file at patch_level {level} "
                             "without a 'downsample' attr on coords: its patch size in "
                             "level-0 pixels is unknown",
                             "add patch_size_level0 (or downsample) to the coords attrs")
        factor = 1.0 if downsample is None else float(np.ravel(downsample)[0])
        custom = float(coords.get("custom_downsample", 1) or 1)  # type: ignore[arg-type]
        size0 = float(coords["patch_size"]) * factor * custom  # type: ignore[arg-type]
    shape = f["features"].shape
    n, dim = (shape[-2], shape[-1]) if len(shape) >= 2 else (shape[0], 1)
    attrs: dict[str, object] = {
        "source_layout": layout, "mode": "grid", "tile_px_level0": size0,
        "tile_px": int(coords.get("patch_size", round(size0))),  # type: ignore[call-overload]
        "embed_dim": int(dim), "n_tiles": int(n),
    }
    for key in ("level0_width", "level0_height", "level0_magnification",
                "target_magnification", "overlap"):
        if key in coords:
            attrs[key] = coords[key]
    level_dim = coords.get("level_dim")
    if "level0_width" not in attrs and level_dim is not None and \
            int(coords.get("patch_level", 0) or 0) == 0:  # type: ignore[arg-type]
        attrs["level0_width"], attrs["level0_height"] = (int(v) for v in np.ravel(level_dim)[:2])
    if "name" in coords:
        attrs["slide_name"] = str(coords["name"])
    encoder = (read_attrs(f["features"]).get("encoder") or file_attrs.get("encoder")
               or coords.get("encoder"))
    if encoder:
        attrs["encoder"] = str(encoder)
    log.debug("%s: %s-layout features file mapped to attrs %s", path, layout, attrs)
    return attrs


def _feature_rows(f: h5py.File) -> np.ndarray:
    """The ``features`` dataset as ``(N, D)`` (a leading axis of 1, as some tools save, dropped)."""
    features = f["features"][:]
    if features.ndim == 3 and features.shape[0] == 1:
        features = features[0]
    return features


def read_features(path: str | Path) -> FeatureSet:
    """Read a features file.

    Raises
    ------
    InputError
        If the file is missing or is not a complete features file.
    """
    path = Path(path)
    with open_h5(path, what="features file", fix=REDO) as f:
        attrs = _read_checked_attrs(path, f)
        features = _feature_rows(f)
        coords = np.asarray(f["coords"][:]).reshape(-1, 2).astype(np.int64, copy=False)
        spot_ids = f["spot_ids"].asstr()[:] if "spot_ids" in f else None
        views = {name: f["views"][name][:] for name in attrs.view_names}
    if attrs.n_done is not None and attrs.n_done != len(features):
        raise InputError(path, "is an incomplete features file", REDO)
    return FeatureSet(features=features, coords=coords, attrs=attrs, spot_ids=spot_ids,
                      views=views)


def read_feature_meta(path: str | Path) -> FeatureMeta:
    """Shape, attrs and spot IDs of a features file; the feature rows are not read.

    Raises
    ------
    InputError
        If the file is missing or is not a features file.
    """
    path = Path(path)
    with open_h5(path, what="features file", fix=REDO) as f:
        attrs = _read_checked_attrs(path, f)
        shape = tuple(f["features"].shape)
        if len(shape) == 3 and shape[0] == 1:
            shape = shape[1:]
        spot_ids = f["spot_ids"].asstr()[:] if "spot_ids" in f else None
        n_coords = int(f["coords"].shape[0]) if "coords" in f else shape[0]
        dtype = str(f["features"].dtype)
    return FeatureMeta(shape=shape, attrs=attrs, spot_ids=spot_ids, n_coords=n_coords,
                       dtype=dtype, views=attrs.view_names)


def features_attrs(path: str | Path) -> FeatureAttrs:
    """Only the attrs of a features file (cheap: no feature rows are read)."""
    path = Path(path)
    with open_h5(path, what="features file", fix=REDO) as f:
        return _read_checked_attrs(path, f)


def stain_record(attrs: FeatureAttrs) -> dict[str, object]:
    """The stain normalisation recorded in a features file's attrs, JSON fields decoded.

    A file without ``stain_normalize`` (written before the option existed, or by another
    tool) is ``{"stain_normalize": "none"}``.
    """
    out: dict[str, object] = {"stain_normalize": str(attrs.stain_normalize or "none")}
    for key in STAIN_ATTRS[1:]:
        value = getattr(attrs, key)
        if value is None or value == "":
            continue
        out[key] = json.loads(str(value)) if key in ("stain_fit", "stain_reference_fit") \
            else str(value)
    return out


#: The per-section tiling record the join keeps in ``dataset.h5ad`` (:func:`section_record`).
SECTION_RECORD = ("slide_mpp", "mpp_source", "target_mpp", "tile_px", "tile_px_level0",
                  "level0_width", "level0_height", "spot_diameter_um", "n_tiles", "weights")
#: Prefix of the Space Ranger facts a section's attrs carry (the stand-in image's, the
#: tile stage; the scale factors, the join: :func:`with_scalefactors`).
SPACERANGER_PREFIX = "spaceranger_"


def with_scalefactors(attrs: FeatureAttrs, scalefactors: Mapping[str, Any]) -> FeatureAttrs:
    """A copy of ``attrs`` with Space Ranger's scale factors as ``spaceranger_{name}``."""
    out = attrs.copy()
    out.update({f"{SPACERANGER_PREFIX}{k}": v for k, v in scalefactors.items()})
    return out


def section_record(attrs: FeatureAttrs) -> dict[str, Any]:
    """What the dataset records of one section's features: :data:`SECTION_RECORD` where
    set, then every Space Ranger fact (``spaceranger_*``)."""
    values = attrs.to_attrs()
    return ({k: values[k] for k in SECTION_RECORD if k in values}
            | {k: v for k, v in values.items() if k.startswith(SPACERANGER_PREFIX)})


def spot_diameter_level0(attrs: FeatureAttrs | Mapping[str, Any]) -> float | None:
    """The spot diameter in level-0 px from a sample's feature attrs.

    Space Ranger's own ``spot_diameter_fullres`` (kept as ``spaceranger_*`` attrs by the
    join, :func:`with_scalefactors`) wins; else ``spot_diameter_um / slide_mpp``; else the
    spot patch edge ``tile_px_level0`` (a spot patch is ``spot_diameter_um`` across).
    ``attrs`` may be the dataset's record of a section (:func:`section_record`).
    """
    attrs = as_feature_attrs(attrs)
    fullres = attrs.extra.get(f"{SPACERANGER_PREFIX}spot_diameter_fullres")
    if fullres:
        return float(fullres)
    um, mpp = attrs.spot_diameter_um, attrs.slide_mpp
    if um and mpp:
        return float(um) / float(mpp)
    if attrs.tile_px_level0:
        return float(attrs.tile_px_level0)
    return None
