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
