"""What every AnnData contract shares: reading with a one-line error, writing atomically."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from slide2expr.atomic import atomic_output
from slide2expr.errors import InputError


def read_anndata(path: str | Path, *, what: str, fix: str) -> Any:
    """Read an ``.h5ad``; a missing or unreadable file becomes one :class:`InputError`.

    Parameters
    ----------
    path
        The file.
    what
        What it should be (``"predictions file"``), for the message.
    fix
        What the user should do if it is not.
    """
    import anndata as ad

    path = Path(path)
    if not path.is_file():
        raise InputError(path, f"{what} not found", fix)
    try:
        return ad.read_h5ad(path)
    except Exception as exc:  # anndata/h5py raise many types
        raise InputError(path, f"is not a readable {what} ({type(exc).__name__}: {exc})",
                         fix) from exc


def write_anndata(adata: Any, path: str | Path) -> Path:
    """Write ``adata`` to ``path`` atomically (nothing is left behind on failure)."""
    path = Path(path)
    with atomic_output(path) as tmp:
        adata.write_h5ad(tmp)
    return path
