"""Space Ranger outputs as slide2expr inputs: the images of ``spatial/`` and Visium HD bins.

This module owns the reading of a Space Ranger ``outs/`` folder beyond the positions table
(:mod:`slide2expr.inputs.spots`) and the 10x matrix (:mod:`slide2expr.inputs.expression`).

**Without the full-resolution image.** The image given to ``spaceranger --image`` is the
slide; Space Ranger's positions are in its pixels. When a user has only ``outs/``, the
sample sheet's ``slide`` may name the ``outs/`` folder, its ``spatial/`` folder, a Visium HD
bin folder, or ``tissue_hires_image.png`` / ``tissue_lowres_image.png`` itself. That image
is then read as a slide whose level 0 is the full-resolution frame (``tissue_*_scalef``
image px per full-resolution px), so the positions, ``obsm['spatial']`` and the scale
factors stay those of Space Ranger; pixels finer than the image are interpolated. Its
resolution (:func:`fullres_mpp`) is

- Visium HD: ``microns_per_pixel`` of ``scalefactors_json.json``, else
  ``bin_size_um / spot_diameter_fullres``;
- Visium (55 um spots, 100 um apart): 100 um over the median distance between spots that
  are neighbours on the array (same ``array_row``, ``array_col`` 2 apart), else
  65 um / ``spot_diameter_fullres`` (Space Ranger's ``spot_diameter_fullres`` is the
  diameter of a "theoretical 65 um spot"; the shared fixture: 138.0 px per 100 um, 0.725
  um/px, and 89.43 px = 64.8 um).

The image's own resolution is ``fullres_mpp / scalef`` (about 4.8 um/px for a 6.5 mm
capture area's 2000 px hires image): :func:`image_limits` says which patches it can serve.

**Visium HD bins.** ``binned_outputs/square_008um`` (or ``square_016um``, ``square_002um``)
holds ``filtered_feature_bc_matrix.h5`` and ``spatial/tissue_positions.parquet``: each bin
is a spot of ``bin_size_um``. :func:`block_bins` groups the bins into square blocks of
``round(patch_um / bin_um)`` bins a side (the patch size the config asks for,
``tiling.spot_diameter_um``), named ``{patch}um_{row:05d}_{col:05d}`` by block, centred on
the block's centre through the array-to-pixel fit of all bins; a block is kept when at least
:data:`MIN_BLOCK_COVERAGE` of its bins have counts (or lie in tissue). The positions reader
and the counts reader call it alike, so both name the same spots.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import sparse

from slide2expr.errors import InputError

log = logging.getLogger(__name__)

#: Image files of ``spatial/`` and the scale factor that maps full-resolution px onto each.
IMAGES = {"tissue_hires_image.png": "tissue_hires_scalef",
          "tissue_lowres_image.png": "tissue_lowres_scalef"}
#: Visium: centre-to-centre distance of neighbouring spots (um) and Space Ranger's nominal
#: diameter behind ``spot_diameter_fullres`` (um).
VISIUM_PITCH_UM = 100.0
VISIUM_NOMINAL_SPOT_UM = 65.0
#: A block of HD bins is a spot when at least this fraction of its bins has counts.
MIN_BLOCK_COVERAGE = 0.5
_BIN_FOLDER = re.compile(r"^square_(\d+)um$")


@dataclass(frozen=True)
class SpaceRangerImage:
    """A downsampled image of ``spatial/`` standing in for the full-resolution slide.

    Attributes
    ----------
    image
        ``tissue_hires_image.png`` or ``tissue_lowres_image.png``.
    scalef
        Image px per full-resolution px.
    fullres_mpp
        Micrometres per full-resolution px.
    mpp_from
        How ``fullres_mpp`` was derived (recorded in the tiles' attrs).
    """

    image: Path
    scalef: float
    fullres_mpp: float
    mpp_from: str

    @property
    def image_mpp(self) -> float:
        """Micrometres per pixel of the image itself (its real resolution)."""
        return self.fullres_mpp / self.scalef


def spatial_folder(path: Path) -> Path | None:
    """The folder holding ``scalefactors_json.json`` for ``path`` (an ``outs/``, ``spatial/``,
    bin folder or a file in ``spatial/``), or ``None``. A Visium HD ``outs/`` uses its
    ``binned_outputs/square_008um`` (else the first bin folder) for the scale factors."""
    folder = path if path.is_dir() else path.parent
    bins = sorted((folder / "binned_outputs").glob("square_*um/spatial"),
                  key=lambda p: (p.parent.name != "square_008um", p.parent.name))
    for candidate in (folder, folder / "spatial", *bins):
        if (candidate / "scalefactors_json.json").is_file():
            return candidate
    return None


def read_scalefactors_file(folder: Path) -> dict[str, float]:
    """The numbers of ``folder/scalefactors_json.json``."""
    path = folder / "scalefactors_json.json"
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise InputError(path, f"is not valid JSON ({exc})",
                         "copy scalefactors_json.json again from Space Ranger's outs/spatial/") from exc
    return {k: float(v) for k, v in data.items() if isinstance(v, int | float)}


def is_spaceranger_image(path: Path) -> bool:
    """True when ``path`` is a Space Ranger folder or one of its ``spatial/`` images."""
    if path.is_dir():
        return spatial_folder(path) is not None
    return path.name in IMAGES and spatial_folder(path) is not None


def find_image(path: Path) -> SpaceRangerImage:
    """The Space Ranger image that stands in for the slide at ``path``.

    Parameters
    ----------
    path
        An ``outs/`` folder, its ``spatial/`` folder, a Visium HD bin folder (its
        ``spatial/`` or the ``outs/spatial/`` two levels up holds the image), or
        ``tissue_hires_image.png`` / ``tissue_lowres_image.png``.

    Raises
    ------
    InputError
        When there is no image or no scale factor for it.
    """
    folder = spatial_folder(path)
    if folder is None:
        raise InputError(path, "has no scalefactors_json.json (nor spatial/scalefactors_json.json)",
                         "point `slide` at the full-resolution image given to spaceranger "
                         "--image, or at Space Ranger's outs/ folder")
    factors = read_scalefactors_file(folder)
    names = [path.name] if path.is_file() else list(IMAGES)
    places = [folder] + ([] if path.is_file() else _outs_spatial(folder))
    for name in names:
        for place in places:
            key = IMAGES[name]
            if not ((place / name).is_file() and factors.get(key, 0) > 0):
                continue
            if path.is_dir() and _blank(place / name):
                log.warning("%s is blank (one colour); trying the next image", place / name)
                continue
            mpp, how = fullres_mpp(folder, factors)
            return SpaceRangerImage(place / name, float(factors[key]), mpp, how)
    raise InputError(path, f"no {' or '.join(names)} with its scale factor in {folder}",
                     "give the full-resolution image (spaceranger --image) as `slide`")


def _blank(image: Path) -> bool:
    """True when every pixel of ``image`` has one colour (e.g. a stripped test image)."""
    from PIL import Image

    with Image.open(image) as im:
        extrema = im.convert("RGB").getextrema()
    return all(lo == hi for lo, hi in extrema)


def _outs_spatial(folder: Path) -> list[Path]:
    """``outs/spatial`` above a Visium HD bin's ``spatial/`` (its images live there)."""
    for parent in folder.parents:
        if parent.name == "binned_outputs":
            return [parent.parent / "spatial"]
    return []


def fullres_mpp(folder: Path, factors: dict[str, float]) -> tuple[float, str]:
    """Micrometres per full-resolution pixel of a Space Ranger run, and how it was found.

    See the module docstring for the order of the sources.
    """
    if factors.get("microns_per_pixel", 0) > 0:
        return float(factors["microns_per_pixel"]), "scalefactors microns_per_pixel"
    diameter = factors.get("spot_diameter_fullres", 0)
    bin_um = bin_size_um(folder)
    if bin_um is not None and diameter > 0:
        return bin_um / diameter, f"bin_size_um {bin_um:g} / spot_diameter_fullres"
    pitch = _array_pitch_px(folder)
    if pitch is not None:
        return VISIUM_PITCH_UM / pitch, (f"{VISIUM_PITCH_UM:g} um spot pitch = {pitch:.1f} "
                                         "full-resolution px (array neighbours)")
    if diameter > 0:
        return VISIUM_NOMINAL_SPOT_UM / diameter, (
            f"{VISIUM_NOMINAL_SPOT_UM:g} um / spot_diameter_fullres")
    raise InputError(folder / "scalefactors_json.json", "gives no spot_diameter_fullres or "
                     "microns_per_pixel to derive the resolution from",
                     "give the full-resolution image as `slide` and its mpp in the sample sheet")


def _array_pitch_px(folder: Path) -> float | None:
    """Median full-resolution distance of array neighbours (same row, columns 2 apart)."""
    from slide2expr.inputs.spots import read_spaceranger_frame

    try:
        frame = read_spaceranger_frame(folder)
    except InputError:
        return None
    frame = frame.sort_values(["array_row", "array_col"])
    same_row = frame["array_row"].to_numpy()[1:] == frame["array_row"].to_numpy()[:-1]
    step = np.diff(frame["array_col"].to_numpy()) == 2
    pair = same_row & step
    if not pair.any():
        return None
    x = frame["pxl_col_in_fullres"].to_numpy(float)
    y = frame["pxl_row_in_fullres"].to_numpy(float)
    dist = np.hypot(np.diff(x), np.diff(y))[pair]
    return float(np.median(dist))


def image_limits(image: SpaceRangerImage, *, patch_um: float, tile_px: int) -> str:
    """One sentence: how many image pixels a patch holds and how much it is enlarged."""
    real = patch_um / image.image_mpp
    return (f"{image.image.name} is {image.image_mpp:.2f} um/px: a {patch_um:g} um patch holds "
            f"{real:.0f} x {real:.0f} image px, enlarged {tile_px / real:.1f}x to {tile_px} px; "
            "patches show tissue architecture, not cells (for that, give the full-resolution "
            "image given to spaceranger --image)")


# -- Visium HD bins ---------------------------------------------------------------------------

def bin_size_um(path: Path) -> float | None:
    """The bin edge (um) when ``path`` is in a Visium HD bin folder (``square_008um``), else
    ``None``; ``bin_size_um`` of its scale factors wins over the folder name."""
    folder = path if path.is_dir() else path.parent
    for candidate in (folder, *folder.parents[:2]):
        match = _BIN_FOLDER.match(candidate.name)
        if match:
            spatial = spatial_folder(candidate)
            if spatial is not None:
                value = read_scalefactors_file(spatial).get("bin_size_um", 0)
                if value > 0:
                    return float(value)
            return float(match.group(1))
    return None


def block_edge(bin_um: float, patch_um: float) -> int:
    """Bins a side of the block that makes one patch (at least 1)."""
    return max(1, int(round(patch_um / bin_um)))


def block_bins(frame: pd.DataFrame, *, bin_um: float, patch_um: float,
               keep: pd.Index | None = None) -> tuple[pd.DataFrame, pd.Series]:
    """Group HD bins into blocks of the patch size.

    Parameters
    ----------
    frame
        Space Ranger positions of the bins (``barcode, in_tissue, array_row, array_col,
        pxl_row_in_fullres, pxl_col_in_fullres``), all bins of the capture area.
    bin_um, patch_um
        Bin edge and patch edge, micrometres.
    keep
        Barcodes of the bins with counts; ``None``: the bins in tissue.

    Returns
    -------
    tuple of (pandas.DataFrame, pandas.Series)
        The blocks kept as ``[spot_id, x, y]`` (block centres, full-resolution px) and, for
        every kept bin, its block's ``spot_id`` (indexed by barcode).
    """
    k = block_edge(bin_um, patch_um)
    rows = frame["array_row"].to_numpy(np.int64)
    cols = frame["array_col"].to_numpy(np.int64)
    fit = _array_to_pixels(rows, cols, frame["pxl_col_in_fullres"].to_numpy(float),
                           frame["pxl_row_in_fullres"].to_numpy(float))
    barcodes = frame["barcode"].astype(str)
    counted = (barcodes.isin(set(keep)) if keep is not None
               else frame["in_tissue"].astype(int) == 1).to_numpy()
    block_row, block_col = rows[counted] // k, cols[counted] // k
    names = pd.Series([f"{patch_um:g}um_{r:05d}_{c:05d}" for r, c in zip(block_row, block_col, strict=True)],
                      index=barcodes[counted].to_numpy())
    sizes = names.value_counts()
    full = sizes[sizes >= MIN_BLOCK_COVERAGE * k * k].index
    names = names[names.isin(full)]
    blocks = names.drop_duplicates()
    centre_rows = np.array([int(s.split("_")[1]) for s in blocks]) * k + (k - 1) / 2
    centre_cols = np.array([int(s.split("_")[2]) for s in blocks]) * k + (k - 1) / 2
    x, y = fit(centre_rows, centre_cols)
    table = pd.DataFrame({"spot_id": blocks.to_numpy(), "x": x, "y": y})
    log.info("Visium HD: %d bins of %g um grouped into %d spots of %d x %d bins (%g um; "
             "blocks with under %.0f%% of their bins dropped)", int(counted.sum()), bin_um,
             len(table), k, k, k * bin_um, 100 * MIN_BLOCK_COVERAGE)
    return table, names


def _array_to_pixels(rows: np.ndarray, cols: np.ndarray, x: np.ndarray, y: np.ndarray):
    """Least-squares affine map from array (row, col) to full-resolution (x, y)."""
    design = np.stack([rows, cols, np.ones_like(rows)], axis=1).astype(float)
    coef_x, *_ = np.linalg.lstsq(design, x, rcond=None)
    coef_y, *_ = np.linalg.lstsq(design, y, rcond=None)

    def fit(r: np.ndarray, c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        d = np.stack([r, c, np.ones_like(r)], axis=1).astype(float)
        return d @ coef_x, d @ coef_y

    return fit


def sum_into_blocks(matrix: sparse.csr_matrix, bin_ids: pd.Index,
                    names: pd.Series) -> tuple[sparse.csr_matrix, pd.Index]:
    """Sum the rows of ``matrix`` (one per bin of ``bin_ids``) into their blocks.

    Bins without a block (dropped blocks, bins outside tissue) are left out.
    """
    blocks = pd.Index(names.drop_duplicates().to_numpy())
    which = names.reindex(bin_ids)
    have = which.notna().to_numpy()
    member = sparse.csr_matrix(
        (np.ones(int(have.sum())), (blocks.get_indexer(which[have]), np.flatnonzero(have))),
        shape=(len(blocks), len(bin_ids)))
    return sparse.csr_matrix(member @ matrix), blocks


def hd_scalefactors(factors: dict[str, float] | None, spots_path: str | Path,
                    patch_um: float | None) -> dict[str, float] | None:
    """Scale factors of spots made of grouped HD bins: ``spot_diameter_fullres`` becomes the
    block's edge (``k * bin_size_um``) in full-resolution px, ``bins_per_spot_edge`` k.

    Other layouts, and bins not grouped, keep ``factors`` unchanged.
    """
    path = Path(spots_path)
    bin_um = bin_size_um(path) if factors and patch_um else None
    if bin_um is None or block_edge(bin_um, float(patch_um)) < 2:
        return factors
    k = block_edge(bin_um, float(patch_um))
    folder = spatial_folder(path) or path
    mpp, _ = fullres_mpp(folder, factors)
    return {**factors, "spot_diameter_fullres": k * bin_um / mpp, "bin_size_um": bin_um,
            "bins_per_spot_edge": float(k)}
