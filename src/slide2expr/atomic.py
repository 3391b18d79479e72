"""Atomic file output: write to a temporary name, rename when complete.

A killed job therefore never leaves a file that looks finished, and a failed one leaves
nothing behind (docs/architecture.md, "Contracts").

Temporary names follow one recognisable pattern, ``.{stem}.partial-{host}-{pid}{suffix}``
beside the output, so that a job killed with SIGKILL (which no ``finally`` survives) leaves
a file that says whose it was: the next run of the same output removes those of its own
host whose process is gone (:func:`remove_stale_temporaries`). Temporaries of another host
(a shared file system under SLURM) are left alone, as their process cannot be checked.

A disk or permission fault while writing (full disk, read-only or unwritable folder) is
raised as one :class:`~slide2expr.errors.EnvironmentFault` naming the output the user asked
for (never the hidden temporary).

**One writer per output.** Each output is locked while it is written (:func:`output_lock`:
``fcntl.flock`` on ``.{name}.lock`` beside it, removed when done). A second run writing the
same output does not wait: it stops at once with one line naming the first run's process
(:class:`~slide2expr.errors.OutputBusy`, status 1), so a published file is always the
complete work of one run. Outputs written inside a temporary of this process (a fold folder
being built) need no lock of their own.

**Folders are replaced only when slide2expr made them.** An output that is a folder
(models, viewer, heatmap folders, a zarr store) is built in its temporary and carries the
marker file :data:`FOLDER_MARKER`; an existing folder at its name is replaced only if it
carries that marker or is empty (:func:`check_replaceable`). Any other folder is refused
before any work, with one line (:class:`~slide2expr.errors.ForeignFolder`, status 2): the
user's files are never emptied.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import re
import shutil
import socket
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path

from slide2expr.errors import EnvironmentFault, ForeignFolder, OutputBusy, environment_fault

log = logging.getLogger(__name__)

#: The file that marks a folder as written by slide2expr, so that a rerun may replace it.
FOLDER_MARKER = ".slide2expr-output"
_MARKER_TEXT = ("This folder was written by slide2expr. A rerun of the same command replaces "
                "it whole;\nslide2expr never replaces a folder without this file.\n")

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
    """Temporaries of ``path`` left by processes of this host that no longer run (also the
    old folder a killed run had moved aside, ``.{stem}.replaced-{host}-{pid}``)."""
    final = Path(path)
    if not final.parent.is_dir():
        return []
    exact = re.compile(re.escape(f".{final.stem}.") + r"(?:partial|replaced)-"
                       r"(?P<host>[A-Za-z0-9-]+)-(?P<pid>\d+)" + re.escape(final.suffix) + "$")
    out = []
    for candidate in final.parent.glob(f".{glob_escape(final.stem)}.*-*"):
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


# -- folders: who may replace them -------------------------------------------------------

def mark_folder(folder: str | os.PathLike[str]) -> None:
    """Write :data:`FOLDER_MARKER` into ``folder``: slide2expr made it and may replace it."""
    (Path(folder) / FOLDER_MARKER).write_text(_MARKER_TEXT, encoding="utf-8")


def check_replaceable(folder: str | os.PathLike[str], *, option: str | None = None) -> None:
    """Refuse, before any work, to replace ``folder`` unless slide2expr made it.

    The one rule for every output folder: an absent path or an empty folder may be written;
    an existing folder only if it carries :data:`FOLDER_MARKER`. A non-empty folder without
    it (the user's files, an input), a file or a symbolic link is refused.

    Parameters
    ----------
    folder
        The output folder about to be written (and replaced whole).
    option
        The command-line option that names it, for the fix (default: "the output").

    Raises
    ------
    ForeignFolder
        When ``folder`` holds files that slide2expr did not write.
    """
    folder = Path(folder)
    where = option or "the output"
    fix = f"pass a new or empty folder as {where} (slide2expr never empties a folder it did not make)"
    if folder.is_symlink():
        raise ForeignFolder(folder, "is a symbolic link, which slide2expr does not replace",
                            f"pass the folder itself, or a new folder, as {where}")
    if not folder.exists():
        return
    if not folder.is_dir():
        raise ForeignFolder(folder, "is a file, not a folder slide2expr wrote", fix)
    if (folder / FOLDER_MARKER).is_file():
        return
    entries = sorted(p.name for p in folder.iterdir())
    if entries:
        shown = ", ".join(entries[:3]) + (f" and {len(entries) - 3} more" if len(entries) > 3 else "")
        raise ForeignFolder(folder, f"holds files that slide2expr did not write ({shown}); "
                            f"it has no {FOLDER_MARKER} marker", fix)


def _replace_folder(tmp: Path, final: Path) -> None:
    """Put the finished folder ``tmp`` (marked) in the place of ``final``."""
    mark_folder(tmp)
    if not final.exists() and not final.is_symlink():
        os.replace(tmp, final)
        return
    check_replaceable(final)  # again: something may have appeared since the start
    aside = final.with_name(f".{final.stem}.replaced-{_host()}-{os.getpid()}{final.suffix}")
    _remove(aside)
    os.replace(final, aside)
    try:
        os.replace(tmp, final)
    except BaseException:
        os.replace(aside, final)
        raise
    _remove(aside)


# -- one writer per output -------------------------------------------------------------------

def lock_path(path: str | os.PathLike[str]) -> Path:
    """The lock file of an output: ``.{name}.lock`` beside it."""
    path = Path(path)
    return path.with_name(f".{path.name}.lock")


#: Outputs whose lock this process holds (a nested ``output_lock`` of one is a no-op).
_HELD: set[Path] = set()


def _inside_own_temporary(path: Path) -> bool:
    return any(is_own_temporary(p) for p in (path, *path.parents))


@contextlib.contextmanager
def output_lock(path: str | os.PathLike[str]) -> Iterator[None]:
    """Hold the lock of output ``path`` while it is written; refuse if another run holds it.

    ``fcntl.flock`` on :func:`lock_path`, which records the holder (``pid host``) and is
    removed on release. The kernel drops the lock of a killed process, so a stale lock file
    never blocks. Paths inside a temporary of this process are private and not locked; a
    lock this process holds already is held again at no cost (a command takes it before
    slow set-up, the writer again).

    Raises
    ------
    OutputBusy
        At once, naming the process that writes ``path`` now (the second run does not wait).
    """
    final = Path(path)
    key = Path(os.path.abspath(final))
    if _inside_own_temporary(final) or key in _HELD:
        yield
        return
    lock = lock_path(final)
    made = [p for p in (final.parent, *final.parent.parents) if not p.exists()]
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        fd = _acquire(lock, final)
    except OSError as exc:
        _remove_empty(made)
        fault = environment_fault(exc, final)
        if fault is None:
            raise
        raise fault from exc
    _HELD.add(key)
    try:
        yield
    finally:
        _HELD.discard(key)
        with contextlib.suppress(OSError):
            lock.unlink()  # before closing: a run waiting on this inode sees it is gone
        os.close(fd)
        _remove_empty(made)  # folders made for an output that never came


def _remove_empty(folders: list[Path]) -> None:
    """Remove those of ``folders`` (deepest first) that are empty."""
    for folder in folders:
        with contextlib.suppress(OSError):
            folder.rmdir()


def _acquire(lock: Path, final: Path) -> int:
    """Open and flock ``lock``; retry while the file locked is not the one at its name."""
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = _holder(fd)
            os.close(fd)
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise
            raise OutputBusy(final, f"is being written by another slide2expr run ({holder}) "
                             "right now", "wait for that run to finish (or stop it) and "
                             "rerun") from None
        try:
            same = os.fstat(fd).st_ino == os.stat(lock).st_ino
        except FileNotFoundError:  # its holder finished and removed it: lock afresh
            same = False
        if same:
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()} {_host()}\n".encode())
            return fd
        os.close(fd)


def _holder(fd: int) -> str:
    """``process PID on HOST`` as the lock file records it."""
    try:
        pid, host = os.pread(fd, 200, 0).decode().split()[:2]
    except (OSError, ValueError, UnicodeDecodeError):
        return "process unknown"
    return f"process {pid}" + ("" if host == _host() else f" on {host}")


# -- atomic outputs --------------------------------------------------------------------------

def _prepare(final: Path, stack: contextlib.ExitStack) -> None:
    """Create the output's folder, lock the output, refuse a folder slide2expr did not make,
    and remove its stale temporaries (faults: one line)."""
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        stack.enter_context(output_lock(final))
        if final.is_dir():  # a folder output: replaced whole, if slide2expr made it
            check_replaceable(final)
        remove_stale_temporaries(final)
    except OSError as exc:
        fault = environment_fault(exc, final)
        if fault is None:
            raise
        raise fault from exc


def _named_output(named: Path, finals: list[Path], tmps: list[Path]) -> Path | None:
    """The output whose temporary (or a file inside it) ``named`` is, else ``None``."""
    for tmp, final in zip(tmps, finals, strict=True):
        if named == tmp or tmp in named.parents:
            return final
    return None


def _as_fault(exc: BaseException, finals: list[Path], tmps: list[Path]) -> BaseException:
    """``exc`` as an EnvironmentFault naming the output when it is a disk or permission fault.

    The output named is the one whose temporary (or a file in it) the error names, else the
    only output, else their folder; an error about some other file (an input) names that
    file. A copy (``shutil.move``) names its destination in ``filename2``: that one counts.
    """
    if not isinstance(exc, Exception):
        return exc
    filenames = [getattr(exc, "filename2", None), getattr(exc, "filename", None)]
    if isinstance(exc, EnvironmentFault):  # an inner output's fault: its path is the file
        filenames.append(exc.path)
    named = [Path(f) for f in filenames if isinstance(f, (str, os.PathLike))]
    own = [p for p in (_named_output(n, finals, tmps) for n in named) if p is not None]
    path: Path | None
    if own:
        path = own[0]
    elif not named or named[-1] in finals or named[-1] in {p.parent for p in finals}:
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
        The final output path. Its parent directory is created. A folder written at the
        temporary path is marked (:data:`FOLDER_MARKER`) and replaces an existing folder
        only if :func:`check_replaceable` allows it (checked before any work).

    Yields
    ------
    Path
        Where the caller writes the content.

    Raises
    ------
    EnvironmentFault
        On a full disk or an unwritable folder (nothing is left behind).
    OutputBusy
        When another run writes ``path`` now.
    ForeignFolder
        When ``path`` is an existing folder that slide2expr did not make.
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
    with contextlib.ExitStack() as locks:
        for p in finals:
            _prepare(p, locks)
        try:
            yield tmps
            for tmp, final in zip(tmps, finals, strict=True):
                if tmp.is_dir() and not tmp.is_symlink():
                    _replace_folder(tmp, final)
                else:
                    os.replace(tmp, final)
        except BaseException as exc:
            for tmp in tmps:
                _remove(tmp)
            fault = _as_fault(exc, finals, tmps)
            if fault is exc:
                raise
            raise fault from exc
