"""Extraction throughput and memory, in one run on this machine, this checkout beside another.

Prints, for this checkout's ``src`` and (``--before-src DIR``) another one, side by side:

1. bare forward throughput of the encoder on random tensors (images/s), same batch size,
   threads, device and precision as the pipeline, in a process of its own;
2. full pipeline throughput on a real slide (tiles/s): read from the slide, normalise, embed,
   write the h5 file; each pipeline run sits between two bare-forward runs;
3. their ratio (goal >= 0.95 on the CPU: reading and writing cost next to nothing), and the
   same ratio measured interleaved in one process (``--rounds`` rounds, each a bare forward
   of ``2 x batch`` random images and a pipeline run over ``2 x batch`` tiles of the pyramid,
   their order alternating; the encoder built once): on a shared machine the load moves
   between the processes of the sandwich above, not between the halves of a round;
4. peak PSS (main process + reader workers) on the pyramid for a slide with 10x more tiles than
   another (must stay flat: features stream to disk);
5. peak PSS of extracting a her2st section read from its JPEG (``--jpeg-tiles`` tiles of each
   of spots, ctx300 and ctx1000, Macenko): one job for all three tilings where the checkout has
   ``extract_tilings``, else one process per tiling (the largest counts);

and, for this checkout, where a pipeline tile's time goes: decode, resize, stain
normalisation, collation (the rest of reading a batch), forward, h5 writes, the rest.

The pyramids are tiled, JPEG-compressed TIFFs (read by OpenSlide) cut from a real her2st H&E
image at 0.69 um/px; tiles are 224 px at 0.5 um/px, as the tile stage makes them.

Usage::

    python benchmarks/extract_throughput.py [--encoder efficientnet_lite0] [--device auto]
        [--batch-size 32] [--threads T] [--num-workers N] [--small 100] [--jpeg-tiles 64]
        [--rounds 6] [--before-src DIR] [--data ../shared/data]
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


class PeakPss:
    """Peak PSS of this process and its children, sampled every 0.1 s in a thread."""

    def __init__(self) -> None:
        import psutil

        self.me = psutil.Process()
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        import psutil

        while not self._stop.is_set():
            total = 0
            for p in [self.me, *self.me.children(recursive=True)]:
                try:
                    total += _pss(p)
                except (psutil.Error, OSError):
                    pass
            self.peak = max(self.peak, total)
            time.sleep(0.1)

    def __enter__(self) -> PeakPss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def child(args: argparse.Namespace) -> None:
    """Run one extraction and report throughput and peak PSS of this process tree."""
    from slide2expr.extract.run import extract_features

    timers = install_stage_timers() if args.stages else None
    with PeakPss() as pss:
        cpu0 = pss.me.cpu_times()
        result = extract_features(args.tiles, args.out, encoder=args.encoder,
                                  batch_size=args.batch_size, num_workers=args.num_workers,
                                  device=args.device, progress=False, resume=False,
                                  stain_normalize=args.stain)
    cpu1 = pss.me.cpu_times()  # reader workers are joined by now: their time is in children_*
    cpu = sum(getattr(cpu1, f) - getattr(cpu0, f)
              for f in ("user", "system", "children_user", "children_system"))
    out = {"tiles": result.n_tiles, "tiles_per_s": result.tiles_per_s,
           "cpu_s_per_tile": cpu / result.n_tiles, "seconds": result.seconds,
           "device": result.device, "peak_rss_mb": pss.peak / 2**20}
    if timers is not None:
        out["stages_s"] = dict(timers)
    print(json.dumps(out))


def install_stage_timers() -> dict[str, float]:
    """Wrap the pipeline's steps with wall-clock timers (0 reader workers, no reader thread:
    one thread does every step in turn)."""
    from slide2expr.contracts import features
    from slide2expr.extract import run, stain
    from slide2expr.inputs import slides

    timers: dict[str, float] = dict.fromkeys(
        ("decode", "read_region_mpp", "stain", "getitem", "forward", "h5_write"), 0.0)

    def timed(owner: object, name: str, key: str) -> None:
        real = getattr(owner, name)

        def wrapper(*a: object, **k: object) -> object:
            t0 = time.perf_counter()
            try:
                return real(*a, **k)
            finally:
                timers[key] += time.perf_counter() - t0

        setattr(owner, name, wrapper)

    run.READ_AHEAD = 0  # steps in turn, each timed (a reader thread would overlap them)
    timed(slides.Slide, "_checked_read", "decode")
    timed(slides.Slide, "read_region_mpp", "read_region_mpp")
    timed(stain.StainNormalizer, "__call__", "stain")
    timed(run.TileRegionDataset, "__getitem__", "getitem")
    timed(run, "embed_batch", "forward")
    timed(features.FeatureWriter, "write", "h5_write")
    return timers


def interleaved_child(args: argparse.Namespace) -> None:
    """Bare forward and pipeline in alternation in this process; print their rates."""
    import torch

    from slide2expr.contracts.tiles import TileSet, read_tiles
    from slide2expr.extract.encoders import get_encoder
    from slide2expr.extract.run import (
        autocast_dtype,
        embed_batch,
        extract_features,
        prepare_module,
        resolve_device,
    )

    dev = resolve_device(args.device)
    enc = get_encoder(args.encoder)
    module = prepare_module(enc, dev)
    amp = autocast_dtype(dev)
    n = 2 * args.batch_size
    images = torch.randint(0, 256, (args.batch_size, 224, 224, 3), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(0))
    tiles = read_tiles(args.tiles)

    def bare() -> tuple[float, float]:
        t0, c0 = time.perf_counter(), time.process_time()
        with torch.inference_mode():
            for _ in range(n // args.batch_size):
                embed_batch(module, images, enc, dev, amp).cpu()
        return time.perf_counter() - t0, time.process_time() - c0

    def pipeline(r: int) -> tuple[float, float]:
        rows = slice((r * n) % (len(tiles.coords) - n + 1), None)
        part = TileSet(tiles.coords[rows][:n], tiles.attrs)
        t0, c0 = time.perf_counter(), time.process_time()
        extract_features(part, args.out.parent / f"round{r}.h5", encoder=enc,
                         batch_size=args.batch_size, num_workers=args.num_workers,
                         device=args.device, progress=False, resume=False)
        return time.perf_counter() - t0, time.process_time() - c0

    bare()  # warm-up: the chunk shapes' kernels
    rounds = []
    for r in range(args.rounds):
        first, second = (bare, pipeline) if r % 2 == 0 else (pipeline, bare)
        a = first() if first is bare else first(r)
        b = second() if second is bare else second(r)
        rounds.append((a, b) if first is bare else (b, a))
    print(json.dumps({"n": n, "rounds": rounds}))


def bare_child(args: argparse.Namespace) -> None:
    """Bare forward in a process of its own (the checkout on PYTHONPATH)."""
    rate, cpu = bare_forward(args.encoder, args.device, args.batch_size, args.forward_seconds)
    print(json.dumps({"images_per_s": rate, "cpu_s_per_image": cpu}))


def jpeg_child(args: argparse.Namespace) -> None:
    """Extract the given tilings of one her2st section from its JPEG; print the peak PSS."""
    from slide2expr.extract import run

    jobs = [(t, args.out.parent / f"{t.stem}.features.h5") for t in args.jpeg_tiling]
    kw = {"encoder": args.encoder, "batch_size": 64, "num_workers": args.num_workers,
          "device": args.device, "progress": False, "resume": False, "stain_normalize": "macenko"}
    with PeakPss() as pss:
        t0 = time.perf_counter()
        if len(jobs) > 1:
            run.extract_tilings(jobs, **kw)
        else:
            run.extract_features(*jobs[0], **kw)
        seconds = time.perf_counter() - t0
    print(json.dumps({"peak_pss_mb": pss.peak / 2**20, "seconds": seconds}))


def run_interleaved(tiles: Path, out: Path, args: argparse.Namespace, workers: int,
                    src: Path) -> dict[str, float]:
    """Ratio pipeline / bare forward from alternating rounds in one process."""
    extra = ["--interleaved-child", "--tiles", str(tiles), "--out", str(out), "--num-workers",
             str(workers), "--rounds", str(args.rounds)]
    res = _run_json(_child_cmd(args, *extra), src)
    ratios = [bare[0] / pipe[0] for bare, pipe in res["rounds"]]
    bare_s = sum(bare[0] for bare, _ in res["rounds"])
    pipe_s = sum(pipe[0] for _, pipe in res["rounds"])
    n_all = res["n"] * len(res["rounds"])
    return {"ratio": bare_s / pipe_s, "median": float(np.median(ratios)),
            "min": min(ratios), "max": max(ratios), "bare": n_all / bare_s,
            "pipe": n_all / pipe_s,
            "bare_cpu_ms": 1000 * sum(b[1] for b, _ in res["rounds"]) / n_all,
            "pipe_cpu_ms": 1000 * sum(p[1] for _, p in res["rounds"]) / n_all}


def _child_cmd(args: argparse.Namespace, *extra: str) -> list[str]:
    cmd = [sys.executable, __file__, "--encoder", args.encoder, "--batch-size",
           str(args.batch_size), "--device", args.device, "--forward-seconds",
           str(args.forward_seconds), *extra]
    return cmd + (["--threads", str(args.threads)] if args.threads else [])


def _run_json(cmd: list[str], src: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(src)}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode:
        sys.exit(proc.stderr[-3000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run_child(tiles: Path, out: Path, args: argparse.Namespace, workers: int, src: Path,
              *, stages: bool = False, stain: str = "none") -> dict:
    extra = ["--child", "--tiles", str(tiles), "--out", str(out), "--num-workers", str(workers),
             "--stain", stain] + (["--stages"] if stages else [])
    return _run_json(_child_cmd(args, *extra), src)


def run_bare(args: argparse.Namespace, src: Path) -> dict:
    return _run_json(_child_cmd(args, "--bare-child"), src)


def has_tilings(src: Path) -> bool:
    return "def extract_tilings" in (src / "slide2expr" / "extract" / "run.py").read_text()


def jpeg_peak(args: argparse.Namespace, src: Path, tiles: list[Path], workers: int) -> dict:
    """Peak PSS of the section's tilings: one job, or (older checkouts) one job each."""
    groups = [tiles] if has_tilings(src) else [[t] for t in tiles]
    runs = []
    for group in groups:
        extra = ["--jpeg-child", "--out", str(group[0].parent / "x.h5"), "--num-workers",
                 str(workers), "--jpeg-tiling", *map(str, group)]
        runs.append(_run_json(_child_cmd(args, *extra), src))
    return {"peak_pss_mb": max(r["peak_pss_mb"] for r in runs),
            "seconds": sum(r["seconds"] for r in runs), "jobs": len(runs)}


def make_jpeg_tiles(data: Path, tmp: Path, n: int) -> list[Path]:
    """``n`` spots of her2st C2 (read from its JPEG) and their 300 and 1000 um windows."""
    from slide2expr.contracts.tiles import TileSet, write_tiles
    from slide2expr.inputs.slides import open_slide
    from slide2expr.inputs.spots import read_spot_positions
    from slide2expr.tile.context import context_windows
    from slide2expr.tile.grid import TilingParams, spot_tiles

    her2st = data / "her2st"
    with open_slide(her2st / "C2_HE.jpg", sheet_mpp=HER2ST_MPP) as slide:
        table = read_spot_positions(her2st / "C2_selection.tsv",
                                    counts_path=her2st / "C2.tsv.gz")
        spots = spot_tiles(slide, table, "C2", TilingParams(), source="C2")
    spots = TileSet(spots.coords[:n], spots.attrs, spot_ids=spots.spot_ids[:n])
    paths = []
    for name, tiles in (("spots", spots), ("ctx300", context_windows(spots, 300)),
                        ("ctx1000", context_windows(spots, 1000))):
        (tmp / "jpeg").mkdir(exist_ok=True)
        paths.append(tmp / "jpeg" / f"{name}.h5")
        write_tiles(paths[-1], tiles)
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--encoder", default="efficientnet_lite0")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all)")
    parser.add_argument("--num-workers", type=int, default=None,
                        help="reader workers (default: the pipeline's default)")
    parser.add_argument("--small", type=int, default=100, help="tiles of the small slide")
    parser.add_argument("--jpeg-tiles", type=int, default=64,
                        help="spots of her2st C2 (and as many windows of each size)")
    parser.add_argument("--forward-seconds", type=float, default=15.0)
    parser.add_argument("--rounds", type=int, default=6,
                        help="rounds of the interleaved ratio (0: skip it)")
    parser.add_argument("--skip-sandwich", action="store_true",
                        help="only the interleaved ratio and the stage times (no PSS runs)")
    parser.add_argument("--before-src", type=Path, default=None,
                        help="another checkout's src folder, measured side by side")
    parser.add_argument("--data", type=Path, default=Path(os.environ.get(
        "SLIDE2EXPR_TEST_DATA", REPO.parent / "shared" / "data")))
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--bare-child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--jpeg-child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--interleaved-child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--stages", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--stain", default="none", help=argparse.SUPPRESS)
    parser.add_argument("--jpeg-tiling", type=Path, nargs="*", help=argparse.SUPPRESS)
    parser.add_argument("--tiles", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    children = {"child": child, "bare_child": bare_child, "jpeg_child": jpeg_child,
                "interleaved_child": interleaved_child}
    chosen = [name for name in children if getattr(args, name)]
    if chosen:
        children[chosen[0]](args)
        return

    import torch
    from PIL import Image

    from slide2expr.extract.run import available_cores, default_num_workers, resolve_device

    Image.MAX_IMAGE_PIXELS = None
    dev = resolve_device(args.device)
    workers = (default_num_workers(dev, args.threads or available_cores())
               if args.num_workers is None else args.num_workers)
    srcs = {"this checkout": REPO / "src"}
    if args.before_src:
        srcs = {"before": args.before_src.resolve(), **srcs}
    print(f"machine: {available_cores()} cores, torch threads {torch.get_num_threads()}, "
          f"device {dev}"
          f"{' (' + torch.cuda.get_device_name(dev) + ')' if dev.type == 'cuda' else ''}; "
          f"encoder {args.encoder}, batch {args.batch_size}, {workers} reader worker(s); "
          f"load average {os.getloadavg()[0]:.1f}")
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
        jpeg_tiles = make_jpeg_tiles(args.data, tmp, args.jpeg_tiles)

        if args.rounds:
            (tmp / "inter").mkdir()
            inter = {label: run_interleaved(tiles["big"], tmp / "inter" / "x.h5", args,
                                            workers, src) for label, src in srcs.items()}
            print_interleaved(inter, args)
        rows: dict[str, dict[str, float]] = {}
        for label, src in srcs.items():
            if args.skip_sandwich:
                break
            before = run_bare(args, src)
            big = run_child(tiles["big"], tmp / "big.h5", args, workers, src)
            after = run_bare(args, src)
            small = run_child(tiles["small"], tmp / "small.h5", args, workers, src)
            jpeg = jpeg_peak(args, src, jpeg_tiles, workers)
            fwd = (before["images_per_s"] + after["images_per_s"]) / 2
            fwd_cpu = (before["cpu_s_per_image"] + after["cpu_s_per_image"]) / 2
            rows[label] = {
                "bare forward, images/s": fwd,
                f"pipeline, tiles/s ({counts['big']} tiles, pyramid)": big["tiles_per_s"],
                "ratio pipeline / bare forward": big["tiles_per_s"] / fwd,
                "CPU ms per tile, pipeline": 1000 * big["cpu_s_per_tile"],
                "CPU ms per image, bare forward": 1000 * fwd_cpu,
                f"peak PSS MB, pyramid, {counts['small']} tiles": small["peak_rss_mb"],
                f"peak PSS MB, pyramid, {counts['big']} tiles": big["peak_rss_mb"],
                f"peak PSS MB, her2st C2 JPEG, 3 x {len(read_rows(jpeg_tiles[0]))} tiles "
                "(spots, ctx300, ctx1000; Macenko)": jpeg["peak_pss_mb"],
                "her2st C2 JPEG: extract jobs (processes)": float(jpeg["jobs"]),
                "her2st C2 JPEG: wall s, all jobs": jpeg["seconds"],
            }
            print(f"[{label}: {src}] done, load average {os.getloadavg()[0]:.1f}", flush=True)
        if rows:
            print_table(rows)

        stages = run_child(tiles["big"], tmp / "stages.h5", args, 0, REPO / "src", stages=True,
                           stain="macenko")
        print_stages(stages)
        print(f"\nload average now {os.getloadavg()[0]:.1f}")


def read_rows(path: Path) -> np.ndarray:
    from slide2expr.contracts.tiles import read_tiles

    return read_tiles(path).coords


def print_table(rows: dict[str, dict[str, float]]) -> None:
    labels = list(rows)
    print("\n| measure | " + " | ".join(labels) + " |")
    print("| --- |" + " --- |" * len(labels))
    for key in rows[labels[0]]:
        cells = " | ".join(f"{rows[label][key]:.2f}" if "ratio" in key else
                           f"{rows[label][key]:.1f}" for label in labels)
        print(f"| {key} | {cells} |")


def print_interleaved(inter: dict[str, dict[str, float]], args: argparse.Namespace) -> None:
    """The interleaved ratios, one column per checkout."""
    labels = list(inter)
    print(f"\ninterleaved in one process, {args.rounds} rounds of {2 * args.batch_size} tiles "
          f"(load average now {os.getloadavg()[0]:.1f}):")
    print("| measure | " + " | ".join(labels) + " |")
    print("| --- |" + " --- |" * len(labels))
    for key, name, fmt in (
            ("ratio", "ratio pipeline / bare forward (all rounds pooled)", "{:.3f}"),
            ("median", "ratio, median of the rounds", "{:.3f}"),
            ("min", "ratio, lowest round", "{:.3f}"), ("max", "ratio, highest round", "{:.3f}"),
            ("bare", "bare forward, images/s", "{:.1f}"), ("pipe", "pipeline, tiles/s", "{:.1f}"),
            ("bare_cpu_ms", "CPU ms per image, bare forward", "{:.1f}"),
            ("pipe_cpu_ms", "CPU ms per tile, pipeline", "{:.1f}")):
        print(f"| {name} | " + " | ".join(fmt.format(inter[lb][key]) for lb in labels) + " |")


def print_stages(run: dict) -> None:
    """Per-tile wall ms of each step of one pipeline run (0 workers, Macenko on)."""
    st, n = run["stages_s"], run["tiles"]
    decode, region = st["decode"], st["read_region_mpp"]
    parts = {
        "decode (slide read)": decode,
        "resize to 224 px": region - decode,
        "stain normalisation (Macenko)": st["stain"],
        "collation (rest of reading a batch)": st["getitem"] - region - st["stain"],
        "forward (normalise + encoder)": st["forward"],
        "h5 writes": st["h5_write"],
    }
    parts["the rest (DataLoader, loop)"] = run["seconds"] - st["getitem"] - st["forward"] \
        - st["h5_write"]
    print(f"\nwhere a pipeline tile's wall time goes (this checkout, {n} tiles, 0 workers, "
          "Macenko on):")
    print("| step | ms per tile | share |")
    print("| --- | --- | --- |")
    for name, seconds in parts.items():
        print(f"| {name} | {1000 * seconds / n:.2f} | {100 * seconds / run['seconds']:.1f}% |")

if __name__ == "__main__":
    main()
