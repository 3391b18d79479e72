"""File checksums: one sha256 for weights, inputs and run comparison."""

from __future__ import annotations

import hashlib
from pathlib import Path

_HASH_CACHE: dict[tuple[str, int, int], str] = {}


def sha256_file(path: str | Path, *, chunk: int = 1 << 22) -> str:
    """Return the hex sha256 of a file (cached per path, size and mtime)."""
    path = Path(path)
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _HASH_CACHE:
        digest = hashlib.sha256()
        with path.open("rb") as fh:
            while block := fh.read(chunk):
                digest.update(block)
        _HASH_CACHE[key] = digest.hexdigest()
    return _HASH_CACHE[key]


#: Bytes read from each end of a file by :func:`file_fingerprint`.
FINGERPRINT_BYTES = 1 << 20


def file_fingerprint(path: str | Path) -> str:
    """A quick identity of a (large) file: sha256 of its size, first and last MiB.

    Enough to tell one slide from another without reading gigabytes; a moved or copied file
    keeps it.
    """
    path = Path(path)
    size = path.stat().st_size
    digest = hashlib.sha256(str(size).encode())
    with path.open("rb") as fh:
        digest.update(fh.read(FINGERPRINT_BYTES))
        if size > FINGERPRINT_BYTES:
            fh.seek(max(FINGERPRINT_BYTES, size - FINGERPRINT_BYTES))
            digest.update(fh.read(FINGERPRINT_BYTES))
    return digest.hexdigest()
