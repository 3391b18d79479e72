"""Extraction throughput and memory, in one run on this machine.

Prints:

1. bare forward throughput of the encoder on random tensors (images/s), same batch size,
   threads, device and precision as the pipeline;
2. full pipeline throughput on a real slide (tiles/s): read from the slide in DataLoader
   workers, normalise, embed, write the h5 file;
3. their ratio (target >= 0.8: reading is never the bottleneck);
4. peak RSS (main process + reader workers) for a slide with 10x more tiles than another
   (must stay flat: features stream to disk).

The slides are pyramidal, tiled, JPEG-compressed TIFFs (read by OpenSlide) cut from a real
her2st H&E image at 0.69 um/px; tiles are 224 px at 0.5 um/px, as the tile stage makes them.

Usage::

    python benchmarks/extract_throughput.py [--encoder efficientnet_lite0] [--device auto]
        [--batch-size 32] [--threads T] [--num-workers N [N ...]] [--small 100]
        [--data ../shared/data]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
HER2ST_MPP = 0.69


def make_slide(image: np.ndarray, path: Path, mpp: float) -> None:
    """Write ``image`` as a tiled JPEG pyramid with a resolution tag (OpenSlide-readable)."""
    import tifffile
    from PIL import Image

    levels = [image]
    while min(levels[-1].shape[:2]) > 1024:
        h, w = levels[-1].shape[:2]
        levels.append(np.asarray(Image.fromarray(levels[-1]).resize((w // 4, h // 4),
                                                                     Image.BILINEAR)))
    with tifffile.TiffWriter(path, bigtiff=False) as tif:
        for i, level in enumerate(levels):
            ds = image.shape[1] / level.shape[1]
            tif.write(level, tile=(256, 256), compression="jpeg", photometric="rgb",
                      resolution=(1e4 / (mpp * ds), 1e4 / (mpp * ds)), resolutionunit="CENTIMETER",
                      subfiletype=1 if i else 0, metadata=None)


def make_tiles(slide_path: Path, out: Path, *, max_tiles: int | None = None) -> int:
    """A full grid of 224 px tiles at 0.5 um/px over the slide (no tissue filter)."""
    from slide2expr.contracts.tiles import TileSet, write_tiles
    from slide2expr.inputs.slides import open_slide

    with open_slide(slide_path) as slide:
        size0 = 224 * 0.5 / slide.mpp
        w0, h0 = slide.dimensions
        xs = np.arange(0, w0 - size0 + 1e-6, size0)
        ys = np.arange(0, h0 - size0 + 1e-6, size0)
        gx, gy = np.meshgrid(xs, ys)
        coords = np.stack([gx.ravel(), gy.ravel()], 1).astype(np.int64)[:max_tiles]
        attrs = {"sample_id": slide_path.stem, "slide": str(slide_path), "slide_mpp": slide.mpp,
                 "mpp_source": slide.mpp_source, "target_mpp": 0.5, "tile_px": 224,
                 "tile_px_level0": size0, "level0_width": w0, "level0_height": h0,
                 "mode": "grid"}
    write_tiles(out, TileSet(coords, attrs))
    return len(coords)


def bare_forward(encoder: str, device: str, batch_size: int,
                 seconds: float = 20.0) -> tuple[float, float]:
    """Images/s and CPU s per image of the encoder alone on random uint8 batches."""
    import torch

    from slide2expr.extract.encoders import get_encoder
    from slide2expr.extract.run import autocast_dtype, embed_batch, prepare_module, resolve_device

    dev = resolve_device(device)
    enc = get_encoder(encoder)
    module = prepare_module(enc, dev)
    amp = autocast_dtype(dev)
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (batch_size, 224, 224, 3), dtype=torch.uint8, generator=gen)
    if dev.type == "cuda":
        images = images.pin_memory()
    with torch.inference_mode():
        for _ in range(2):
            embed_batch(module, images, enc, dev, amp).cpu()
        n, t0, c0 = 0, time.perf_counter(), time.process_time()
        while time.perf_counter() - t0 < seconds or n < 3 * batch_size:
            embed_batch(module, images, enc, dev, amp).cpu()
            n += batch_size
        return n / (time.perf_counter() - t0), (time.process_time() - c0) / n


def _pss(proc) -> int:
    """Proportional set size in bytes: shared pages (torch, the model) that reader workers
    inherit are split between them, not counted once per process. Read from the kernel's
    smaps_rollup (cheap); psutil's memory_full_info parses all of smaps and costs ~20 ms of
    CPU a call, enough to slow the measured pipeline."""
    try:
        with open(f"/proc/{proc.pid}/smaps_rollup") as fh:
            for line in fh:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
    except FileNotFoundError:
        pass
    return proc.memory_info().rss


def child(args: argparse.Namespace) -> None:
    """Run one extraction and report throughput and peak RSS of this process tree."""
    import psutil

    from slide2expr.extract.run import extract_features

    me = psutil.Process()
    peak = {"rss": 0}
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            total = 0
            for p in [me, *me.children(recursive=True)]:
                try:
                    total += _pss(p)
                except (psutil.Error, OSError):
                    pass
            peak["rss"] = max(peak["rss"], total)
            time.sleep(0.2)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    cpu0 = me.cpu_times()
    result = extract_features(args.tiles, args.out, encoder=args.encoder,
                              batch_size=args.batch_size, num_workers=args.num_workers,
                              device=args.device, progress=False, resume=False)
    stop.set()
    thread.join()
    cpu1 = me.cpu_times()  # reader workers are joined by now: their time is in children_*
    cpu = sum(getattr(cpu1, f) - getattr(cpu0, f)
              for f in ("user", "system", "children_user", "children_system"))
    print(json.dumps({"tiles": result.n_tiles, "tiles_per_s": result.tiles_per_s,
                      "cpu_s_per_tile": cpu / result.n_tiles,
                      "seconds": result.seconds, "device": result.device,
                      "peak_rss_mb": peak["rss"] / 2**20}))


def run_child(tiles: Path, out: Path, args: argparse.Namespace, workers: int) -> dict:
    cmd = [sys.executable, __file__, "--child", "--tiles", str(tiles), "--out", str(out),
           "--encoder", args.encoder, "--batch-size", str(args.batch_size), "--device",
           args.device, "--num-workers", str(workers)]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        sys.exit(proc.stderr)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--encoder", default="efficientnet_lite0")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all)")
    parser.add_argument("--num-workers", type=int, nargs="*", default=None,
                        help="reader workers to compare (default: the pipeline's default)")
    parser.add_argument("--small", type=int, default=100, help="tiles of the small slide")
    parser.add_argument("--forward-seconds", type=float, default=15.0)
    parser.add_argument("--data", type=Path, default=Path(os.environ.get(
        "SLIDE2EXPR_TEST_DATA", REPO.parent / "shared" / "data")))
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--tiles", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if args.child:
        args.num_workers = args.num_workers[0]
        child(args)
        return

    import torch
    from PIL import Image

    from slide2expr.extract.run import available_cores, default_num_workers, resolve_device

    Image.MAX_IMAGE_PIXELS = None
    dev = resolve_device(args.device)
    default_workers = default_num_workers(dev, args.threads or available_cores())
    worker_counts = args.num_workers or [default_workers]
    print(f"machine: {available_cores()} cores, torch threads {torch.get_num_threads()}, "
          f"device {dev}"
          f"{' (' + torch.cuda.get_device_name(dev) + ')' if dev.type == 'cuda' else ''}; "
          f"encoder {args.encoder}, batch {args.batch_size}; load average "
          f"{os.getloadavg()[0]:.1f}")
    with tempfile.TemporaryDirectory(prefix="s2e-bench-") as tmp_dir:
        tmp = Path(tmp_dir)
        image = np.asarray(Image.open(args.data / "her2st" / "C2_HE.jpg").convert("RGB"))
        tile0 = 224 * 0.5 / HER2ST_MPP  # level-0 px of one tile
        h, w = image.shape[:2]
        side_big = int(np.ceil(np.sqrt(10 * args.small)) * tile0) + 1
        side_small = int(np.ceil(np.sqrt(args.small)) * tile0) + 1
        if side_big > min(h, w):
            sys.exit(f"--small {args.small} needs a {side_big} px square; the image is {w}x{h}")
        cy, cx = h // 2, w // 2
        counts, tiles = {}, {}
        for name, side in (("small", side_small), ("big", side_big)):
            crop = image[cy - side // 2:cy - side // 2 + side, cx - side // 2:cx - side // 2 + side]
            make_slide(np.ascontiguousarray(crop), tmp / f"{name}.tiff", HER2ST_MPP)
            tiles[name] = tmp / f"{name}_tiles.h5"
            limit = args.small * (10 if name == "big" else 1)
            counts[name] = make_tiles(tmp / f"{name}.tiff", tiles[name], max_tiles=limit)
        del image

        # Throughput: each pipeline run sits between two bare-forward runs, so a machine
        # shared with other jobs loads both sides of the ratio alike.
        big = {}
        for workers in worker_counts:
            before = bare_forward(args.encoder, args.device, args.batch_size, args.forward_seconds)
            big[workers] = run_child(tiles["big"], tmp / "big.h5", args, workers)
            after = bare_forward(args.encoder, args.device, args.batch_size, args.forward_seconds)
            fwd = (before[0] + after[0]) / 2
            fwd_cpu = (before[1] + after[1]) / 2
            run = big[workers]
            print(f"\n[{workers} reader worker(s)]")
            print(f"bare forward ({args.encoder}, random tensors): {fwd:.1f} images/s "
                  f"({before[0]:.1f} before, {after[0]:.1f} after; "
                  f"{1000 * fwd_cpu:.1f} ms CPU per image)")
            print(f"full pipeline, real slide ({counts['big']} tiles): "
                  f"{run['tiles_per_s']:.1f} tiles/s")
            print(f"ratio pipeline / bare forward: {run['tiles_per_s'] / fwd:.2f}  (target >= 0.8)")
            print(f"CPU time per tile: pipeline {1000 * run['cpu_s_per_tile']:.1f} ms (all "
                  f"processes) vs bare forward {1000 * fwd_cpu:.1f} ms: reading and writing add "
                  f"{100 * (run['cpu_s_per_tile'] / fwd_cpu - 1):.0f}%")

        workers = worker_counts[0]
        small = run_child(tiles["small"], tmp / "small.h5", args, workers)
        print(f"\npeak memory (PSS, main + {workers} worker(s)): {small['peak_rss_mb']:.0f} MB for "
              f"{counts['small']} tiles, {big[workers]['peak_rss_mb']:.0f} MB for {counts['big']} "
              f"tiles (x{big[workers]['peak_rss_mb'] / small['peak_rss_mb']:.2f} for "
              f"x{counts['big'] / counts['small']:.0f} tiles); load average now "
              f"{os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
