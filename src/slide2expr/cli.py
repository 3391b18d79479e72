"""The ``slide2expr`` command line: one subcommand per workflow stage.

Each stage's command lives in ``slide2expr.commands.<stage>`` and registers itself here, so
stage modules stay independent. Heavy imports (torch, anndata) happen inside commands, so
``slide2expr --help`` is fast.

Every failure a user can act on is one line on stderr (:func:`main`):

=====================================================  ======
failure                                                status
=====================================================  ======
bad input (:class:`~slide2expr.errors.InputError`)     2
an output folder slide2expr did not make               2
(:class:`~slide2expr.errors.ForeignFolder`)
usage error (an unknown option, a missing argument)    2
a full disk, an unwritable or read-only folder         1
(:class:`~slide2expr.errors.EnvironmentFault`, or an
``OSError`` ENOSPC/EDQUOT/EFBIG/EACCES/EPERM/EROFS)
another run writes the same output now                 1
(:class:`~slide2expr.errors.OutputBusy`)
Ctrl-C ("interrupted; rerun to resume"), also when a   130
library caught it and exited (Lightning)
SIGTERM, e.g. ``scancel`` ("terminated; ...")          143
=====================================================  ======
"""

from __future__ import annotations

import contextlib
import importlib
import signal
import sys

import typer

from slide2expr import console
from slide2expr.errors import InputError, environment_fault, path_fault

app = typer.Typer(
    name="slide2expr",
    help="Predict gene expression from H&E whole-slide images.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    # plain click help: rich's formatter imports ~1 s of modules (pygments, markdown) per call
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)

#: Modules under ``slide2expr.commands`` whose ``register(app)`` adds their subcommands.
COMMAND_MODULES = (
    "tile",
    "context_tiles",
    "pseudobulk",
    "demo",
    "extract",
    "join",
    "train",
    "report",
    "heatmap",
    "verify",
    "export",
    "view",
)


def _version(value: bool) -> None:
    if value:
        from slide2expr import __version__

        typer.echo(f"slide2expr {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    verbose: bool = typer.Option(False, "--verbose", "-v",
                                 help="Debug logging of slide2expr (other libraries stay at INFO)."),
    quiet: bool = typer.Option(False, "--quiet", "-q",
                               help="Warnings and errors only; no progress bars."),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                 help="Print the version and exit."),
) -> None:
    console.configure(verbose=verbose, quiet=quiet)


for _name in COMMAND_MODULES:
    try:
        _module = importlib.import_module(f"slide2expr.commands.{_name}")
    except ModuleNotFoundError as _exc:  # a stage not built yet
        if _exc.name != f"slide2expr.commands.{_name}":
            raise
        continue
    _module.register(app)


#: The signal that stopped the command, if one did (set by :func:`_on_signal`).
_stopped_by: list[int] = []
_SIGNAL_EXIT = {signal.SIGINT: (130, "interrupted"), signal.SIGTERM: (143, "terminated")}


def _on_signal(signum: int, frame: object) -> None:
    """Remember the signal and unwind as Ctrl-C does, so every ``finally`` runs."""
    _stopped_by.append(signum)
    raise KeyboardInterrupt


def _fail(message: str, code: int) -> None:
    typer.echo(f"error: {message}", err=True)
    sys.exit(code)


#: Logging flags every command takes (they belong to the root command; see hoist_log_flags).
LOG_FLAGS = ("-v", "--verbose", "-q", "--quiet")


def hoist_log_flags(args: list[str]) -> list[str]:
    """Move ``-v/--verbose/-q/--quiet`` given after a subcommand in front of it, so every
    command takes them (``slide2expr tile -q ...`` as well as ``slide2expr -q tile ...``).
    Arguments after ``--`` are left alone."""
    cut = args.index("--") if "--" in args else len(args)
    head, tail = args[:cut], args[cut:]
    flags = [a for a in head if a in LOG_FLAGS]
    return flags + [a for a in head if a not in LOG_FLAGS] + tail


def main() -> None:
    """Entry point: run the app; every failure a user can act on is one line (module doc)."""
    for signum in _SIGNAL_EXIT:
        with contextlib.suppress(ValueError):  # only the main thread may set handlers
            signal.signal(signum, _on_signal)
    try:
        # Without standalone mode click returns a command's exit code instead of exiting.
        code = app(args=hoist_log_flags(sys.argv[1:]), standalone_mode=False)
    except InputError as exc:  # EnvironmentFault included, with its own status
        _stopped_or_fail(exc.one_line(), exc.exit_code)
    except typer.Exit as exc:
        code = exc.exit_code
    except (typer.Abort, KeyboardInterrupt):
        _stopped_or_fail("aborted", 130)
    except SystemExit:
        # A library that catches the interrupt itself and exits (Lightning's Trainer calls
        # sys.exit(1) on Ctrl-C): the signal, not that status, says what happened.
        if _stopped_by:
            _stopped()
        raise
    except typer.TyperException as exc:  # typer's own click: usage errors (exit code 2)
        _usage_error(exc)
    except Exception as exc:
        fault = environment_fault(exc) or path_fault(exc)
        if fault is None:
            if _stopped_by:
                _stopped()
            raise
        _stopped_or_fail(fault.one_line(), fault.exit_code)
    else:
        if _stopped_by:  # typer turns KeyboardInterrupt into a silent exit code 130
            _stopped()
    if isinstance(code, int) and code != 0:
        sys.exit(code)


def _stopped() -> None:
    code, what = _SIGNAL_EXIT.get(_stopped_by[0], (130, "interrupted"))
    typer.echo(f"{what}; rerun to resume", err=True)
    sys.exit(code)


def _stopped_or_fail(message: str, code: int) -> None:
    if _stopped_by:
        _stopped()
    _fail(message, code)


def _usage_error(exc: Exception) -> None:
    """Show a usage error the way click does (usage line, hint, error) and exit with 2."""
    show = getattr(exc, "show", None)
    if callable(show):
        show()
    else:
        typer.echo(f"error: {exc}", err=True)
    sys.exit(int(getattr(exc, "exit_code", 2) or 2))


if __name__ == "__main__":
    main()
