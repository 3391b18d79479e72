"""Atomic file output: write to a temporary name, rename when complete.

A killed job therefore never leaves a file that looks finished, and a failed one leaves
nothing behind (docs/architecture.md, "Contracts").

Temporary names follow one recognisable pattern, ``.{stem}.partial-{host}-{pid}{suffix}``
beside the output, so that a job killed with SIGKILL (which no ``finally`` survives) leaves
a file that says whose it was: the next run of the same output removes those of its own
host whose process is gone (:func:`remove_stale_temporaries`). Temporaries of another host
(a shared file system under SLURM) are left alone, as their process cannot be checked.

A disk or permission fault while writing (full disk, read-only or unwritable folder) is
raised as one :class:`~slide2expr.errors.EnvironmentFault` naming the output.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import socket
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path

from slide2expr.errors import environment_fault

log = logging.getLogger(__name__)

#: ``.{stem}.partial-{host}-{pid}{suffix}``: any temporary this module names.
TEMPORARY_PATTERN = re.compile(r"^\.(?P<stem>.+)\.partial-(?P<host>[A-Za-z0-9-]+)-(?P<pid>\d+)"
                               r"(?P<suffix>\.[^.]*)?$")


@lru_cache(maxsize=1)
def _host() -> str:
    name = re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname().split(".")[0])[:32]
    return name or "host"


def temporary_sibling(path: Path) -> Path:
    """Return the temporary name used while ``path`` is being written.

    ``.{stem}.partial-{host}-{pid}{suffix}``: the suffix is kept so libraries that dispatch
    on it (h5py, PIL, anndata) still work. A path that already is one of this process's
    temporaries is returned unchanged, so nested atomic writes never double the name.
    """
    path = Path(path)
    if is_own_temporary(path):
        return path
    return path.with_name(f".{path.stem}.partial-{_host()}-{os.getpid()}{path.suffix}")


def is_own_temporary(path: Path) -> bool:
    """Whether ``path`` is a temporary name of this very process."""
    m = TEMPORARY_PATTERN.match(Path(path).name)
    return bool(m) and m["host"] == _host() and int(m["pid"]) == os.getpid()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def stale_temporaries(path: str | os.PathLike[str]) -> list[Path]:
    """Temporaries of ``path`` left by processes of this host that no longer run."""
    final = Path(path)
    if not final.parent.is_dir():
        return []
    exact = re.compile(re.escape(f".{final.stem}.partial-") + r"(?P<host>[A-Za-z0-9-]+)-(?P<pid>\d+)"
                       + re.escape(final.suffix) + "$")
    out = []
    for candidate in final.parent.glob(f".{glob_escape(final.stem)}.partial-*"):
        m = exact.match(candidate.name)
        if m and m["host"] == _host() and int(m["pid"]) != os.getpid() \
                and not _alive(int(m["pid"])):
            out.append(candidate)
    return sorted(out)


def glob_escape(text: str) -> str:
    """``text`` with glob metacharacters escaped."""
    return re.sub(r"([*?\[])", r"[\1]", text)


def remove_stale_temporaries(path: str | os.PathLike[str]) -> list[Path]:
    """Remove the temporaries of ``path`` whose writer was killed; return what was removed."""
    removed = stale_temporaries(path)
    for tmp in removed:
        _remove(tmp)
        log.info("removed %s, left by a killed run", tmp)
    return removed


def _remove(tmp: Path) -> None:
    if tmp.is_dir() and not tmp.is_symlink():
        shutil.rmtree(tmp, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):  # absent; or on a read-only folder, never written
            tmp.unlink()


def _prepare(final: Path) -> None:
    """Create the output's folder and remove its stale temporaries (faults: one line)."""
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(final)
    except OSError as exc:
        fault = environment_fault(exc, final)
        if fault is None:
            raise
        raise fault from exc


def _as_fault(exc: BaseException, finals: list[Path], tmps: list[Path]) -> BaseException:
    """``exc`` as an EnvironmentFault naming the output when it is a disk or permission fault.

    The output named is the one whose temporary the error names, else the only output, else
    their folder; an error about some other file (an input) names that file.
    """
    if not isinstance(exc, Exception):
        return exc
    filename = getattr(exc, "filename", None)
    named = None if filename is None else Path(filename)
    if named is not None and named in tmps:
        path: Path | None = finals[tmps.index(named)]
    elif named is None or named in finals or named in {p.parent for p in finals}:
        path = finals[0] if len(finals) == 1 else finals[0].parent
    else:
        path = None  # environment_fault takes the error's own file name
    fault = environment_fault(exc, path)
    return exc if fault is None else fault


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

    Raises
    ------
    EnvironmentFault
        On a full disk or an unwritable folder (nothing is left behind).
    """
    final = Path(path)
    if is_own_temporary(final):  # nested in an outer atomic write, which renames
        yield final
        return
    with atomic_outputs(final) as (tmp,):
        yield tmp


@contextlib.contextmanager
def atomic_outputs(*paths: str | os.PathLike[str]) -> Iterator[list[Path]]:
    """Like :func:`atomic_output` for several files that must appear together or not at all."""
    finals = [Path(p) for p in paths]
    tmps = [temporary_sibling(p) for p in finals]
    for p in finals:
        _prepare(p)
    try:
        yield tmps
        for tmp, final in zip(tmps, finals, strict=True):
            os.replace(tmp, final)
    except BaseException as exc:
        for tmp in tmps:
            _remove(tmp)
        fault = _as_fault(exc, finals, tmps)
        if fault is exc:
            raise
        raise fault from exc
