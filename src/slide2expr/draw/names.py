"""File names of per-gene pictures: a gene symbol made safe and unique as a file name.

Heatmaps (``{sample}/{file name}.png``), the report's links to them and the viewer's gene
layers all name a gene's file with :func:`gene_filename`.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


def gene_filename(gene: str) -> str:
    """A file-name-safe, unique version of a gene symbol (without ``.png``).

    A symbol of letters, digits and ``._-`` is its own file name. Any other (``HLA/A``,
    ``HLA A``) has its other characters replaced by ``_`` and a short hash of the symbol
    appended (``HLA_A-3f2a9c1d``), so two symbols that differ only there never share a file.
    """
    gene = str(gene)
    name = _UNSAFE.sub("_", gene)
    if name == gene and name.strip("._"):
        return name
    if not name.strip("._"):
        name = f"gene_{name}"
    return f"{name}-{_short_hash(gene)}"


def gene_filenames(genes: Sequence[str]) -> dict[str, str]:
    """:func:`gene_filename` of each gene, also unique on case-insensitive file systems.

    Names that differ only in case (``Gene``, ``GENE``) get the hash too.
    """
    names = {g: gene_filename(g) for g in genes}
    folded: dict[str, list[str]] = {}
    for g, name in names.items():
        folded.setdefault(name.casefold(), []).append(g)
    for group in folded.values():
        if len(group) > 1:
            for g in group:
                if not names[g].endswith(f"-{_short_hash(g)}"):
                    names[g] = f"{names[g]}-{_short_hash(g)}"
    return names


def _short_hash(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:8]
