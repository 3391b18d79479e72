"""Square windows over a section, aligned to the tile grid, kept where there are spots and
tissue."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from slide2expr.tile.tissue import tissue_fraction_grid


@dataclass(frozen=True)
class Window:
    """One window of a section, in level-0 pixels.

    Attributes
    ----------
    row, col
        Its place in the section's window grid.
    x0, y0, x1, y1
        The box (left, top, right, bottom).
    spot_index
        Row numbers (in the section's spot table) of the spots whose centre lies inside.
    tissue_fraction
        Share of the window the tissue mask covers.
    n_tissue_tiles
        Grid tiles wholly inside the window that the tile stage keeps.
    """

    row: int
    col: int
    x0: float
    y0: float
    x1: float
    y1: float
    spot_index: np.ndarray
    tissue_fraction: float
    n_tissue_tiles: int

    @property
    def roi(self) -> str:
        """The sample sheet's ``roi`` cell: ``x0,y0,x1,y1`` in level-0 pixels."""
        return ",".join(f"{v:.2f}".rstrip("0").rstrip(".") for v in
                        (self.x0, self.y0, self.x1, self.y1))


def window_tiles(window_um: float, tile_um: float) -> int:
    """Tiles along a window's edge: ``window_um / tile_um`` rounded, at least 1."""
    return max(1, int(round(window_um / tile_um)))


def place_windows(xy: np.ndarray, *, width: int, height: int, tile_size0: float,
                  tiles_per_window: int, mask: np.ndarray, mask_downsample: float,
                  min_spots: int, min_tissue: float, tile_min_tissue: float) -> list[Window]:
    """Windows of ``tiles_per_window`` grid tiles a side, on the whole slide's grid.

    Windows start at multiples of their own edge from the slide's origin, so each holds whole
    grid tiles (the tile stage's grid starts at the origin too) and windows never overlap.

    Parameters
    ----------
    xy
        ``(N, 2)`` spot centres, level-0 px.
    width, height
        The slide's level-0 size; windows past it are not placed.
    tile_size0
        A grid tile's edge in level-0 px.
    mask, mask_downsample
        The tissue mask and its level-0 px per mask px.
    min_spots
        A window is kept with at least this many spot centres inside.
    min_tissue
        ... and at least this share of it on tissue ...
    tile_min_tissue
        ... and at least one grid tile inside it that is this share tissue (what the tile
        stage keeps), so every kept window tiles.
    """
    edge = tile_size0 * tiles_per_window
    n_cols, n_rows = int(width // edge), int(height // edge)
    col = np.floor(xy[:, 0] / edge).astype(int)
    row = np.floor(xy[:, 1] / edge).astype(int)
    windows = []
    for r in range(n_rows):
        for c in range(n_cols):
            inside = np.flatnonzero((row == r) & (col == c))
            if len(inside) < min_spots:
                continue
            x0, y0 = c * edge, r * edge
            fraction = float(tissue_fraction_grid(mask, mask_downsample, np.array([x0]),
                                                  np.array([y0]), edge)[0])
            n_tiles = _tissue_tiles(mask, mask_downsample, x0, y0, tile_size0, tiles_per_window,
                                    tile_min_tissue)
            if fraction < min_tissue or n_tiles == 0:
                continue
            windows.append(Window(r, c, x0, y0, x0 + edge, y0 + edge, inside, fraction, n_tiles))
    return windows


def _tissue_tiles(mask: np.ndarray, mask_downsample: float, x0: float, y0: float,
                  size0: float, n: int, min_tissue: float) -> int:
    offsets = np.arange(n) * size0
    gx, gy = np.meshgrid(x0 + offsets, y0 + offsets)
    fraction = tissue_fraction_grid(mask, mask_downsample, gx.ravel(), gy.ravel(), size0)
    return int(np.count_nonzero(fraction >= min_tissue))
