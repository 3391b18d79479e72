"""Errors that a user can act on.

Every error raised for bad input is an :class:`InputError`: it names the file at fault and
the fix, and the CLI prints it as one line and exits with status 2.
"""

from __future__ import annotations

from os import PathLike


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
