"""Colour: colour maps by name, the overlay style, and predicted values blended over an image."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from slide2expr.errors import InputError


@dataclass(frozen=True)
class OverlayStyle:
    """How overlays look.

    Attributes
    ----------
    cmap
        A Matplotlib colour map name.
    alpha
        Opacity of the colour map over tissue (0 transparent, 1 opaque).
    background_fade
        How much non-tissue areas are faded towards white (0 none, 1 white).
    fade_low
        Values in the lowest ``fade_low`` of the colour range fade to transparent (opacity
        rises linearly from 0 at ``vmin`` to ``alpha`` at ``fade_low``), so the tissue stays
        visible where a gene is low instead of under the colour map's dark end; 0 paints every
        value at ``alpha``.
    """

    cmap: str = "inferno"
    alpha: float = 0.6
    background_fade: float = 0.4
    fade_low: float = 0.0


def colormap(name: str):
    """A Matplotlib colour map by name (InputError for an unknown name)."""
    import matplotlib

    try:
        return matplotlib.colormaps[name]
    except KeyError:
        raise InputError(None, f"unknown colour map {name!r}",
                         "use a Matplotlib name such as inferno, viridis, magma, RdBu_r") from None


def blend_overlay(thumbnail: np.ndarray, value_image: np.ndarray, *, vmin: float, vmax: float,
                  tissue: np.ndarray | None = None, style: OverlayStyle | None = None) -> np.ndarray:
    """The thumbnail with ``value_image`` colour-mapped and blended where there is tissue.

    Parameters
    ----------
    thumbnail
        ``(H, W, 3)`` uint8 RGB.
    value_image
        ``(H, W)`` values (NaN where no tile).
    vmin, vmax
        Colour limits; values outside are clipped.
    tissue
        ``(H, W)`` bool tissue mask; None means everywhere. Colour is blended only where a
        tile has a value *and* there is tissue; background is faded.
    style
        Colour map, opacity, background fade.

    Returns
    -------
    numpy.ndarray
        ``(H, W, 3)`` uint8 RGB.
    """
    style = style or OverlayStyle()
    rgb = thumbnail.astype(np.float32)
    paint = np.isfinite(value_image)
    if tissue is not None:
        paint &= tissue
        fade = ~tissue
        rgb[fade] = (1 - style.background_fade) * rgb[fade] + style.background_fade * 255.0
    norm = np.clip((np.nan_to_num(value_image[paint]) - vmin) / (vmax - vmin), 0.0, 1.0)
    colours = colormap(style.cmap)(norm)[:, :3].astype(np.float32) * 255.0
    alpha = np.full(norm.shape, style.alpha, dtype=np.float32)
    if style.fade_low > 0:
        alpha *= np.clip(norm / style.fade_low, 0.0, 1.0).astype(np.float32)
    alpha = alpha[:, None]
    rgb[paint] = (1 - alpha) * rgb[paint] + alpha * colours
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)
