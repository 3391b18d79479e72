"""Heatmap time and memory on a synthetic 100,000 x 100,000 px slide.

Run: ``python benchmarks/heatmap.py`` (each case in a fresh process; prints one row a case).

No real slide is needed: a fake pyramid (levels at 1, 4, 16 and 64x, an elliptical tissue
region) stands in, and refuses to render level 0. The heatmap stage draws from the
thumbnail and the tile coordinates only, so its cost should depend on the thumbnail size
and the tile count, not on the level-0 size. Each case runs the whole per-slide stage
(``make_heatmaps``: thumbnail, tissue mask, 4 overlays, GeoJSON, tile map) and reports wall
seconds and the process's peak RSS above the RSS after imports.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SIZE0 = 100_000
CASES = [  # (slide mpp, tile edge level-0 px, tiles over the whole slide or tissue only)
    (0.25, 448.0, "tissue"),  # 40x scan, 112 um tiles: a realistic large slide
    (0.25, 448.0, "all"),     # every tile of the slide
    (0.5, 224.0, "all"),      # a 50 mm x 50 mm 20x scan: ~200k tiles
]


def _fake_slide(mpp: float):
    from slide2expr.inputs.slides import Slide

    class FakeSlide(Slide):
        backend = "fake"

        def __init__(self) -> None:
            super().__init__(Path("synthetic.svs"), mpp)

        @property
        def level_dimensions(self) -> list[tuple[int, int]]:
            return [(SIZE0 // d, SIZE0 // d) for d in (1, 4, 16, 64)]

        def _read_level(self, level, x, y, width, height):
            if level == 0:
                raise AssertionError("level 0 rendered")
            yy, xx = np.ogrid[0:height, 0:width]
            inside = ((xx - width / 2) / (0.42 * width)) ** 2 + ((yy - height / 2) / (0.3 * height)) ** 2 < 1
            img = np.full((height, width, 3), 243, dtype=np.uint8)
            img[inside] = (205, 120, 170)
            return img

    return FakeSlide()


def run_case(mpp: float, size0: float, which: str) -> dict[str, float]:
    from slide2expr.heatmap import HeatmapOptions, TileMap, make_heatmaps

    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    n = int(SIZE0 // size0)
    gx, gy = np.meshgrid(np.arange(n) * size0, np.arange(n) * size0)
    coords = np.stack([gx.ravel(), gy.ravel()], axis=1).astype(np.int64)
    if which == "tissue":
        c = coords + size0 / 2
        keep = ((c[:, 0] - SIZE0 / 2) / (0.42 * SIZE0)) ** 2 + ((c[:, 1] - SIZE0 / 2) / (0.3 * SIZE0)) ** 2 < 1
        coords = coords[keep]
    rng = np.random.default_rng(0)
    values = (np.sin(coords[:, :1] / 7000.0) + rng.normal(0, 0.1, (len(coords), 4))).astype(np.float32)
    tmap = TileMap(values=values, genes=["G1", "G2", "G3", "G4"], coords=coords,
                   tile_size0=size0, attrs={"sample_id": "synthetic", "slide_mpp": mpp,
                                            "level0_width": SIZE0, "level0_height": SIZE0,
                                            "head": "synthetic"})
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        make_heatmaps(tmap, _fake_slide(mpp), out, options=HeatmapOptions(genes=tmap.genes))
        seconds = time.perf_counter() - start
        geojson_mb = (Path(out) / "synthetic.geojson").stat().st_size / 1e6
    rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"mpp": mpp, "tile_px0": size0, "tiles": len(coords), "seconds": seconds,
            "peak_rss_mb": rss1 / 1024, "extra_rss_mb": (rss1 - rss0) / 1024,
            "geojson_mb": geojson_mb}


def main() -> None:
    if len(sys.argv) == 4:  # one case, in this (fresh) process
        print(json.dumps(run_case(float(sys.argv[1]), float(sys.argv[2]), sys.argv[3])))
        return
    print(f"{'slide':28s} {'tiles':>8s} {'seconds':>8s} {'peak RSS MB':>12s} "
          f"{'above imports':>14s} {'GeoJSON MB':>11s}")
    for mpp, size0, which in CASES:
        out = subprocess.run([sys.executable, __file__, str(mpp), str(size0), which],
                             capture_output=True, text=True, check=True)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        label = f"100k^2 @{mpp} um/px, {which}"
        print(f"{label:28s} {r['tiles']:8d} {r['seconds']:8.1f} {r['peak_rss_mb']:12.0f} "
              f"{r['extra_rss_mb']:14.0f} {r['geojson_mb']:11.1f}")


if __name__ == "__main__":
    main()
