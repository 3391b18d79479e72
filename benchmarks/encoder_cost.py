"""Extraction cost of the offline encoders on real sections, side by side in one run.

Runs the workflow's own extract job (``slide2expr extract`` on a section's spot, ctx300 and
ctx1000 tilings, Macenko, one thread, the her2st_2patients config's extract settings) once per
encoder and round, alternating the encoders' order between rounds so a change in the
machine's load falls on all of them, and prints each encoder's CPU seconds (user + system of
the job and its readers), wall seconds and peak RSS, with the CPU time relative to the first
encoder's; then the forward alone (64 random images at each encoder's input size, one thread):

    python benchmarks/encoder_cost.py RESULTS OUT --sections C3 A1 \\
        --encoders efficientnet_lite0 efficientnet_lite1 efficientnet_lite2 --rounds 2

``RESULTS`` holds the workflow's ``tiles/`` (``tiles/{spots,ctx300,ctx1000}/{section}.h5``);
features go to ``OUT`` and are deleted after each job.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

TILINGS = ("spots", "ctx300", "ctx1000")
EXTRACT = {"extract": {"batch_size": 64, "device": "cpu", "dtype": "float32",
                       "num_workers": None, "stain_normalize": "macenko",
                       "stain_reference": None, "views": []}}


def extract_once(results: Path, out: Path, section: str, encoder: str) -> dict[str, float]:
    """One extract job of ``section``'s tilings with ``encoder``: CPU s, wall s, peak RSS."""
    folder = out / encoder
    cmd = [sys.executable, "-m", "slide2expr", "extract",
           *[str(results / "tiles" / t / f"{section}.h5") for t in TILINGS]]
    for tiling in TILINGS:
        cmd += ["-o", str(folder / tiling / f"{section}.h5")]
    cmd += ["--encoder", encoder, "--threads", "1", "--no-progress",
            "--config-json", json.dumps(EXTRACT)]
    log = out / f"{encoder}_{section}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with log.open("w") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)  # the job's own rusage, its readers included
    wall = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status):
        raise SystemExit(f"{encoder} {section}: {log.read_text()[-2000:]}")
    cpu = usage.ru_utime + usage.ru_stime
    shutil.rmtree(folder)
    return {"cpu_s": cpu, "wall_s": wall, "max_rss_mb": usage.ru_maxrss / 1024}


def forward_cpu_s(encoders: list[str], rounds: int, n: int = 64) -> dict[str, float]:
    """CPU seconds of the encoders' forward alone on ``n`` random images at each one's input
    size, one thread, batch ``n``: median over ``rounds`` alternating rounds."""
    import torch

    from slide2expr.extract.encoders import get_encoder

    torch.set_num_threads(1)
    built = {e: get_encoder(e) for e in encoders}
    times: dict[str, list[float]] = {e: [] for e in encoders}
    for r in range(rounds):
        for name in encoders if r % 2 == 0 else encoders[::-1]:
            enc = built[name]
            px = enc.preprocessing.input_px
            x = torch.randn(n, 3, px, px, generator=torch.Generator().manual_seed(0))
            with torch.inference_mode():
                enc.module(x[:2])  # warm-up
                start = time.process_time()
                enc.module(x)
                times[name].append(time.process_time() - start)
    return {e: float(np.median(t)) for e, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("results", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--sections", nargs="+", default=["C3", "A1"])
    parser.add_argument("--encoders", nargs="+", default=[
        "efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"])
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    runs: dict[str, list[dict[str, float]]] = {e: [] for e in args.encoders}
    for r in range(args.rounds):
        order = args.encoders if r % 2 == 0 else args.encoders[::-1]
        for encoder in order:
            total = {"cpu_s": 0.0, "wall_s": 0.0, "max_rss_mb": 0.0}
            for section in args.sections:
                one = extract_once(args.results, args.out, section, encoder)
                total["cpu_s"] += one["cpu_s"]
                total["wall_s"] += one["wall_s"]
                total["max_rss_mb"] = max(total["max_rss_mb"], one["max_rss_mb"])
            runs[encoder].append(total)
            print(f"round {r} {encoder}: {json.dumps({k: round(v, 1) for k, v in total.items()})}",
                  flush=True)
    first = float(np.median([t["cpu_s"] for t in runs[args.encoders[0]]]))
    print(f"\n| encoder | CPU s ({'+'.join(args.sections)}, median of {args.rounds}) | "
          f"relative to {args.encoders[0]} | wall s | peak RSS MB |")
    print("| --- | --- | --- | --- | --- |")
    for encoder, totals in runs.items():
        cpu = float(np.median([t["cpu_s"] for t in totals]))
        wall = float(np.median([t["wall_s"] for t in totals]))
        rss = max(t["max_rss_mb"] for t in totals)
        each = " / ".join(f"{t['cpu_s']:.1f}" for t in totals)
        print(f"| {encoder} | {cpu:.1f} ({each}) | {cpu / first:.2f}x | {wall:.1f} | "
              f"{rss:.0f} |")
    forward = forward_cpu_s(args.encoders, max(3, args.rounds))
    print(f"\nforward alone, 64 images, 1 thread (CPU s, median of {max(3, args.rounds)}): "
          + ", ".join(f"{e} {t:.2f} ({t / forward[args.encoders[0]]:.2f}x)"
                      for e, t in forward.items()))


if __name__ == "__main__":
    main()
