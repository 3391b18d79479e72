"""What every AnnData contract shares: reading with a one-line error, writing atomically."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from slide2expr.atomic import atomic_output
from slide2expr.contracts._h5 import require_file
from slide2expr.errors import InputError
from slide2expr.keys import Key


def read_anndata(path: str | Path, *, what: str, fix: str, images: bool = True) -> Any:
    """Read an ``.h5ad``; a missing or unreadable file becomes one :class:`InputError`.

    Parameters
    ----------
    path
        The file.
    what
        What it should be (``"predictions file"``), for the message.
    fix
        What the user should do if it is not.
    images
        False: leave out the ``uns['spatial'][library]['images']`` (each library's
        ``images`` is read as ``{}``). They are most of a small dataset's bytes and take ~8x
        longer to decompress than the rest; readers that need no H&E image skip them.
    """
    import anndata as ad

    path = require_file(path, what=what, fix=fix)
    try:
        return ad.read_h5ad(path) if images else _read_without_images(path)
    except Exception as exc:  # anndata/h5py raise many types
        raise InputError(path, f"is not a readable {what} ({type(exc).__name__}: {exc})",
                         fix) from exc


def _read_without_images(path: Path) -> Any:
    """``anndata.read_h5ad`` that reads every ``uns/spatial/*/images`` group as ``{}``."""
    import h5py
    from anndata.experimental import read_dispatched

    prefix = f"/uns/{Key.SPATIAL_UNS}/"

    def callback(read: Any, name: str, elem: Any, iospec: Any) -> Any:
        if name.startswith(prefix) and name.endswith("/images") and name.count("/") == 4:
            return {}
        return read(elem)

    with h5py.File(path, "r") as f:
        return read_dispatched(f, callback)


def write_anndata(adata: Any, path: str | Path) -> Path:
    """Write ``adata`` to ``path`` atomically (nothing is left behind on failure), the
    ``uns['spatial']`` images gzip-compressed (they are most of a small dataset's bytes)."""
    path = Path(path)
    with atomic_output(path) as tmp:
        write_h5ad(adata, tmp)
    return path


def write_h5ad(adata: Any, path: str | Path) -> None:
    """``adata.write_h5ad(path)`` with the ``uns['spatial']`` images gzip-compressed.

    Everything else is written as anndata writes it, and reads back the same.
    """
    import anndata as ad
    import h5py

    spatial = adata.uns.pop(Key.SPATIAL_UNS, None)
    try:
        adata.write_h5ad(path)
    finally:
        if spatial is not None:
            adata.uns[Key.SPATIAL_UNS] = spatial
    if spatial is None:
        return
    io = getattr(ad, "io", None)
    write_elem = io.write_elem if io is not None and hasattr(io, "write_elem") \
        else ad.experimental.write_elem
    with h5py.File(path, "r+") as f:
        write_elem(f["uns"], Key.SPATIAL_UNS, {k: dict(v) for k, v in spatial.items()},
                   dataset_kwargs={"compression": "gzip", "compression_opts": 1})
