"""Small helpers for delimited text files, shared by the expression and spot readers."""

from __future__ import annotations

import gzip
from pathlib import Path


def file_suffix(path: Path) -> str:
    """The format extension, ignoring a compression suffix (``x.tsv.gz`` -> ``.tsv``)."""
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] in (".gz", ".bz2", ".xz", ".zip"):
        suffixes = suffixes[:-1]
    return suffixes[-1] if suffixes else ""


def open_text(path: Path):
    """Open a text file for reading, gunzipping ``.gz`` transparently."""
    if path.suffix.lower() == ".gz":
        return gzip.open(path, "rt")
    return open(path)


def sniff_separator(path: Path) -> str:
    """Separator from the extension: ``,`` for .csv, tab for .tsv/.txt/.tab, sniffed otherwise."""
    suffix = file_suffix(path)
    if suffix == ".csv":
        return ","
    if suffix in (".tsv", ".txt", ".tab"):
        return "\t"
    with open_text(path) as fh:
        first = fh.readline()
    return "\t" if first.count("\t") >= first.count(",") else ","
