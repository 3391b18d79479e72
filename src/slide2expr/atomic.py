"""Atomic file output: write to a temporary name, rename when complete.

A killed job therefore never leaves a file that looks finished, and a failed one leaves
nothing behind (docs/architecture.md, "Contracts").
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path


def temporary_sibling(path: Path) -> Path:
    """Return the temporary name used while ``path`` is being written.

    The suffix is kept so libraries that dispatch on it (h5py, PIL, anndata) still work.
    """
    return path.with_name(f".{path.stem}.partial-{os.getpid()}{path.suffix}")


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path; on success rename it to ``path``, on error remove it.

    Parameters
    ----------
    path
        The final output path. Its parent directory is created.

    Yields
    ------
    Path
        Where the caller writes the content.
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_sibling(final)
    try:
        yield tmp
        os.replace(tmp, final)
    except BaseException:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        raise


@contextlib.contextmanager
def atomic_outputs(*paths: str | os.PathLike[str]) -> Iterator[list[Path]]:
    """Like :func:`atomic_output` for several files that must appear together or not at all."""
    finals = [Path(p) for p in paths]
    tmps = [temporary_sibling(p) for p in finals]
    for p in finals:
        p.parent.mkdir(parents=True, exist_ok=True)
    try:
        yield tmps
        for tmp, final in zip(tmps, finals, strict=True):
            os.replace(tmp, final)
    except BaseException:
        for tmp in tmps:
            with contextlib.suppress(FileNotFoundError):
                if tmp.is_dir():
                    shutil.rmtree(tmp, ignore_errors=True)
                else:
                    tmp.unlink()
        raise
