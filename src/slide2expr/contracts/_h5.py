"""What every HDF5 contract shares: opening with a one-line error, attribute values, versions.

h5py returns attributes as numpy scalars, numpy arrays and (for some writers) bytes; every
reader goes through :func:`plain_attr`/:func:`read_attrs` so the rest of the package sees
plain Python values. Writers go through :func:`storable_attrs`, which drops ``None`` (HDF5
cannot store it) and turns paths and sequences into what h5py can.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from slide2expr.errors import InputError

#: The file attribute naming a contract's format version (``"<contract>/<version>"``).
FORMAT_ATTR = "slide2expr_format"


def plain_attr(value: Any, *, arrays_as_lists: bool = False) -> Any:
    """An h5py attribute as a plain Python value: numpy scalars unwrapped, bytes decoded, and
    with ``arrays_as_lists`` arrays turned into lists of plain values (else kept)."""
    if isinstance(value, bytes):  # before np.generic: numpy.bytes_ is both
        return value.decode("utf-8", "replace")
    if isinstance(value, np.generic):
        return value.item()
    if arrays_as_lists and isinstance(value, np.ndarray):
        return [plain_attr(v) for v in value.tolist()]
    return value


def read_attrs(obj: h5py.File | h5py.Group | h5py.Dataset) -> dict[str, Any]:
    """All attributes of an HDF5 object as plain Python values."""
    return {str(k): plain_attr(v) for k, v in obj.attrs.items()}


def storable_attrs(attrs: Mapping[str, Any]) -> dict[str, Any]:
    """Attributes h5py can store: ``None`` dropped, paths as text, sequences as arrays."""
    out: dict[str, Any] = {}
    for key, value in attrs.items():
        if value is None:
            continue
        if isinstance(value, Path):
            value = str(value)
        if isinstance(value, list | tuple):
            value = np.asarray([str(v) for v in value]) if value else np.asarray([], dtype=str)
        out[str(key)] = value
    return out


@contextlib.contextmanager
def open_h5(path: str | Path, *, what: str, fix: str) -> Iterator[h5py.File]:
    """Open a contract file for reading; a missing, unreadable or malformed file (including a
    missing dataset while reading it) becomes one :class:`InputError`.

    Parameters
    ----------
    path
        The file.
    what
        What the file should be, e.g. ``"features file"``.
    fix
        What the user should do if it is not.
    """
    path = require_file(path, what=what, fix=fix)
    try:
        with h5py.File(path, "r") as f:
            yield f
    except (OSError, KeyError) as exc:
        raise InputError(path, f"is not a readable {what} ({exc})", fix) from exc


def require_file(path: str | Path, *, what: str, fix: str) -> Path:
    """``path`` as a Path, or one :class:`InputError` saying the ``what`` is not there."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, f"{what} not found", fix)
    return path


def format_stamp(contract: str, version: str) -> dict[str, str]:
    """The attribute that stamps a file as ``contract`` at ``version``."""
    return {FORMAT_ATTR: f"{contract}/{version}"}


#: The command that writes each contract's files: what to re-run for a file of another version.
WRITTEN_BY = {"tiles": "slide2expr tile", "features": "slide2expr extract",
              "dataset": "slide2expr join", "model": "slide2expr train",
              "predictions": "slide2expr train", "tilemaps": "slide2expr heatmap"}


def check_format(path: str | Path, attrs: Mapping[str, Any], contract: str,
                 supported: tuple[str, ...]) -> None:
    """Refuse a file stamped as another contract or an unsupported version of this one.

    Files written before format stamps existed carry none and are accepted as version 1.
    A refusal is one line naming the file, its version, the versions this slide2expr reads
    and the command to re-run with it (:func:`version_refusal`).
    """
    stamp = attrs.get(FORMAT_ATTR)
    if stamp is None:
        return
    name, _, version = str(stamp).partition("/")
    if name != contract:
        raise InputError(path, f"is a {name} file, not a {contract} file",
                         f"pass the {contract} file the workflow wrote")
    if version not in supported:
        raise version_refusal(path, contract, version, supported)


def version_refusal(path: str | Path, contract: str, version: str,
                    supported: tuple[str, ...]) -> InputError:
    """The error for a ``contract`` file at a ``version`` this slide2expr does not read: its
    version, what this slide2expr reads, and the command to re-run (a newer file may also be
    read with the slide2expr that wrote it)."""
    from slide2expr import __version__

    reads = ", ".join(f"{contract}/{v}" for v in supported)
    newer = version.isdigit() and all(v.isdigit() and int(version) > int(v) for v in supported)
    problem = (f"has {contract} format version {version}"
               f"{', from a newer slide2expr' if newer else ''}; "
               f"this slide2expr ({__version__}) reads {reads}")
    command = WRITTEN_BY.get(contract, "the stage that wrote it")
    fix = f"re-run `{command}` for it with this slide2expr (it writes {contract}/{supported[-1]})"
    if newer:
        fix += ", or read it with the slide2expr that wrote it"
    return InputError(path, problem, fix)
