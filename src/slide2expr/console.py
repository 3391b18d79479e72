"""What the command line shows: log levels and progress bars, set once by ``-v``/``-q``.

``-v`` turns on DEBUG for slide2expr's own loggers only; third-party libraries (h5py,
matplotlib, PIL, numba, fsspec, ...) stay at INFO or above, so their debug chatter does not
bury ours. ``-q`` shows warnings and errors only and draws no progress bar: it sets
``TQDM_DISABLE=1``, which tqdm reads for every bar that does not set ``disable`` itself, and
:func:`progress_wanted` turns off the bars that a command's ``--progress`` flag asks for.
"""

from __future__ import annotations

import logging
import os
import sys

#: Loggers of this package; ``-v`` sets them to DEBUG.
OWN_LOGGER = "slide2expr"
#: Read by tqdm (its ``TQDM_*`` environment overrides) and by :func:`progress_wanted`.
QUIET_ENV = "TQDM_DISABLE"


def configure(*, verbose: bool = False, quiet: bool = False) -> None:
    """Set the log levels and the progress-bar switch for this process.

    Parameters
    ----------
    verbose
        DEBUG for slide2expr's loggers; third-party loggers stay at INFO.
    quiet
        WARNING for every logger, and no progress bars (wins over ``verbose``).
    """
    root_level = logging.WARNING if quiet else logging.INFO
    logging.basicConfig(level=root_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    logging.getLogger().setLevel(root_level)
    own = logging.DEBUG if verbose and not quiet else logging.NOTSET
    logging.getLogger(OWN_LOGGER).setLevel(own)
    if quiet:
        os.environ[QUIET_ENV] = "1"


def progress_wanted(requested: bool = True) -> bool:
    """``requested`` unless ``-q`` was given (then no progress bar is drawn)."""
    return requested and os.environ.get(QUIET_ENV, "") not in {"1", "true", "True"}
