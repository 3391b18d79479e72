"""PNG zlib level of the overlays: CPU seconds and bytes per level, side by side.

Re-encodes finished overlay PNGs (a demo run's ``results/heatmaps/{head}/{sample}/*.png``)
at each zlib level with PIL, in one process, and prints CPU seconds, total KiB and both as
ratios to level 6 (PIL's default, used before). The overlays are written at
:data:`slide2expr.heatmap.overlay.PNG_COMPRESS_LEVEL`.

Run: ``python benchmarks/png_levels.py results/heatmaps/mlp/demo1/*.png``.
"""

from __future__ import annotations

import argparse
import io
import time

from PIL import Image


def encode(frames: list[Image.Image], level: int) -> tuple[float, int]:
    """CPU seconds and total bytes of writing every frame at zlib ``level``."""
    start, size = time.process_time(), 0
    for frame in frames:
        buffer = io.BytesIO()
        frame.save(buffer, format="PNG", compress_level=level)
        size += buffer.tell()
    return time.process_time() - start, size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pngs", nargs="+", help="overlay PNGs to re-encode")
    parser.add_argument("--levels", type=int, nargs="+", default=[6, 3, 2, 1])
    args = parser.parse_args()
    frames = [Image.open(p).convert("RGB") for p in args.pngs]
    rows = {level: encode(frames, level) for level in args.levels}
    base_s, base_b = rows.get(6, next(iter(rows.values())))
    print(f"{len(frames)} PNGs, first {frames[0].size[0]}x{frames[0].size[1]} px")
    print("| zlib level | CPU s | KiB | time vs 6 | size vs 6 |\n| --- | --- | --- | --- | --- |")
    for level, (sec, size) in rows.items():
        print(f"| {level} | {sec:.2f} | {size // 1024} | {sec / base_s:.2f} | {size / base_b:.2f} |")


if __name__ == "__main__":
    main()
