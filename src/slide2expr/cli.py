"""The ``slide2expr`` command line: one subcommand per workflow stage.

Each stage's command lives in ``slide2expr.commands.<stage>`` and registers itself here, so
stage modules stay independent. Heavy imports (torch, anndata) happen inside commands, so
``slide2expr --help`` is fast.

Bad input raises :class:`~slide2expr.errors.InputError`; it is printed as one line on stderr
and the process exits with status 2.
"""

from __future__ import annotations

import importlib
import logging
import sys

import typer

from slide2expr.errors import InputError

app = typer.Typer(
    name="slide2expr",
    help="Predict gene expression from H&E whole-slide images.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    # plain click help: rich's formatter imports ~1 s of modules (pygments, markdown) per call
    rich_markup_mode=None,
)

#: Modules under ``slide2expr.commands`` whose ``register(app)`` adds their subcommands.
COMMAND_MODULES = (
    "tile",
    "context_tiles",
    "demo",
    "extract",
    "join",
    "train",
    "report",
    "heatmap",
    "verify",
)


def _version(value: bool) -> None:
    if value:
        from slide2expr import __version__

        typer.echo(f"slide2expr {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Debug logging."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Warnings and errors only."),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                 help="Print the version and exit."),
) -> None:
    level = logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


for _name in COMMAND_MODULES:
    try:
        _module = importlib.import_module(f"slide2expr.commands.{_name}")
    except ModuleNotFoundError as _exc:  # a stage not built yet
        if _exc.name != f"slide2expr.commands.{_name}":
            raise
        continue
    _module.register(app)


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
    """Entry point: run the app, turning :class:`InputError` into a one-line error."""
    try:
        # Without standalone mode click returns a command's exit code instead of exiting.
        code = app(args=hoist_log_flags(sys.argv[1:]), standalone_mode=False)
        if isinstance(code, int) and code != 0:
            sys.exit(code)
    except InputError as exc:
        typer.echo(f"error: {exc.one_line()}", err=True)
        sys.exit(2)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        typer.echo("aborted", err=True)
        sys.exit(130)
    except Exception as exc:  # click usage errors
        import click

        if isinstance(exc, click.ClickException):
            exc.show()
            sys.exit(exc.exit_code)
        raise


if __name__ == "__main__":
    main()
