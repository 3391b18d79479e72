"""Tiling speed on the shared real slides: seconds per slide and tiles per second.

Run: ``python benchmarks/tiling.py [DATA_DIR]`` (default ``$SLIDE2EXPR_TEST_DATA`` or
``../shared/data``). Times tissue detection plus grid tiling (224 px at 0.5 um/px), and for
the her2st sections also the spot patches, in one process, each slide opened afresh.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from slide2expr.inputs.slides import open_slide
from slide2expr.inputs.spots import read_spot_positions
from slide2expr.tile.grid import TilingParams, compute_tissue, grid_tiles, spot_tiles


def main() -> None:
    root = Path(sys.argv[1] if len(sys.argv) > 1 else os.environ.get(
        "SLIDE2EXPR_TEST_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
    params = TilingParams()
    jobs = [(root / "slides" / "cmu-1-small-region.svs", None, None)]
    jobs += [(root / "her2st" / f"{s}_HE.jpg", 0.69, s) for s in ("C2", "C3", "C4", "C5", "C6")]
    print(f"{'slide':28s} {'level0 px':>13s} {'mpp':>6s} {'tiles':>6s} {'spots':>6s} "
          f"{'seconds':>8s} {'tiles/s':>8s}")
    for path, mpp, section in jobs:
        start = time.perf_counter()
        with open_slide(path, sheet_mpp=mpp) as slide:
            tissue = compute_tissue(slide, params.tissue)
            grid = grid_tiles(slide, tissue, path.stem, params)
            n_spots = 0
            if section is not None:
                table = read_spot_positions(root / "her2st" / f"{section}_selection.tsv",
                                            counts_path=root / "her2st" / f"{section}.tsv.gz")
                n_spots = len(spot_tiles(slide, table, section, params, source=section))
            dims = slide.dimensions
        seconds = time.perf_counter() - start
        n = len(grid) + n_spots
        print(f"{path.name:28s} {dims[0]:>6d}x{dims[1]:<6d} {slide.mpp:6.3f} {len(grid):6d} "
              f"{n_spots:6d} {seconds:8.2f} {n / seconds:8.0f}")


if __name__ == "__main__":
    main()
