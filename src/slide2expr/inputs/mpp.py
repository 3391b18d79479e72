"""The mpp policy: which resolution (micrometres per pixel) a slide is read at, and from where.

Order (docs/architecture.md): the slide's metadata, else the sample sheet's ``mpp`` column
(``tile --mpp``), else the config's ``default_slide_mpp`` (``--default-mpp``, with a warning);
with none of these, :class:`~slide2expr.errors.InputError`.

Every source must lie in :data:`PLAUSIBLE_MPP`. A value given by the user (sheet, flag,
config) outside it stops the run with a line naming the value and its source: 1000 um/px
would tile a slide into millions of sub-pixel tiles, 0 divides by zero, 1e308 overflows.
A metadata value outside it is usually a placeholder (a 72-dpi TIFF resolution tag is 353
um/px), so it is set aside with a warning when the sheet or the config gives a resolution,
and named as such in the error when nothing does.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

from slide2expr.errors import InputError

log = logging.getLogger(__name__)

#: The resolutions (um/px) a slide may have: from 0.05 (beyond any scanner's 100x) to 20
#: (a 0.5x overview; the her2st web images are 3.2, scanners 0.12-1). The upper end also
#: rejects 72/96/300-dpi placeholder tags (353 / 265 / 85 um/px).
PLAUSIBLE_MPP = (0.05, 20.0)
#: The fix every message about a user-given mpp ends with.
MPP_FIX = ("give the slide's micrometres per pixel, between "
           f"{PLAUSIBLE_MPP[0]:g} and {PLAUSIBLE_MPP[1]:g} (e.g. 0.5 for 20x, 0.25 for 40x)")


@dataclass(frozen=True)
class MppChoice:
    """The slide's resolution and where it came from."""

    mpp: float
    source: str  # "metadata", "sample_sheet" or "config_default"


def is_plausible(mpp: float | None) -> bool:
    """Whether ``mpp`` is a finite number in :data:`PLAUSIBLE_MPP`."""
    return (mpp is not None and math.isfinite(mpp)
            and PLAUSIBLE_MPP[0] <= mpp <= PLAUSIBLE_MPP[1])


def mpp_problem(value: float) -> str | None:
    """Why ``value`` is not a usable mpp (``"is not positive"``, ...), or ``None`` if it is."""
    if not math.isfinite(value):
        return "is not a finite number"
    if value <= 0:
        return "is not positive"
    if not is_plausible(value):
        return (f"is outside the plausible range {PLAUSIBLE_MPP[0]:g}-{PLAUSIBLE_MPP[1]:g} "
                "um/px")
    return None


def checked_mpp(value: float | None, source: str, path: str | Path | None) -> float | None:
    """``value`` as a float (``None`` and NaN, an empty cell, stay ``None``).

    Raises
    ------
    InputError
        Naming ``path``, the value and ``source`` (e.g. ``"the sample sheet (--mpp)"``) when
        the value is not a number or not a plausible resolution.
    """
    if value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise InputError(path, f"{source} gives mpp {value!r}, which is not a number",
                         MPP_FIX) from None
    if math.isnan(number):
        return None
    problem = mpp_problem(number)
    if problem:
        raise InputError(path, f"{source} gives mpp {number:g}, which {problem}", MPP_FIX)
    return number


def resolve_mpp(
    path: Path,
    metadata_mpp: float | None,
    *,
    sheet_mpp: float | None = None,
    default_mpp: float | None = None,
    implausible_metadata_mpp: float | None = None,
) -> MppChoice:
    """Apply the mpp policy (module docstring).

    Parameters
    ----------
    path
        The slide, named in warnings and errors.
    metadata_mpp
        The plausible mpp found in the slide's own metadata, if any.
    sheet_mpp
        The sample sheet's ``mpp`` value for this slide (``tile --mpp``), if any.
    default_mpp
        The config's ``default_slide_mpp`` (``--default-mpp``), if set.
    implausible_metadata_mpp
        A resolution the metadata gives outside :data:`PLAUSIBLE_MPP` (set aside), if any.

    Returns
    -------
    MppChoice
        The mpp and its source.

    Raises
    ------
    InputError
        When a given value is not a plausible mpp, or no source gives one.
    """
    sheet_mpp = checked_mpp(sheet_mpp, "the sample sheet (--mpp)", path)
    default_mpp = checked_mpp(default_mpp, "default_slide_mpp (--default-mpp)", path)
    if metadata_mpp is not None:
        if sheet_mpp is not None and abs(sheet_mpp - metadata_mpp) > 0.05 * metadata_mpp:
            log.warning(
                "%s: the sample sheet says mpp %.4g but the slide metadata says %.4g; "
                "using the metadata (remove the sheet value to silence this)",
                path, sheet_mpp, metadata_mpp,
            )
        return MppChoice(float(metadata_mpp), "metadata")
    if implausible_metadata_mpp is not None and (sheet_mpp is not None
                                                  or default_mpp is not None):
        log.warning("%s: the slide metadata gives mpp %.4g, outside the plausible range "
                    "%g-%g um/px (a placeholder tag); set aside", path,
                    implausible_metadata_mpp, *PLAUSIBLE_MPP)
    if sheet_mpp is not None:
        return MppChoice(sheet_mpp, "sample_sheet")
    if default_mpp is not None:
        log.warning("%s: no mpp in the slide or the sample sheet; using default_slide_mpp=%g",
                    path, default_mpp)
        return MppChoice(default_mpp, "config_default")
    raise _no_mpp(path, implausible_metadata_mpp)


def _no_mpp(path: Path, implausible_metadata_mpp: float | None) -> InputError:
    """The error when no source gives a plausible mpp (naming a metadata value set aside)."""
    fix = ("add an 'mpp' column to the sample sheet for this slide (e.g. 0.5 for 20x, 0.25 "
           "for 40x) or set default_slide_mpp in the config")
    if implausible_metadata_mpp is not None:
        return InputError(
            path,
            f"the slide's metadata gives mpp {implausible_metadata_mpp:.4g}, outside the "
            f"plausible range {PLAUSIBLE_MPP[0]:g}-{PLAUSIBLE_MPP[1]:g} um/px (a placeholder "
            "resolution tag, not the scan's), and no other mpp was given", fix)
    return InputError(path, "the slide has no resolution (mpp) in its metadata and none was "
                      "given", fix)


def split_metadata_mpp(*candidates: float | None) -> tuple[float | None, float | None]:
    """``(plausible, implausible)`` from a backend's metadata resolutions, best first: the
    first plausible one, else ``None`` and the first one given (set aside by the policy)."""
    given = [c for c in candidates if c is not None and math.isfinite(c) and c > 0]
    plausible = next((c for c in given if is_plausible(c)), None)
    if plausible is not None:
        return plausible, None
    return None, (given[0] if given else None)


def mpp_from_resolution(resolution: float, unit: str | int | None) -> float | None:
    """Convert a TIFF resolution (pixels per unit) to um/px, plausible or not; ``None`` when
    there is no resolution or no physical unit."""
    if not resolution or resolution <= 0 or not math.isfinite(resolution):
        return None
    unit_name = str(unit).lower() if unit is not None else ""
    if unit_name in {"3", "centimeter", "resunit.centimeter"}:
        return 1e4 / resolution
    if unit_name in {"2", "inch", "resunit.inch"}:
        return 25400.0 / resolution
    return None
