"""Grid tiles of two versions of slide2expr on the same slides: how many differ, and how fast.

Each version runs in a fresh process with its own ``src`` on PYTHONPATH (e.g. a
``git archive`` of the older commit), default tiling parameters (224 px at 0.5 um/px, mask at
4 um/px). Prints one JSON line per slide: tiles before and after, in common, only in one,
the mask each used, and the tiling seconds.

    git archive f836418 src | tar -x -C /tmp/before
    python benchmarks/tiling_compare.py /tmp/before/src src \\
        cmu=../shared/data/slides/cmu-1-small-region.svs \\
        C2=../shared/data/her2st/C2_HE.jpg@0.69 big=/tmp/peerbench/big_pyramid.tiff
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

CHILD = r'''
import json, sys, time
import numpy as np
try:  # the package tree since the stage packages (slide2expr.tile, slide2expr.inputs)
    from slide2expr.inputs.slides import open_slide
    from slide2expr.tile.grid import TilingParams, compute_tissue, grid_tiles
except ImportError:  # an older checkout (flat modules)
    from slide2expr.slides import open_slide
    from slide2expr.tiling import TilingParams, compute_tissue, grid_tiles
p = TilingParams()
path, mpp, out = sys.argv[1], (float(sys.argv[2]) if sys.argv[2] != "-" else None), sys.argv[3]
t = time.perf_counter()
with open_slide(path, sheet_mpp=mpp) as s:
    tissue = compute_tissue(s, p.tissue)
    grid = grid_tiles(s, tissue, "x", p)
dt = time.perf_counter() - t
np.save(out, np.column_stack([grid.coords, 1000 * grid.extra["tissue_fraction"]]))
print(json.dumps({"s": round(dt, 3), "mask_shape": list(tissue.mask.shape),
                  "mask_source": getattr(tissue, "source", "level read by read_at_mpp"),
                  "mask_mpp": round(s.mpp * tissue.downsample, 3),
                  "tissue_fraction": round(float(tissue.mask.mean()), 4)}))
'''


def run(src: str, path: str, mpp: str, out: Path) -> dict[str, object]:
    env = dict(os.environ, PYTHONPATH=src)
    p = subprocess.run([sys.executable, "-c", CHILD, path, mpp, str(out)], env=env,
                       capture_output=True, text=True)
    if p.returncode:
        sys.exit(p.stderr[-3000:])
    return json.loads(p.stdout.strip().splitlines()[-1])


def main() -> None:
    before, after, *slides = sys.argv[1:]
    with tempfile.TemporaryDirectory() as tmp:
        for spec in slides:
            name, _, rest = spec.partition("=")
            path, _, mpp = rest.partition("@")
            res = {}
            sets = {}
            for tag, src in (("before", before), ("after", after)):
                out = Path(tmp) / f"{name}_{tag}.npy"
                res[tag] = run(src, path, mpp or "-", out)
                sets[tag] = {(int(x), int(y)): f / 1000 for x, y, f in np.load(out).tolist()}
            a, b = sets["before"].keys(), sets["after"].keys()
            print(json.dumps({"slide": name, "tiles_before": len(a), "tiles_after": len(b),
                              "common": len(a & b), "only_before": len(a - b),
                              "only_after": len(b - a),
                              # tissue fraction of the differing tiles where they were kept:
                              # near min_tissue (0.5) means a boundary decision
                              "only_before_fraction": sorted(round(sets["before"][k], 2)
                                                             for k in a - b),
                              "only_after_fraction": sorted(round(sets["after"][k], 2)
                                                            for k in b - a),
                              **res}), flush=True)


if __name__ == "__main__":
    main()
