"""Errors that a user can act on.

Every error raised for bad input is an :class:`InputError`: it names the file at fault and
the fix, and the CLI prints it as one line and exits with status 2. A fault of the machine
(full disk, unwritable folder) is an :class:`EnvironmentFault`: one line too, status 1.
"""

from __future__ import annotations

import errno
import re
from collections.abc import Collection
from os import PathLike
from pathlib import Path


class InputError(Exception):
    """Bad input that the user can fix.

    Parameters
    ----------
    path
        The file (or directory) at fault, or ``None`` when no single file is.
    problem
        What is wrong, in one sentence.
    fix
        What the user should do about it.
    """

    #: The CLI's exit status for this error.
    exit_code: int = 2

    def __init__(self, path: str | PathLike[str] | None, problem: str, fix: str = "") -> None:
        self.path = None if path is None else str(path)
        self.problem = problem
        self.fix = fix
        super().__init__(self.one_line())

    def __reduce__(self) -> tuple[type, tuple[str | None, str, str]]:
        # Pickled by its fields, so it crosses process boundaries (DataLoader workers) intact.
        return (type(self), (self.path, self.problem, self.fix))

    def one_line(self) -> str:
        """Return the message as a single line: ``file: problem. Fix: fix``."""
        where = f"{self.path}: " if self.path else ""
        fix = f" Fix: {self.fix}" if self.fix else ""
        problem = self.problem.rstrip(". ")
        return " ".join(f"{where}{problem}.{fix}".split())


class EnvironmentFault(InputError):
    """The machine, not the input, is at fault: a full disk, an unwritable folder.

    Printed as one line like :class:`InputError`, but the CLI exits with status 1: rerunning
    the same command succeeds once the fault is fixed.
    """

    exit_code = 1


class OutputBusy(EnvironmentFault):
    """Another run is writing the same output right now (:func:`slide2expr.atomic.output_lock`).

    Status 1, like the other faults of the machine: rerunning succeeds once that run ends.
    """


class ForeignFolder(InputError):
    """An output folder holds files that slide2expr did not write: it is never emptied
    (:func:`slide2expr.atomic.check_replaceable`)."""


#: errno values that are the environment's fault, and how to say so.
ENVIRONMENT_ERRNOS: dict[int, str] = {
    errno.ENOSPC: "the disk is full",
    errno.EDQUOT: "the disk quota is exceeded",
    errno.EFBIG: "the file size limit (ulimit -f) is exceeded",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EROFS: "the file system is read-only",
}
#: errno values that mean "no space"; the others mean "not writable".
NO_SPACE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})
# HDF5 reports the C errno inside its message ("errno = 28, error message = ...").
_HDF5_ERRNO = re.compile(r"errno = (\d+)")
_HDF5_NAME = re.compile(r"\b(?:file)?name = '([^']+)'")


def fault_errno(exc: BaseException) -> int | None:
    """The errno of a disk or permission fault behind ``exc``, or ``None`` if it is not one.

    Looks at ``exc`` and the exceptions it was raised from (``__cause__``/``__context__``):
    an :class:`OSError` with one of :data:`ENVIRONMENT_ERRNOS`, or an h5py/anndata error
    whose message carries HDF5's ``errno = N``.
    """
    return _errno_among(exc, ENVIRONMENT_ERRNOS)


def _errno_among(exc: BaseException, codes: Collection[int]) -> int | None:
    """The first errno in ``codes`` behind ``exc`` or the exceptions it was raised from."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in codes:
            return int(e.errno)
        for match in _HDF5_ERRNO.finditer(str(e)):
            if int(match.group(1)) in codes:
                return int(match.group(1))
        todo += [e.__cause__, e.__context__]
    return None


def _errno_filename(exc: BaseException, code: int) -> str | None:
    """The file name of the error with errno ``code`` behind ``exc``, if it names one."""
    todo: list[BaseException | None] = [exc]
    seen: set[int] = set()
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno == code and e.filename:
            return str(e.filename)
        if f"errno = {code}" in str(e):
            return _hdf5_file_name(e)
        todo += [e.__cause__, e.__context__]
    return None


#: The hidden names :mod:`slide2expr.atomic` writes beside an output ``{name}``: its
#: temporary ``.{stem}.partial-{host}-{pid}{suffix}`` and its lock ``.{name}.lock``.
_TEMPORARY_NAME = re.compile(r"^\.(?P<stem>.+)\.partial-[A-Za-z0-9-]+-\d+(?P<suffix>\.[^.]*)?$")
_LOCK_NAME = re.compile(r"^\.(?P<stem>.+)\.lock$")


def path_fault(exc: BaseException) -> InputError | None:
    """An :class:`InputError` for an output path that cannot exist as given, else ``None``.

    A name longer than the file system allows (``ENAMETOOLONG``), a path through a file
    (``ENOTDIR``), or a folder to create where a file is (``EEXIST`` from ``mkdir``): the
    user's path is at fault, not the machine, so the fix is another path.
    """
    code = _errno_among(exc, (errno.ENAMETOOLONG, errno.ENOTDIR, errno.EEXIST))
    if code is None:
        return None
    name = _errno_filename(exc, code)
    if code == errno.ENAMETOOLONG:
        path = Path(name) if name else None
        if path is not None and (m := _TEMPORARY_NAME.match(path.name)):
            path = path.with_name(m["stem"] + (m["suffix"] or ""))
        elif path is not None and (m := _LOCK_NAME.match(path.name)):
            path = path.with_name(m["stem"])
        longest = max((len(p.encode()) for p in path.parts), default=0) if path else 0
        return InputError(path, f"a file or folder name in this path is too long ({longest} "
                          "bytes; the file system allows 255)",
                          "use a shorter file name")
    blocking = _file_in_path(Path(name)) if name else None
    if blocking is None:
        return None if code == errno.EEXIST else InputError(
            name, "a part of this path is a file, not a folder",
            "choose an output path whose folders are folders")
    return InputError(blocking, "is a file, so nothing can be written under it as a folder",
                      "choose an output path whose folders are folders, or move the file")


def _file_in_path(path: Path) -> Path | None:
    """The first part of ``path`` (itself included) that exists and is not a folder."""
    for part in (*reversed(path.parents), path):
        if part.exists() and not part.is_dir():
            return part
    return None


def environment_fault(exc: BaseException, path: str | PathLike[str] | None = None, *,
                      fix: str | None = None) -> EnvironmentFault | None:
    """An :class:`EnvironmentFault` for a disk or permission fault behind ``exc``, else ``None``.

    Parameters
    ----------
    exc
        The error raised while reading or writing.
    path
        The file being written (default: the error's own file name, if it has one).
    fix
        The fix; default: free space, or make the folder writable, and rerun.
    """
    code = fault_errno(exc)
    if code is None:
        return None
    if path is None:
        path = getattr(exc, "filename", None) or _hdf5_file_name(exc)
    name = errno.errorcode.get(code, str(code))
    problem = f"cannot write: {ENVIRONMENT_ERRNOS[code]} ({name})"
    if fix is None:
        fix = ("free space (or raise the quota) and rerun" if code in NO_SPACE_ERRNOS else
               "make the folder writable, or write the output somewhere else, and rerun")
    return EnvironmentFault(path, problem, fix)


def _hdf5_file_name(exc: BaseException) -> str | None:
    """The file an HDF5 error message names (``name = '...'``), if any."""
    match = _HDF5_NAME.search(str(exc))
    return match.group(1) if match else None
