"""Deep Zoom pyramid writers side by side: pyvips ``dzsave`` vs OpenSlide's ``DeepZoomGenerator``.

For each slide, both writers make the same pyramid (254 px tiles, 1 px overlap, JPEG Q80,
down to 1 px) into a temporary folder; the script prints wall time, tiles, disk size and the
ratio deepzoom / vips, and checks the two pyramids have the same levels and tile grids.

Slides: a her2st section (``{data}/her2st/C2_HE.jpg``, ~9,300 x 9,900 px JPEG), the demo
slide (``resources/demo/slides/demo1.tiff``, made by ``slide2expr demo-data``) and OpenSlide's
``cmu-1-small-region.svs`` (vips cannot read SVS with the pyvips-binary wheel: deepzoom only).

Usage::

    python benchmarks/viewer_pyramid.py [--data ../shared/data] [--repeat 1] [--threads 2]
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _size(path: Path) -> tuple[int, int]:
    files = [p for p in path.rglob("*") if p.is_file()]
    return len(files), sum(p.stat().st_size for p in files)


def _levels(path: Path) -> dict[int, int]:
    files = path / "slide_files"
    return {int(d.name): len(list(d.iterdir())) for d in files.iterdir() if d.is_dir()}


def run(slide: Path, backend: str, repeat: int) -> dict[str, object] | None:
    from slide2expr.viewer.pyramid import vips_can_read, write_pyramid

    if backend == "vips" and not vips_can_read(slide):
        return None
    best = float("inf")
    for _ in range(repeat):
        out = Path(tempfile.mkdtemp(prefix=f"pyr-{backend}-"))
        try:
            t0 = time.perf_counter()
            pyr = write_pyramid(slide, out, backend=backend)
            best = min(best, time.perf_counter() - t0)
            n_files, n_bytes = _size(out)
            levels = _levels(out)
        finally:
            shutil.rmtree(out, ignore_errors=True)
    return {"seconds": best, "files": n_files, "bytes": n_bytes, "levels": levels,
            "size": (pyr.width, pyr.height)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path(os.environ.get(
        "SLIDE2EXPR_TEST_DATA", REPO.parent / "shared" / "data")))
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2,
                        help="libvips worker threads (VIPS_CONCURRENCY)")
    args = parser.parse_args()
    os.environ["VIPS_CONCURRENCY"] = str(args.threads)
    slides = [
        ("her2st C2 (JPEG)", args.data / "her2st" / "C2_HE.jpg"),
        ("demo1 (pyramidal TIFF)", REPO / "resources" / "demo" / "slides" / "demo1.tiff"),
        ("CMU-1 small region (SVS)", args.data / "slides" / "cmu-1-small-region.svs"),
    ]
    print(f"{'slide':26} {'px':>13} {'vips s':>8} {'deepzoom s':>11} {'deepzoom/vips':>14} "
          f"{'tiles':>6} {'MB vips':>8} {'MB dz':>7}")
    for label, path in slides:
        if not path.exists():
            print(f"{label:26} missing: {path}")
            continue
        vips = run(path, "vips", args.repeat)
        dz = run(path, "deepzoom", args.repeat)
        if vips is not None and vips["levels"] != dz["levels"]:
            print(f"  WARNING: tile grids differ: {vips['levels']} vs {dz['levels']}")
        size = "x".join(map(str, dz["size"]))
        ratio = f"{dz['seconds'] / vips['seconds']:.1f}x" if vips else "-"
        print(f"{label:26} {size:>13} "
              f"{vips['seconds'] if vips else float('nan'):8.2f} {dz['seconds']:11.2f} "
              f"{ratio:>14} {dz['files']:6d} "
              f"{vips['bytes'] / 1e6 if vips else float('nan'):8.1f} {dz['bytes'] / 1e6:7.1f}")


if __name__ == "__main__":
    main()
