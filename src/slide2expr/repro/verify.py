"""Compare two runs' results and name every difference (``slide2expr verify``).

Two runs of the same config on the same inputs should give the same outputs. This module
walks two ``results/`` directories and compares every file by *content*:

- every ``report/**/genes.tsv`` must be **byte-identical** (the benchmark's headline output);
- ``.tsv``/``.csv`` tables: same columns and rows, every number exactly equal;
- ``.json``/``.geojson``: the same structure, every number exactly equal;
- ``.h5``/``.h5ad``/``.hdf5``: the same groups, datasets (shape, dtype, every value) and attrs;
- ``.safetensors``: the same tensors, every value; ``.png``: the same pixels;
- anything else byte for byte, except Lightning ``.ckpt`` files (training state that holds
  temporary paths; the weights are compared in ``head.safetensors``) and HTML pages (rendered
  from ``genes.tsv``/``summary.json``, which are compared).

What legitimately differs between two identical runs is ignored and listed as such: the
``logs/`` and ``benchmarks/`` folders, fields named like wall times or timestamps (``seconds``,
``wall_s``, ``start_time``, ``timings``, ...), and paths that differ only in their directory
(two runs in two working directories). ``rtol``/``atol`` allow a tolerance for runs that are not
bit-reproducible by design (GPU feature extraction with autocast); the default is exact.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from slide2expr.contracts._h5 import plain_attr
from slide2expr.errors import InputError
from slide2expr.hashing import sha256_file

log = logging.getLogger(__name__)

#: Folders of a results directory that hold per-run records, not results.
SKIPPED_DIRS = ("logs", "benchmarks")
#: Suffix -> why such files are not compared.
SKIPPED_SUFFIXES = {
    ".ckpt": "Lightning training state (holds temporary paths); weights are compared in "
             "head.safetensors",
    ".html": "page rendered from genes.tsv and summary.json, which are compared",
    ".log": "log",
}
#: Field / column / attribute names whose values are wall times, timestamps or hosts.
VOLATILE_NAME = re.compile(
    r"^(wall|seconds|elapsed|duration|timestamp|timings)([_ .:-].*)?$"
    r"|^(time|date|created|hostname|host|cwd|workdir|start|end|started|finished|tiles_per_s|"
    r"max_rss|max_vms|max_uss|max_pss|io_in|io_out|mean_load|h:m:s|s)$"
    r"|.*_(seconds|time|wall_s|per_s)$",
    re.IGNORECASE,
)
#: Files that must be byte-identical, not just equal in content.
BYTE_IDENTICAL = re.compile(r"(^|/)report/(.+/)?genes\.tsv$")


def is_volatile(name: str) -> bool:
    """Whether a field, column or attribute called ``name`` legitimately differs per run."""
    return bool(VOLATILE_NAME.match(str(name)))


@dataclass(frozen=True)
class Difference:
    """One difference between the two runs.

    Attributes
    ----------
    path
        The file, relative to the results directory.
    where
        The place inside the file (a column and row, a JSON key path, an HDF5 object); empty
        for the file as a whole.
    detail
        What differs, with both values where they are short.
    """

    path: str
    where: str
    detail: str

    def __str__(self) -> str:
        where = f" [{self.where}]" if self.where else ""
        return f"{self.path}{where}: {self.detail}"


@dataclass
class VerifyResult:
    """The outcome of :func:`verify_runs`."""

    run_a: Path
    run_b: Path
    differences: list[Difference] = field(default_factory=list)
    compared: dict[str, str] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    ignored: list[str] = field(default_factory=list)

    @property
    def identical(self) -> bool:
        """True when no difference was found."""
        return not self.differences

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form (``slide2expr verify --json``)."""
        return {
            "run_a": str(self.run_a), "run_b": str(self.run_b), "identical": self.identical,
            "differences": [vars(d) for d in self.differences],
            "compared": self.compared, "skipped": self.skipped, "ignored": self.ignored,
        }


class _Collector:
    """Gathers differences of one file, capped so a wholesale change stays readable."""

    def __init__(self, result: VerifyResult, path: str, *, max_shown: int) -> None:
        self.result, self.path, self.max_shown = result, path, max_shown
        self.count = 0

    def add(self, where: str, detail: str) -> None:
        self.count += 1
        if self.count <= self.max_shown:
            self.result.differences.append(Difference(self.path, where, detail))

    def ignore(self, where: str) -> None:
        self.result.ignored.append(f"{self.path} [{where}]")

    def close(self) -> None:
        if self.count > self.max_shown:
            self.result.differences.append(Difference(
                self.path, "", f"... and {self.count - self.max_shown} more difference(s)"))


def resolve_results_dir(path: str | Path) -> Path:
    """``path`` itself, or ``path/results`` when ``path`` is a run's working directory."""
    path = Path(path)
    if not path.is_dir():
        raise InputError(path, "is not a directory", "pass two results directories "
                         "(or the working directories that hold them)")
    inner = path / "results"
    if inner.is_dir() and not (path / "report").is_dir():
        return inner
    return path


def _per_run_record(parts: list[str]) -> bool:
    """Whether a file lies in a ``logs/`` or ``benchmarks/`` folder at any depth (a nested
    run's, e.g. the bulk benchmark's ``ceiling/``, included)."""
    return any(part in SKIPPED_DIRS for part in parts[:-1])


def _skipped_record_dirs(root: Path) -> set[str]:
    """The ``logs/`` and ``benchmarks/`` folders under ``root``, relative, at any depth."""
    found = set()
    for name in SKIPPED_DIRS:
        for folder in root.rglob(name):
            parts = folder.relative_to(root).parts
            if folder.is_dir() and not any(part in SKIPPED_DIRS for part in parts[:-1]):
                found.add("/".join(parts))
    return found


def _files(root: Path) -> dict[str, Path]:
    out = {}
    for p in sorted(root.rglob("*")):
        if not p.is_file():
            continue
        rel = p.relative_to(root).as_posix()
        parts = rel.split("/")
        if _per_run_record(parts) or any(part.startswith(".") for part in parts):
            continue
        out[rel] = p
    return out


def verify_runs(run_a: str | Path, run_b: str | Path, *, rtol: float = 0.0, atol: float = 0.0,
                max_shown: int = 10) -> VerifyResult:
    """Compare two results directories file by file.

    Parameters
    ----------
    run_a, run_b
        Two ``results/`` directories, or the working directories that contain them.
    rtol, atol
        Tolerance for numbers (``|a - b| <= atol + rtol * |b|``); 0 = exactly equal. Does not
        apply to the files that must be byte-identical.
    max_shown
        At most this many differences are named per file (then a count of the rest).

    Returns
    -------
    VerifyResult
        Differences, and which files were compared, skipped and which fields ignored.

    Raises
    ------
    InputError
        If either path is not a directory.
    """
    a_root, b_root = resolve_results_dir(run_a), resolve_results_dir(run_b)
    result = VerifyResult(a_root, b_root)
    files_a, files_b = _files(a_root), _files(b_root)
    for rel in sorted(set(files_a) - set(files_b)):
        result.differences.append(Difference(rel, "", f"only in {a_root}"))
    for rel in sorted(set(files_b) - set(files_a)):
        result.differences.append(Difference(rel, "", f"only in {b_root}"))
    for rel in sorted(set(files_a) & set(files_b)):
        collector = _Collector(result, rel, max_shown=max_shown)
        how = compare_files(files_a[rel], files_b[rel], rel=rel, out=collector, rtol=rtol,
                            atol=atol)
        collector.close()
        if how.startswith("skipped: "):
            result.skipped[rel] = how.removeprefix("skipped: ")
        else:
            result.compared[rel] = how
    for rel in sorted(_skipped_record_dirs(a_root) | _skipped_record_dirs(b_root)):
        result.skipped[f"{rel}/"] = "per-run records (logs, wall times)"
    log.info("%d files compared, %d skipped, %d differences", len(result.compared),
             len(result.skipped), len(result.differences))
    return result




def compare_files(a: Path, b: Path, *, rel: str, out: _Collector, rtol: float = 0.0,
                  atol: float = 0.0) -> str:
    """Compare one pair of files; return how they were compared (or why skipped)."""
    name = a.name.lower()
    suffix = "".join(PurePosixPath(name).suffixes[-2:]) if name.endswith(".gz") else a.suffix.lower()
    same_bytes = a.stat().st_size == b.stat().st_size and sha256_file(a) == sha256_file(b)
    if BYTE_IDENTICAL.search(rel):
        if not same_bytes:
            out.add("", "not byte-identical")
            _compare_table(a, b, out, rtol=0.0, atol=0.0)
        return "bytes"
    if suffix in SKIPPED_SUFFIXES:
        return f"skipped: {SKIPPED_SUFFIXES[suffix]}"
    if same_bytes:
        return "bytes"
    if suffix in (".tsv", ".csv", ".tsv.gz", ".csv.gz"):
        _compare_table(a, b, out, rtol=rtol, atol=atol)
        return "table"
    if suffix in (".json", ".geojson"):
        _compare_json(a, b, out, rtol=rtol, atol=atol)
        return "json"
    if suffix in (".h5", ".h5ad", ".hdf5"):
        _compare_h5(a, b, out, rtol=rtol, atol=atol)
        return "hdf5"
    if suffix == ".safetensors":
        _compare_safetensors(a, b, out, rtol=rtol, atol=atol)
        return "tensors"
    if suffix == ".png":
        _compare_image(a, b, out)
        return "pixels"
    out.add("", f"bytes differ ({a.stat().st_size} vs {b.stat().st_size} bytes)")
    return "bytes"


# -- values ---------------------------------------------------------------------------------

def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _looks_like_path(value: str) -> bool:
    return "/" in value or "\\" in value


def _same_path_elsewhere(a: str, b: str) -> bool:
    """Two paths that differ only in their directory (runs in different folders)."""
    return (_looks_like_path(a) or _looks_like_path(b)) and \
        PurePosixPath(a.replace("\\", "/")).name == PurePosixPath(b.replace("\\", "/")).name


def _numbers_equal(a: float, b: float, *, rtol: float, atol: float) -> bool:
    if math.isnan(a) and math.isnan(b):
        return True
    if a == b:
        return True
    return (rtol > 0 or atol > 0) and math.isfinite(a) and math.isfinite(b) and \
        abs(a - b) <= atol + rtol * abs(b)


def _compare_scalar(a: Any, b: Any, where: str, out: _Collector, *, rtol: float,
                    atol: float) -> None:
    if isinstance(a, bool) or isinstance(b, bool) or a is None or b is None:
        if a != b or type(a) is not type(b):
            out.add(where, f"{_short(a)} vs {_short(b)}")
        return
    if isinstance(a, int | float) and isinstance(b, int | float):
        if not _numbers_equal(float(a), float(b), rtol=rtol, atol=atol):
            out.add(where, f"{a!r} vs {b!r}")
        return
    if isinstance(a, str) and isinstance(b, str):
        if a != b:
            if _same_path_elsewhere(a, b):
                out.ignore(where)
            else:
                out.add(where, f"{_short(a)} vs {_short(b)}")
        return
    if a != b:
        out.add(where, f"{_short(a)} vs {_short(b)}")


def _compare_arrays(a: np.ndarray, b: np.ndarray, where: str, out: _Collector, *, rtol: float,
                    atol: float, labels: np.ndarray | None = None) -> None:
    """Element-wise comparison of two arrays of the same kind."""
    if a.shape != b.shape:
        out.add(where, f"shape {a.shape} vs {b.shape}")
        return
    if a.dtype.kind in "biuf" and b.dtype.kind in "biuf":
        fa, fb = a.astype(np.float64, copy=False), b.astype(np.float64, copy=False)
        if rtol > 0 or atol > 0:
            equal = np.isclose(fa, fb, rtol=rtol, atol=atol, equal_nan=True)
        else:
            equal = (fa == fb) | (np.isnan(fa) & np.isnan(fb))
        if a.dtype != b.dtype:
            out.add(where, f"dtype {a.dtype} vs {b.dtype}")
        if not equal.all():
            bad = np.argwhere(~equal)
            first = tuple(int(i) for i in bad[0])
            with np.errstate(invalid="ignore"):
                gap = np.nanmax(np.abs(fa - fb)[~equal]) if np.isfinite(fa[~equal]).any() else np.nan
            label = "" if labels is None else f" ({labels[first[0]]})"
            out.add(where, f"{len(bad)} of {a.size} values differ (max |diff| {gap:.3g}); "
                    f"first at {first}{label}: {fa[first]!r} vs {fb[first]!r}")
        return
    sa, sb = _as_str(a), _as_str(b)
    unequal = sa != sb
    if unequal.any():
        idx = [tuple(int(i) for i in ix) for ix in np.argwhere(unequal)]
        real = [ix for ix in idx if not _same_path_elsewhere(str(sa[ix]), str(sb[ix]))]
        if len(real) < len(idx):
            out.ignore(where)
        if real:
            out.add(where, f"{len(real)} of {a.size} values differ; first at {real[0]}: "
                    f"{_short(sa[real[0]])} vs {_short(sb[real[0]])}")


def _as_str(a: np.ndarray) -> np.ndarray:
    if a.dtype.kind == "S":
        return np.char.decode(a, "utf-8", errors="replace").astype(object)
    if a.dtype.kind == "O":
        return np.vectorize(lambda v: v.decode("utf-8", "replace") if isinstance(v, bytes)
                            else str(v), otypes=[object])(a) if a.size else a
    return a.astype(str).astype(object)


# -- tables ---------------------------------------------------------------------------------

def _compare_table(a: Path, b: Path, out: _Collector, *, rtol: float, atol: float) -> None:
    import pandas as pd

    sep = "," if ".csv" in a.name.lower() else "\t"
    try:
        ta = pd.read_csv(a, sep=sep, dtype=str, keep_default_na=False)
        tb = pd.read_csv(b, sep=sep, dtype=str, keep_default_na=False)
    except Exception as exc:  # not a table after all
        out.add("", f"bytes differ and the file does not parse as a table ({exc})")
        return
    if list(ta.columns) != list(tb.columns):
        only_a = [c for c in ta.columns if c not in tb.columns]
        only_b = [c for c in tb.columns if c not in ta.columns]
        out.add("columns", f"only in A: {only_a}; only in B: {only_b}" if only_a or only_b
                else f"same columns in another order: {list(ta.columns)} vs {list(tb.columns)}")
    if len(ta) != len(tb):
        out.add("rows", f"{len(ta)} vs {len(tb)} rows")
    key = ta.columns[0] if len(ta.columns) else None
    n = min(len(ta), len(tb))
    for col in [c for c in ta.columns if c in tb.columns]:
        if is_volatile(col):
            if not ta[col].iloc[:n].equals(tb[col].iloc[:n]):
                out.ignore(f"column {col}")
            continue
        va, vb = ta[col].to_numpy()[:n], tb[col].to_numpy()[:n]
        diff = np.flatnonzero(va != vb)
        for i in diff:
            x, y = va[i], vb[i]
            na, nb = pd.to_numeric(pd.Series([x, y]), errors="coerce")
            if not (math.isnan(na) or math.isnan(nb)):
                if _numbers_equal(float(na), float(nb), rtol=rtol, atol=atol):
                    continue
            elif _same_path_elsewhere(x, y):
                out.ignore(f"column {col}")
                continue
            row = f"{key}={ta[key].iloc[i]}" if key is not None and key != col else f"row {i + 2}"
            out.add(f"{row}, column {col}", f"{x} vs {y}")


# -- JSON -----------------------------------------------------------------------------------

def _compare_json(a: Path, b: Path, out: _Collector, *, rtol: float, atol: float) -> None:
    try:
        ja = json.loads(a.read_text(encoding="utf-8"))
        jb = json.loads(b.read_text(encoding="utf-8"))
    except ValueError as exc:
        out.add("", f"bytes differ and the file is not valid JSON ({exc})")
        return
    _compare_tree(ja, jb, "", out, rtol=rtol, atol=atol)


def _compare_tree(a: Any, b: Any, where: str, out: _Collector, *, rtol: float,
                  atol: float) -> None:
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b), key=str):
            sub = f"{where}.{k}" if where else str(k)
            if is_volatile(k):
                if a.get(k) != b.get(k):
                    out.ignore(sub)
                continue
            if k not in b:
                out.add(sub, "only in A")
            elif k not in a:
                out.add(sub, "only in B")
            else:
                _compare_tree(a[k], b[k], sub, out, rtol=rtol, atol=atol)
        return
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            out.add(where, f"{len(a)} vs {len(b)} items")
        for i, (x, y) in enumerate(zip(a, b, strict=False)):
            _compare_tree(x, y, f"{where}[{i}]", out, rtol=rtol, atol=atol)
        return
    if isinstance(a, dict | list) or isinstance(b, dict | list):
        out.add(where, f"{type(a).__name__} vs {type(b).__name__}")
        return
    _compare_scalar(a, b, where, out, rtol=rtol, atol=atol)


# -- HDF5 (features, tiles, AnnData) --------------------------------------------------------

def _h5_objects(f: Any) -> dict[str, Any]:
    import h5py

    objects: dict[str, Any] = {"/": f}

    def visit(name: str, obj: Any) -> None:
        if isinstance(obj, h5py.Group | h5py.Dataset):
            objects[name] = obj

    f.visititems(visit)
    return objects


def _compare_h5(a: Path, b: Path, out: _Collector, *, rtol: float, atol: float) -> None:
    import h5py

    try:
        fa, fb = h5py.File(a, "r"), h5py.File(b, "r")
    except OSError as exc:
        out.add("", f"bytes differ and the file does not open as HDF5 ({exc})")
        return
    with fa, fb:
        oa, ob = _h5_objects(fa), _h5_objects(fb)
        for name in sorted(set(oa) | set(ob)):
            parts = name.strip("/").split("/")
            if any(is_volatile(p) for p in parts if p):
                out.ignore(name)
                continue
            if name not in ob:
                out.add(name, "only in A")
                continue
            if name not in oa:
                out.add(name, "only in B")
                continue
            x, y = oa[name], ob[name]
            if isinstance(x, h5py.Dataset) != isinstance(y, h5py.Dataset):
                out.add(name, "a dataset in one file, a group in the other")
                continue
            _compare_attrs(x.attrs, y.attrs, name, out, rtol=rtol, atol=atol)
            if isinstance(x, h5py.Dataset):
                _compare_dataset(x, y, name, out, rtol=rtol, atol=atol)


def _compare_attrs(a: Any, b: Any, name: str, out: _Collector, *, rtol: float,
                   atol: float) -> None:
    for key in sorted(set(a) | set(b)):
        where = f"{name} attr {key}"
        if is_volatile(key):
            out.ignore(where)
            continue
        if key not in b or key not in a:
            out.add(where, "only in A" if key not in b else "only in B")
            continue
        va, vb = plain_attr(a[key]), plain_attr(b[key])
        if isinstance(va, np.ndarray) or isinstance(vb, np.ndarray):
            _compare_arrays(np.asarray(va), np.asarray(vb), where, out, rtol=rtol, atol=atol)
        else:
            _compare_scalar(va, vb, where, out, rtol=rtol, atol=atol)


def _compare_dataset(x: Any, y: Any, name: str, out: _Collector, *, rtol: float,
                     atol: float) -> None:
    if x.shape != y.shape:
        out.add(name, f"shape {x.shape} vs {y.shape}")
        return
    if x.shape is None:  # an empty dataset (h5py.Empty: how anndata stores None): no values
        if x.dtype != y.dtype:
            out.add(name, f"empty dataset of dtype {x.dtype} vs {y.dtype}")
        return
    for start, stop in _chunks(x.shape[0] if x.shape else 1, x.size):
        va = x[()] if not x.shape else x[start:stop]
        vb = y[()] if not y.shape else y[start:stop]
        va, vb = np.asarray(va), np.asarray(vb)
        if va.ndim == 0:
            _compare_scalar(plain_attr(va[()]), plain_attr(vb[()]), name, out, rtol=rtol,
                            atol=atol)
            return
        before = out.count
        _compare_arrays(va, vb, name if start == 0 else f"{name} rows {start}:{stop}", out,
                        rtol=rtol, atol=atol)
        if out.count > before:
            return  # one message per dataset is enough


def _chunks(n_rows: int, size: int, *, budget: int = 1 << 24) -> Iterator[tuple[int, int]]:
    """Row ranges that keep each read under ``budget`` elements."""
    per_row = max(1, size // max(1, n_rows))
    step = max(1, budget // per_row)
    for start in range(0, max(n_rows, 1), step):
        yield start, min(n_rows, start + step)


# -- tensors and images ---------------------------------------------------------------------

def _compare_safetensors(a: Path, b: Path, out: _Collector, *, rtol: float, atol: float) -> None:
    from safetensors.numpy import load_file

    try:
        ta, tb = load_file(str(a)), load_file(str(b))
    except Exception as exc:  # any parse failure is reported as a difference
        out.add("", f"bytes differ and the file does not load as safetensors ({exc})")
        return
    for key in sorted(set(ta) | set(tb)):
        if key not in tb or key not in ta:
            out.add(key, "only in A" if key not in tb else "only in B")
            continue
        _compare_arrays(ta[key], tb[key], key, out, rtol=rtol, atol=atol)
    if not out.count:
        out.ignore("header metadata")


def _compare_image(a: Path, b: Path, out: _Collector) -> None:
    from PIL import Image

    with Image.open(a) as ia, Image.open(b) as ib:
        pa, pb = np.asarray(ia.convert("RGBA")), np.asarray(ib.convert("RGBA"))
    if pa.shape != pb.shape:
        out.add("", f"image size {pa.shape[1]}x{pa.shape[0]} vs {pb.shape[1]}x{pb.shape[0]}")
    elif not np.array_equal(pa, pb):
        n = int(np.any(pa != pb, axis=-1).sum())
        out.add("", f"{n} of {pa.shape[0] * pa.shape[1]} pixels differ")
    else:
        out.ignore("PNG metadata")
