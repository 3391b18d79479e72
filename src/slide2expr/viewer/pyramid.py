"""Deep Zoom pyramid of a slide at full resolution: ``{name}.dzi`` + ``{name}_files/{level}/``.

Two writers, measured side by side in ``benchmarks/bench_viewer_pyramid.py``:

- ``vips``: libvips' ``dzsave`` through pyvips (the ``pyvips`` and ``pyvips-binary`` wheels),
  multithreaded C; reads JPEG, PNG and TIFF pyramids (level 0), not vendor formats.
- ``deepzoom``: OpenSlide's :class:`openslide.deepzoom.DeepZoomGenerator`, one tile at a time
  in Python (PIL encodes each JPEG); reads everything OpenSlide reads, and plain images through
  :class:`openslide.ImageSlide`.

``auto`` (the default) uses ``vips``, the faster one (docs/benchmarks.md), and falls back to
``deepzoom`` for a format libvips cannot load (SVS, NDPI, MRXS ...). Both write the same
layout: tile edge 254 px with 1 px overlap, JPEG, level ``ceil(log2(max(w, h)))`` at level-0
resolution, so a viewer pixel maps to a slide pixel exactly.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

from slide2expr.errors import InputError

log = logging.getLogger(__name__)

#: Pyramid writers, in the order ``auto`` tries them.
BACKENDS = ("vips", "deepzoom")
TILE_SIZE = 254
OVERLAP = 1
JPEG_QUALITY = 80


@dataclass(frozen=True)
class Pyramid:
    """A written Deep Zoom pyramid.

    Attributes
    ----------
    dzi
        The ``.dzi`` descriptor.
    width, height
        Level-0 size in px (the slide's).
    tile_size, overlap
        Deep Zoom tile edge and overlap, px.
    fmt
        Tile file suffix (``jpeg``).
    backend
        Which writer made it.
    """

    dzi: Path
    width: int
    height: int
    tile_size: int
    overlap: int
    fmt: str
    backend: str

    @property
    def max_level(self) -> int:
        """The Deep Zoom level at full resolution."""
        return max(0, math.ceil(math.log2(max(self.width, self.height))))


def vips_can_read(path: str | Path) -> bool:
    """Whether libvips (through pyvips) can load ``path``."""
    try:
        import pyvips
    except Exception:  # ImportError, or OSError when libvips itself is missing
        return False
    found = pyvips.vips_lib.vips_foreign_find_load(str(path).encode())
    return found != pyvips.ffi.NULL


def write_pyramid(slide_path: str | Path, out_dir: str | Path, *, name: str = "slide",
                  backend: str = "auto", quality: int = JPEG_QUALITY) -> Pyramid:
    """Write the Deep Zoom pyramid of ``slide_path`` under ``out_dir``.

    Parameters
    ----------
    slide_path
        Whole-slide image or plain image.
    out_dir
        Existing directory; ``{name}.dzi`` and ``{name}_files/`` are created in it.
    name
        Base name of the pyramid.
    backend
        ``auto``, ``vips`` or ``deepzoom``.
    quality
        JPEG quality of the tiles.

    Returns
    -------
    Pyramid
        What was written.
    """

    if backend not in ("auto", *BACKENDS):
        raise InputError(None, f"unknown pyramid backend {backend!r}",
                         f"use one of auto, {', '.join(BACKENDS)}")
    slide_path, out_dir = Path(slide_path), Path(out_dir)
    from slide2expr.inputs.spaceranger import is_spaceranger_image

    if is_spaceranger_image(slide_path):
        return _write_spaceranger(slide_path, out_dir, name, quality)
    auto = backend == "auto"
    if auto:
        backend = "vips" if vips_can_read(slide_path) else "deepzoom"
    if backend == "vips":
        try:
            pyramid = _write_vips(slide_path, out_dir, name, quality)
        except _vips_error() as exc:
            if not auto:
                raise InputError(slide_path, f"libvips cannot write its pyramid ({exc})",
                                 "use --pyramid-backend deepzoom") from exc
            log.warning("%s: libvips failed (%s); using OpenSlide's DeepZoomGenerator",
                        slide_path, str(exc).splitlines()[0] if str(exc) else exc)
            _clear(out_dir, name)
            backend = "deepzoom"
    if backend == "deepzoom":
        pyramid = _write_deepzoom(slide_path, out_dir, name, quality)
    log.info("%s: Deep Zoom pyramid %d x %d px (%d levels) written by %s", slide_path,
             pyramid.width, pyramid.height, pyramid.max_level + 1, backend)
    return pyramid


def _vips_error() -> type[Exception]:
    try:
        import pyvips
    except Exception:
        return RuntimeError
    return pyvips.Error


def _clear(out_dir: Path, name: str) -> None:
    import shutil

    shutil.rmtree(out_dir / f"{name}_files", ignore_errors=True)
    (out_dir / f"{name}.dzi").unlink(missing_ok=True)


def _write_vips(slide_path: Path, out_dir: Path, name: str, quality: int) -> Pyramid:
    import pyvips

    logging.getLogger("pyvips").setLevel(logging.WARNING)  # one INFO line per libvips thread

    image = pyvips.Image.new_from_file(str(slide_path), access="sequential")
    if image.hasalpha():
        image = image.flatten(background=[255, 255, 255])
    if image.bands == 1:
        image = image.colourspace("srgb")
    image.dzsave(str(out_dir / name), tile_size=TILE_SIZE, overlap=OVERLAP,
                 suffix=f".jpeg[Q={quality}]", depth="onepixel", layout="dz", strip=True)
    # libvips' metadata dump (paths, loader options): not part of Deep Zoom, not served
    (out_dir / f"{name}_files" / "vips-properties.xml").unlink(missing_ok=True)
    return Pyramid(dzi=out_dir / f"{name}.dzi", width=image.width, height=image.height,
                   tile_size=TILE_SIZE, overlap=OVERLAP, fmt="jpeg", backend="vips")


def _write_spaceranger(slide_path: Path, out_dir: Path, name: str, quality: int) -> Pyramid:
    """A Space Ranger stand-in image (``outs/`` without the full-resolution image): its PNG
    enlarged by ``1 / scalef`` to the full-resolution frame, so a viewer pixel is a level-0
    pixel as for any slide (:class:`~slide2expr.inputs.slides.SpaceRangerImageSlide`)."""
    from slide2expr.inputs.slides import SpaceRangerImageSlide

    with SpaceRangerImageSlide(slide_path) as slide:
        png, (width, height) = slide.spaceranger.image, slide.dimensions
    try:
        import pyvips
    except Exception as exc:  # ImportError, or OSError when libvips itself is missing
        raise InputError(slide_path, f"the viewer of a Space Ranger image needs pyvips ({exc})",
                         "pip install pyvips pyvips-binary, or give the full-resolution image "
                         "as the slide") from exc
    image = pyvips.Image.new_from_file(str(png))
    if image.hasalpha():
        image = image.flatten(background=[255, 255, 255])
    image = image.resize(width / image.width, vscale=height / image.height, kernel="linear")
    image.dzsave(str(out_dir / name), tile_size=TILE_SIZE, overlap=OVERLAP,
                 suffix=f".jpeg[Q={quality}]", depth="onepixel", layout="dz", strip=True)
    (out_dir / f"{name}_files" / "vips-properties.xml").unlink(missing_ok=True)
    return Pyramid(dzi=out_dir / f"{name}.dzi", width=image.width, height=image.height,
                   tile_size=TILE_SIZE, overlap=OVERLAP, fmt="jpeg", backend="vips")


def _write_deepzoom(slide_path: Path, out_dir: Path, name: str, quality: int) -> Pyramid:
    import openslide
    from openslide.deepzoom import DeepZoomGenerator

    import slide2expr.inputs.slides  # noqa: F401 - lifts PIL's pixel limit for large plain images

    osr = openslide.open_slide(str(slide_path))  # ImageSlide for JPEG/PNG
    try:
        dz = DeepZoomGenerator(osr, tile_size=TILE_SIZE, overlap=OVERLAP, limit_bounds=False)
        files = out_dir / f"{name}_files"
        for level in range(dz.level_count):
            level_dir = files / str(level)
            level_dir.mkdir(parents=True)
            cols, rows = dz.level_tiles[level]
            for row in range(rows):
                for col in range(cols):
                    tile = dz.get_tile(level, (col, row))
                    tile.save(level_dir / f"{col}_{row}.jpeg", format="JPEG", quality=quality)
        (out_dir / f"{name}.dzi").write_text(dz.get_dzi("jpeg"), encoding="utf-8")
        width, height = dz.level_dimensions[-1]
    finally:
        osr.close()
    return Pyramid(dzi=out_dir / f"{name}.dzi", width=int(width), height=int(height),
                   tile_size=TILE_SIZE, overlap=OVERLAP, fmt="jpeg", backend="deepzoom")
