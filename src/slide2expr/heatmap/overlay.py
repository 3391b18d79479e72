"""Overlay PNGs: the slide thumbnail with a colour map blended over tissue, a colour bar
with units, the gene and the sample in the title.

The thumbnail is placed unscaled in the PNG (a scale bar sits under it), at an offset written into the PNG's text
chunks (``slide2expr:image_box`` = ``left,top,width,height`` in PNG px and
``slide2expr:downsample`` = level-0 px per image px), so a PNG pixel maps back to level-0
coordinates exactly.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from slide2expr.atomic import atomic_output
from slide2expr.draw.colours import OverlayStyle, colormap

#: zlib level of the overlay PNGs: 1 writes a 2000-px overlay ~4x faster than PIL's 6 for
#: ~20% more bytes (benchmarks/png_levels.py; docs/benchmarks.md).
PNG_COMPRESS_LEVEL = 1

#: Margins around the thumbnail in the PNG, px (times max(1, longest side / 1000)).
MARGIN = 12
TITLE_PX = 46
BOTTOM_PX = 26
COLORBAR_PX = 110
DPI = 100


def save_overlay_png(path: str | Path, image: np.ndarray, *, downsample: float, vmin: float,
                     vmax: float, title: str, subtitle: str = "",
                     colorbar_label: str = "log1p CP10k", style: OverlayStyle | None = None,
                     clipped: tuple[bool, bool] = (True, True),
                     mpp: float | None = None, origin: tuple[int, int] = (0, 0)) -> None:
    """Write ``image`` (the blended thumbnail) with a title and a colour bar as a PNG.

    Matplotlib draws only the frame (title, colour bar, scale bar); the thumbnail is pasted
    into the frame's pixel buffer unscaled, so memory stays a few times the thumbnail's.

    Parameters
    ----------
    path
        Destination, written atomically.
    image
        ``(H, W, 3)`` uint8, placed unscaled.
    downsample
        Level-0 px per image px (stored in the PNG metadata).
    vmin, vmax
        Colour bar limits.
    title, subtitle
        Text above the image.
    colorbar_label
        Units of the colour bar.
    style
        Colour map of the bar.
    clipped
        Whether values were clipped below ``vmin`` / above ``vmax`` (arrow ends on the bar).
    mpp
        Slide um/px; when given a scale bar is drawn under the image.
    origin
        Where ``image`` starts in the whole-slide thumbnail (x, y px) when it is a crop, so
        level-0 coordinates map to it as ``x0 / downsample - origin`` (stored in the PNG).
    """
    from PIL import Image

    h, w = image.shape[:2]
    frame, (left, top) = _framed(image, title=title, subtitle=subtitle,
                                 style=style or OverlayStyle(), vmin=vmin, vmax=vmax,
                                 clipped=clipped, colorbar_label=colorbar_label,
                                 um_per_px=mpp * downsample if mpp else None)
    info = _png_info({
        "slide2expr:image_box": f"{left},{top},{w},{h}",
        "slide2expr:downsample": repr(float(downsample)),
        "slide2expr:origin": f"{int(origin[0])},{int(origin[1])}",
        "slide2expr:vmin": repr(float(vmin)),
        "slide2expr:vmax": repr(float(vmax)),
        "Title": title,
        "Software": "slide2expr",
    })
    with atomic_output(path) as tmp:
        Image.fromarray(frame).save(tmp, format="PNG", pnginfo=info,
                                   compress_level=PNG_COMPRESS_LEVEL)


def _framed(image: np.ndarray, *, title: str, subtitle: str, style: OverlayStyle,
            vmin: float, vmax: float, clipped: tuple[bool, bool], colorbar_label: str,
            um_per_px: float | None) -> tuple[np.ndarray, tuple[int, int]]:
    """``image`` pasted unscaled into the frame matplotlib draws around it (title, colour
    bar, scale bar when ``um_per_px`` is given); returns the RGB frame and where the image
    starts in it (left, top)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    h, w = image.shape[:2]
    k = max(1.0, max(h, w) / 1000)  # text and margins grow with large thumbnails
    margin, title_px, bottom_px, bar_px = (round(v * k) for v in (MARGIN, TITLE_PX, BOTTOM_PX,
                                                                   COLORBAR_PX))
    width = margin + w + bar_px
    height = title_px + h + bottom_px
    fig = Figure(figsize=(width / DPI, height / DPI), dpi=DPI, facecolor="white")
    canvas = FigureCanvasAgg(fig)
    fig.text(margin / width, 1 - 6 * k / height, title, ha="left", va="top", fontsize=12 * k,
             fontweight="bold")
    if subtitle:
        fig.text(margin / width, 1 - 26 * k / height, subtitle, ha="left", va="top",
                 fontsize=8.5 * k, color="0.3")
    bar_h = max(h * 0.8, 40)
    cax = fig.add_axes((
        (margin + w + 14 * k) / width, (bottom_px + (h - bar_h) / 2) / height,
        16 * k / width, bar_h / height,
    ))
    _colour_bar(cax, style=style, vmin=vmin, vmax=vmax, clipped=clipped, label=colorbar_label,
                k=k)
    if um_per_px:
        _scale_bar(fig, w=w, width=width, height=height, um_per_px=um_per_px,
                   x0=margin, y0=bottom_px - 10 * k, k=k)
    canvas.draw()
    frame = np.array(canvas.buffer_rgba())[..., :3]
    frame[title_px:title_px + h, margin:margin + w] = image
    return frame, (margin, title_px)


def _colour_bar(cax: Any, *, style: OverlayStyle, vmin: float, vmax: float,
                clipped: tuple[bool, bool], label: str, k: float) -> None:
    """The colour bar in ``cax``, with arrow ends where values were clipped."""
    from matplotlib.colorbar import ColorbarBase
    from matplotlib.colors import Normalize

    extend = {(True, True): "both", (True, False): "min", (False, True): "max"}.get(clipped, "neither")
    bar = ColorbarBase(cax, cmap=colormap(style.cmap), norm=Normalize(vmin, vmax), extend=extend)
    bar.set_label(label, fontsize=9 * k)
    bar.ax.tick_params(labelsize=8 * k)


def _png_info(texts: dict[str, str]) -> Any:
    """PNG text chunks (a ``PngInfo``) holding ``texts`` in order."""
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    for key, value in texts.items():
        info.add_text(key, value)
    return info


def _scale_bar(fig, *, w: int, width: int, height: int, um_per_px: float, x0: float,
               y0: float, k: float) -> None:
    """A scale bar of a round length (at most a fifth of the image) under its left corner."""
    target_um = w * um_per_px / 5
    if target_um <= 0:
        return
    exponent = 10 ** np.floor(np.log10(target_um))
    length_um = max(m * exponent for m in (1, 2, 5) if m * exponent <= target_um)
    length_px = length_um / um_per_px
    if length_px < 8:
        return
    from matplotlib.lines import Line2D

    label = f"{length_um / 1000:g} mm" if length_um >= 1000 else f"{length_um:g} µm"
    fig.lines.append(Line2D([x0 / width, (x0 + length_px) / width], [y0 / height] * 2,
                            transform=fig.transFigure, color="black", linewidth=2.5 * k))
    fig.text((x0 + length_px + 6 * k) / width, y0 / height, label, ha="left", va="center",
             fontsize=8 * k)


def read_image_origin(path: str | Path) -> tuple[int, int]:
    """Where the image of an overlay PNG starts in the whole-slide thumbnail (x, y px): a
    level-0 point (X, Y) is at ``(X / downsample - x, Y / downsample - y)`` of the image."""
    from PIL import Image

    with Image.open(path) as im:
        text = dict(getattr(im, "text", {}) or {})
    x, y = (int(v) for v in text.get("slide2expr:origin", "0,0").split(","))
    return x, y


def read_image_box(path: str | Path) -> tuple[tuple[int, int, int, int], float]:
    """``((left, top, width, height), downsample)`` of the thumbnail inside an overlay PNG."""
    from PIL import Image

    with Image.open(path) as im:
        text = dict(getattr(im, "text", {}) or {})
    left, top, w, h = (int(v) for v in text["slide2expr:image_box"].split(","))
    return (left, top, w, h), float(text["slide2expr:downsample"])
