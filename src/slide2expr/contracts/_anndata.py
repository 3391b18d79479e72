"""What every AnnData contract shares: reading with a one-line error, writing atomically."""

from __future__ import annotations

import io
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
    """Write ``adata`` as anndata's ``write_h5ad`` does, the ``uns['spatial']`` images
    gzip-compressed.

    The HDF5 file is built in memory and reaches ``path`` in one plain write, so a full disk
    fails as one :class:`OSError` (ENOSPC) at the first failed write. HDF5 itself never meets
    a failed write: after one it leaves its state broken and the interpreter crashed at exit
    (segmentation fault, exit 139, pages of HDF5 errors; issue 21). Everything is written as
    anndata writes it, and reads back the same.
    """
    import h5py

    buffer = io.BytesIO()
    with h5py.File(buffer, "w") as f:
        _write_anndata(f, adata)
    try:
        with open(path, "wb") as out:
            out.write(buffer.getbuffer())
    except OSError as exc:
        if exc.filename is None:  # a failed write names no file: name this one
            exc.filename = str(path)
        raise


def _write_anndata(f: Any, adata: Any) -> None:
    """``adata`` into the open HDF5 file ``f``, element by element as ``write_h5ad`` does."""
    import anndata as ad

    io_module = getattr(ad, "io", None)
    write_elem = io_module.write_elem if io_module is not None and hasattr(io_module, "write_elem") \
        else ad.experimental.write_elem
    adata.strings_to_categoricals()  # as write_h5ad does
    if adata.raw is not None:
        adata.strings_to_categoricals(adata.raw.var)
    f.attrs["encoding-type"] = "anndata"
    f.attrs["encoding-version"] = "0.1.0"
    if adata.X is not None:
        write_elem(f, "X", adata.X)
    if adata.raw is not None:
        write_elem(f, "raw", adata.raw)
    write_elem(f, "obs", adata.obs)
    write_elem(f, "var", adata.var)
    for name in ("obsm", "varm", "obsp", "varp", "layers"):
        write_elem(f, name, dict(getattr(adata, name)))
    uns = dict(adata.uns)
    spatial = uns.pop(Key.SPATIAL_UNS, None)
    write_elem(f, "uns", uns)
    if spatial is not None:
        write_elem(f["uns"], Key.SPATIAL_UNS, {k: dict(v) for k, v in spatial.items()},
                   dataset_kwargs={"compression": "gzip", "compression_opts": 1})
