"""A 40x-size slide: generate it, then time tiling, reading, extraction, and kill-and-resume.

Generates (never into the repository: into CACHE_DIR, reused when it exists) a pyramidal
JPEG BigTIFF of 100,000 x 80,000 px at 0.25 um/px (25 x 20 mm, the size of a 40x diagnostic
slide) with H&E-like tissue over about 40% of the glass, written tile by tile with tifffile:
tiles are composed and JPEG-encoded one at a time and streamed to the file, so memory stays
a few megabytes whatever the slide size. Then, each in a fresh process:

1. ``slide2expr tile`` on it and on a small slide: seconds and peak RSS (``/usr/bin/time -v``);
2. reader throughput of one reader process with the encoder skipped: the extraction's own
   tile dataset (:class:`slide2expr.extract.run.TileRegionDataset`) over a run of tissue tiles;
3. CPU extraction throughput over a bounded subset, as a ratio to the encoder's bare forward
   (``benchmarks/extract_throughput.py``'s code);
4. kill at 50% and resume: ``slide2expr extract`` on a subset, SIGKILLed once half of its
   tiles are done, run again, and compared with an uninterrupted run.

    python benchmarks/wsi_40x.py CACHE_DIR [--width 100000 --height 80000]
        [--small ../shared/data/slides/cmu-1-small-region.svs] [--read-tiles 2000]
        [--extract-tiles 256] [--resume-tiles 384]

Prints one JSON line per measurement.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
MPP = 0.25          # level 0, um/px (--mpp 0.5 writes the same glass as a 20x scan)
BANK_MPP = 0.25     # resolution the tissue textures are drawn at
TILE = 512          # TIFF tile edge, px
MAP_UM = 16.0       # resolution of the tissue-score map the tiles are drawn from, um/px
QUALITY = 80        # JPEG quality
BANK = 32           # distinct tissue textures at level 0
WHITE = 243         # background glass


# -- generation ----------------------------------------------------------------------------
def tissue_score(w0: int, h0: int, coverage: float, seed: int) -> tuple[np.ndarray, float]:
    """A smooth score map at MAP_UM um/px and the threshold above which it is tissue:
    several tissue sections (ellipses) with ragged, lobed edges and holes."""
    import cv2

    rng = np.random.default_rng(seed)
    mw, mh = int(np.ceil(w0 * MPP / MAP_UM)) + 2, int(np.ceil(h0 * MPP / MAP_UM)) + 2
    coarse = rng.random((mh // 24 + 2, mw // 24 + 2)).astype(np.float32)
    score = cv2.resize(coarse, (mw, mh), interpolation=cv2.INTER_CUBIC)
    fine = cv2.GaussianBlur(rng.random((mh, mw)).astype(np.float32), (0, 0), 3)
    yy, xx = np.mgrid[0:mh, 0:mw].astype(np.float32)
    env = np.zeros((mh, mw), np.float32)
    for _ in range(4):  # tissue sections
        cx, cy = rng.uniform(0.2, 0.8) * mw, rng.uniform(0.2, 0.8) * mh
        ax, ay = rng.uniform(0.12, 0.25) * mw, rng.uniform(0.12, 0.25) * mh
        env = np.maximum(env, np.exp(-(((xx - cx) / ax) ** 2 + ((yy - cy) / ay) ** 2)))
    score = env + 0.35 * score + 0.6 * (fine - fine.mean())
    return score, float(np.quantile(score, 1 - coverage))


def texture_bank(seed: int) -> np.ndarray:
    """BANK tiles of H&E-like tissue at 0.25 um/px: pink fibrous stroma, purple nuclei."""
    import cv2

    rng = np.random.default_rng(seed)
    bank = np.empty((BANK, TILE, TILE, 3), np.uint8)
    for k in range(BANK):
        fib = cv2.GaussianBlur(rng.standard_normal((TILE, TILE)).astype(np.float32), (0, 0),
                               sigmaX=9, sigmaY=2)  # fibres
        fib = cv2.warpAffine(fib, cv2.getRotationMatrix2D((TILE / 2, TILE / 2),
                                                          rng.uniform(0, 180), 1.0),
                             (TILE, TILE), borderMode=cv2.BORDER_REFLECT)
        stroma = np.array([232, 160, 200], np.float32) + fib[..., None] * np.array(
            [40, 60, 35], np.float32)
        img = np.clip(stroma, 0, 255).astype(np.uint8)
        for _ in range(rng.integers(30, 90)):  # nuclei, 6-11 um across
            c = (int(rng.integers(0, TILE)), int(rng.integers(0, TILE)))
            ax = (int(rng.integers(12, 22)), int(rng.integers(9, 16)))
            colour = tuple(int(v) for v in rng.normal([90, 55, 140], 12))
            cv2.ellipse(img, c, ax, float(rng.uniform(0, 180)), 0, 360, colour, -1)
        img = cv2.GaussianBlur(img, (0, 0), 1.2)
        noise = rng.normal(0, 6, img.shape)
        bank[k] = np.clip(img + noise, 0, 255).astype(np.uint8)
    return bank


def _interp_matrix(n_out: int, start: float, step: float, n_in: int) -> np.ndarray:
    """Rows of linear-interpolation weights: output i samples input at start + i * step."""
    pos = np.clip(start + step * np.arange(n_out), 0, n_in - 1)
    lo = np.floor(pos).astype(int)
    hi = np.minimum(lo + 1, n_in - 1)
    w = np.zeros((n_out, n_in), np.float32)
    w[np.arange(n_out), lo] += 1 - (pos - lo)
    w[np.arange(n_out), hi] += pos - lo
    return w


def level_tiles(level: int, w0: int, h0: int, score: np.ndarray, thr: float,
                banks: list[np.ndarray], cache: dict[str, bytes]) -> Iterator[bytes]:
    """JPEG tiles of one pyramid level, row by row, each composed and encoded on its own."""
    import imagecodecs

    def encode(tile: np.ndarray) -> bytes:
        return imagecodecs.jpeg8_encode(tile, level=QUALITY, colorspace="RGB",
                                        outcolorspace="YCBCR", subsampling=(2, 2))

    if "white" not in cache:
        cache["white"] = encode(np.full((TILE, TILE, 3), WHITE, np.uint8))
        cache.update({f"bank{k}": encode(t) for k, t in enumerate(banks[0])})
    ds = 2 ** level
    lw, lh = -(-w0 // ds), -(-h0 // ds)
    k = level + int(round(np.log2(MPP / BANK_MPP)))  # texture pyramid level for this level
    n = 2 ** k  # bank tiles across one tile of this level
    sub = TILE // n
    px_um = MPP * ds
    for ty in range(-(-lh // TILE)):
        for tx in range(-(-lw // TILE)):
            # Score-map pixels under this tile (with a margin for interpolation).
            u0 = ((tx * TILE + 0.5) * px_um) / MAP_UM - 0.5
            v0 = ((ty * TILE + 0.5) * px_um) / MAP_UM - 0.5
            step = px_um / MAP_UM
            a, b = int(np.floor(v0)), int(np.ceil(v0 + step * TILE)) + 1
            c, d = int(np.floor(u0)), int(np.ceil(u0 + step * TILE)) + 1
            block = score[max(a, 0):b + 1, max(c, 0):d + 1]
            if block.size == 0 or block.max() <= thr:
                yield cache["white"]
                continue
            inside_img = (tx + 1) * TILE <= lw and (ty + 1) * TILE <= lh
            full = block.min() > thr and inside_img
            if full and k == 0:
                yield cache[f"bank{(tx * 73856093 ^ ty * 19349663) % BANK}"]
                continue
            # Texture: the level-0 bank tiles this tile covers, reduced to this level.
            gx = (tx * n + np.arange(n))[None, :]
            gy = (ty * n + np.arange(n))[:, None]
            ids = (gx * 73856093 ^ gy * 19349663) % BANK
            tex = banks[k][ids]  # (n, n, sub, sub, 3)
            tex = tex.transpose(0, 2, 1, 3, 4).reshape(TILE, TILE, 3)
            if not full:
                wy = _interp_matrix(TILE, v0 - max(a, 0), step, block.shape[0])
                wx = _interp_matrix(TILE, u0 - max(c, 0), step, block.shape[1])
                mask = (wy @ block @ wx.T) > thr
                # Outside the image: white (the TIFF tile's padding).
                mask[:, max(0, lw - tx * TILE):] = False
                mask[max(0, lh - ty * TILE):, :] = False
                tex = np.where(mask[..., None], tex, np.uint8(WHITE))
            yield encode(np.ascontiguousarray(tex))
    del sub


def generate(path: Path, w0: int, h0: int, coverage: float, seed: int) -> dict[str, object]:
    """Write the pyramid to ``path`` (atomically); returns what was written and how fast."""
    import tifffile
    from PIL import Image

    t0, c0 = time.perf_counter(), time.process_time()
    score, thr = tissue_score(w0, h0, coverage, seed)
    bank0 = texture_bank(seed)
    levels = 1
    while max(-(-w0 // 2 ** (levels - 1)), -(-h0 // 2 ** (levels - 1))) > 1024:
        levels += 1
    top = levels + int(round(np.log2(MPP / BANK_MPP)))
    banks = [bank0] + [np.stack([np.asarray(Image.fromarray(t).reduce(2 ** k)) for t in bank0])
                       for k in range(1, top)]
    tmp = path.with_name(path.name + ".part")
    cache: dict[str, bytes] = {}
    dims = []
    with tifffile.TiffWriter(tmp, bigtiff=True) as tif:
        for level in range(levels):
            ds = 2 ** level
            lw, lh = -(-w0 // ds), -(-h0 // ds)
            res = 1e4 / (MPP * ds)
            tif.write(level_tiles(level, w0, h0, score, thr, banks, cache), shape=(lh, lw, 3),
                      dtype=np.uint8, tile=(TILE, TILE), compression="jpeg",
                      photometric="rgb", resolution=(res, res), resolutionunit="CENTIMETER",
                      subfiletype=0 if level == 0 else 1, metadata=None)
            dims.append([lw, lh])
    os.replace(tmp, path)
    return {"what": "generate", "path": str(path), "level_dimensions": dims,
            "tissue_fraction_of_map": round(float((score > thr).mean()), 3),
            "file_gb": round(path.stat().st_size / 1e9, 2),
            "wall_s": round(time.perf_counter() - t0, 1),
            "cpu_s": round(time.process_time() - c0, 1)}


# -- measurements --------------------------------------------------------------------------
def timed(cmd: list[str], **kw: object) -> tuple[subprocess.CompletedProcess, float, float]:
    """Run under /usr/bin/time -v: (process, wall s, peak RSS MB); CPU s in ``timed.cpu``."""
    t = time.perf_counter()
    p = subprocess.run(["/usr/bin/time", "-v", *cmd], capture_output=True, text=True, **kw)
    wall = time.perf_counter() - t
    m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", p.stderr)
    if p.returncode != 0:
        sys.exit(f"{cmd} failed:\n{p.stderr[-3000:]}")
    timed.cpu = sum(float(re.search(rf"{k} time \(seconds\): ([\d.]+)", p.stderr)[1])
                    for k in ("User", "System"))
    return p, wall, int(m[1]) / 1024 if m else float("nan")


def tile_slide(slide: Path, out_dir: Path, name: str, mpp: float | None = None) -> dict[str, object]:
    """``slide2expr tile`` in a fresh process: wall seconds, peak RSS, tiles, mask source."""
    from slide2expr.contracts.tiles import read_tiles

    out = out_dir / f"{name}.tiles.h5"
    cmd = [shutil.which("slide2expr") or "slide2expr", "tile", str(slide), "--sample-id", name,
           "-o", str(out), "--qc", str(out_dir / f"{name}.qc.png")]
    if mpp:
        cmd += ["--mpp", str(mpp)]
    _, wall, rss = timed(cmd)
    tiles = read_tiles(out)
    return {"what": "tile", "slide": name, "level0": [tiles.attrs["level0_width"],
                                                      tiles.attrs["level0_height"]],
            "tiles": len(tiles), "process_wall_s": round(wall, 2), "cpu_s": round(timed.cpu, 2),
            "peak_rss_mb": round(rss),
            "mask_source": tiles.attrs.get("tissue_mask_source"),
            "mask_mpp": tiles.attrs.get("tissue_mask_mpp")}


def subset_tiles(tiles_path: Path, out: Path, n: int) -> Path:
    """The ``n`` tiles in the middle of the tile list (reading order), as a tiles file."""
    from slide2expr.contracts.tiles import TileSet, read_tiles, write_tiles

    tiles = read_tiles(tiles_path)
    start = max(0, len(tiles) // 2 - n // 2)
    write_tiles(out, TileSet(tiles.coords[start:start + n], tiles.attrs))
    return out


def read_child(tiles_path: str, batch: int) -> None:
    """(fresh process) One reader: the extraction's dataset, batches of ``batch`` tiles."""
    from slide2expr.contracts.tiles import read_tiles
    from slide2expr.extract.run import TileRegionDataset

    tiles = read_tiles(tiles_path)
    ds = TileRegionDataset(tiles.attrs["slide"], tiles.coords,
                           tile_px_level0=float(tiles.attrs["tile_px_level0"]), out_px=224,
                           slide_mpp=float(tiles.attrs["slide_mpp"]))
    ds[(0, 1)]  # open the slide outside the timing
    t, c = time.perf_counter(), time.process_time()
    for start in range(0, len(ds), batch):
        _, images = ds[(start, min(start + batch, len(ds)))]
        assert not isinstance(images, Exception), images
    wall, cpu = time.perf_counter() - t, time.process_time() - c
    print(json.dumps({"what": "read", "tiles": len(ds), "tiles_per_s": round(len(ds) / wall, 1),
                      "cpu_ms_per_tile": round(1000 * cpu / len(ds), 2)}))


def read_throughput(tiles_path: Path, batch: int) -> dict[str, object]:
    p, _, rss = timed([sys.executable, __file__, "--read-child", str(tiles_path),
                       "--batch", str(batch)])
    return json.loads(p.stdout.strip().splitlines()[-1]) | {"peak_rss_mb": round(rss)}


def extraction_ratio(tiles_path: Path, work: Path, args: argparse.Namespace) -> dict[str, object]:
    """CPU pipeline tiles/s over the subset, and the encoder's bare forward, side by side."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    import extract_throughput as et

    ns = argparse.Namespace(encoder=args.encoder, batch_size=args.batch, device="cpu",
                            threads=None)
    fwd, fwd_cpu = et.bare_forward(args.encoder, "cpu", args.batch, seconds=args.forward_seconds)
    res = et.run_child(tiles_path, work / "ratio.features.h5", ns, args.workers)
    return {"what": "extract_cpu", "encoder": args.encoder, "tiles": res["tiles"],
            "workers": args.workers, "pipeline_tiles_per_s": round(res["tiles_per_s"], 2),
            "bare_forward_img_per_s": round(fwd, 2),
            "bare_forward_cpu_ms_per_img": round(1000 * fwd_cpu, 1),
            "pipeline_cpu_ms_per_tile": round(1000 * res["cpu_s_per_tile"], 1),
            "ratio": round(res["tiles_per_s"] / fwd, 3),
            "peak_pss_mb": round(res["peak_rss_mb"])}


def kill_and_resume(tiles_path: Path, work: Path, args: argparse.Namespace) -> dict[str, object]:
    """SIGKILL ``slide2expr extract`` at half its tiles, rerun, compare with a clean run."""
    import h5py

    exe = shutil.which("slide2expr") or "slide2expr"
    base = [exe, "extract", str(tiles_path), "--encoder", args.encoder, "--device", "cpu",
            "--batch-size", str(args.batch), "--num-workers", "0", "--threads", "1"]
    ref, out = work / "ref.features.h5", work / "resumed.features.h5"
    for f in (ref, out):
        f.unlink(missing_ok=True)
        for partial in work.glob(f".{f.stem}*"):
            partial.unlink()
    _, ref_wall, _ = timed([*base, "-o", str(ref)])
    n = len(h5py.File(ref, "r")["features"])
    # Interrupted run: the progress bar on stderr says how many tiles are done.
    proc = subprocess.Popen([*base, "-o", str(out)], stderr=subprocess.PIPE, text=True,
                            bufsize=1)
    done, buf = 0, ""
    assert proc.stderr is not None
    while proc.poll() is None:
        ch = proc.stderr.read(1)
        buf = buf[-200:] + ch
        m = re.findall(r"(\d+)/(\d+) \[", buf)
        if m:
            done = int(m[-1][0])
        if done >= n // 2:
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait()
    killed_at = done
    partial = [p.name for p in work.glob(".*partial*")]
    t = time.perf_counter()
    p2 = subprocess.run([*base, "-o", str(out)], capture_output=True, text=True)
    resume_wall = time.perf_counter() - t
    if p2.returncode:
        sys.exit(p2.stderr[-3000:])
    resumed_from = re.findall(r"resuming after (\d+) of (\d+)", p2.stderr)
    a, b = h5py.File(ref, "r")["features"][:], h5py.File(out, "r")["features"][:]
    return {"what": "kill_resume", "tiles": n, "killed_after_tiles": killed_at,
            "partial_files_after_kill": partial,
            "resumed_after": int(resumed_from[0][0]) if resumed_from else None,
            "uninterrupted_s": round(ref_wall, 1), "resume_run_s": round(resume_wall, 1),
            "features_equal": bool(np.array_equal(a, b)),
            "max_abs_diff": float(np.abs(a - b).max())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("cache", type=Path, nargs="?", help="folder for the slide and outputs")
    ap.add_argument("--width", type=int, default=100_000)
    ap.add_argument("--height", type=int, default=80_000)
    ap.add_argument("--mpp", type=float, default=0.25, help="level 0, um/px: 0.25 or 0.5")
    ap.add_argument("--coverage", type=float, default=0.4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--small", type=Path, default=Path(os.environ.get(
        "SLIDE2EXPR_TEST_DATA", REPO.parent / "shared" / "data")) / "slides" /
        "cmu-1-small-region.svs")
    ap.add_argument("--read-tiles", type=int, default=2000)
    ap.add_argument("--extract-tiles", type=int, default=256)
    ap.add_argument("--resume-tiles", type=int, default=384)
    ap.add_argument("--encoder", default="efficientnet_lite0")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--forward-seconds", type=float, default=15.0)
    ap.add_argument("--only", default="generate,tile,read,extract,resume")
    ap.add_argument("--read-child", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.read_child:
        read_child(a.read_child, a.batch)
        return
    if a.cache is None:
        ap.error("give CACHE_DIR")
    a.cache.mkdir(parents=True, exist_ok=True)
    global MPP
    MPP = a.mpp
    steps = set(a.only.split(","))
    slide = a.cache / f"wsi_{a.width}x{a.height}_{a.mpp}mpp_s{a.seed}.tiff"
    if not slide.exists():
        free = shutil.disk_usage(a.cache).free / 1e9
        print(json.dumps({"what": "disk", "free_gb": round(free, 1)}), flush=True)
        print(json.dumps(generate(slide, a.width, a.height, a.coverage, a.seed)), flush=True)
    work = a.cache / f"work_{a.width}x{a.height}_{a.mpp}mpp"
    work.mkdir(exist_ok=True)
    if "tile" in steps:
        print(json.dumps(tile_slide(slide, work, "wsi40x")), flush=True)
        if a.small.exists():
            print(json.dumps(tile_slide(a.small, work, "small")), flush=True)
    tiles = work / "wsi40x.tiles.h5"
    if "read" in steps:
        sub = subset_tiles(tiles, work / "read.tiles.h5", a.read_tiles)
        print(json.dumps(read_throughput(sub, a.batch)), flush=True)
    if "extract" in steps:
        sub = subset_tiles(tiles, work / "extract.tiles.h5", a.extract_tiles)
        print(json.dumps(extraction_ratio(sub, work, a)), flush=True)
    if "resume" in steps:
        sub = subset_tiles(tiles, work / "resume.tiles.h5", a.resume_tiles)
        print(json.dumps(kill_and_resume(sub, work, a)), flush=True)


if __name__ == "__main__":
    main()
