"""Peak memory of the her2st extract jobs as the workflow runs them, this checkout beside another.

For each section, runs the extract rule's command line (``slide2expr extract`` of its spots,
ctx300 and ctx1000 tiles, batch 64, ``--threads 1``, Macenko) on the tiles of a finished
her2st run, once per checkout (alternating, one job at a time), and prints per job:

- the exact peak RSS of the process tree's largest process (``os.wait4``'s rusage; PSS is at
  most RSS, and RSS does not fall when other processes share the libraries' pages);
- the peak PSS of the whole process tree, sampled every 20 ms from ``/proc/PID/smaps_rollup``;
- CPU seconds and wall seconds;

and whether the two checkouts' feature files are byte-identical.

Usage::

    python benchmarks/extract_memory.py RESULTS_DIR [--sections C2 C3 C4 C5 C6]
        [--before-src DIR] [--out DIR]

``RESULTS_DIR`` is a her2st run's ``results/`` folder (its ``tiles/{spots,ctx300,ctx1000}``).
"""

from __future__ import annotations

import argparse
import filecmp
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TILINGS = ("spots", "ctx300", "ctx1000")
CONFIG = {"extract": {"batch_size": 64, "device": "auto", "dtype": "float32",
                      "num_workers": None, "stain_normalize": "macenko",
                      "stain_reference": None, "views": []}}


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(x) for x in f.read().split()]
    except OSError:
        return []


def _tree(pid: int) -> list[int]:
    out = [pid]
    for child in _children(pid):
        out += _tree(child)
    return out


def _pss_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def measure(cmd: list[str], env: dict[str, str], log: Path) -> dict[str, float]:
    """Run ``cmd``; its peak sampled PSS (tree), exact peak RSS, CPU and wall seconds."""
    log.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
        peak = 0
        while True:
            done, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if done:
                break
            peak = max(peak, sum(_pss_kb(p) for p in _tree(proc.pid)))
            time.sleep(0.02)
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"{cmd[0]} failed; see {log}")
    return {"peak_rss_mb": usage.ru_maxrss / 1024, "peak_pss_mb": peak / 1024,
            "cpu_s": usage.ru_utime + usage.ru_stime, "wall_s": time.perf_counter() - start}


def extract_cmd(tiles: Path, out: Path, section: str) -> list[str]:
    """The extract rule's command line for ``section`` (three tilings in one job)."""
    script = Path(sys.executable).with_name("slide2expr")
    cmd = [str(script), "extract", *(str(tiles / t / f"{section}.h5") for t in TILINGS)]
    for t in TILINGS:
        cmd += ["-o", str(out / t / f"{section}.h5")]
    return [*cmd, "--encoder", "efficientnet_lite0", "--threads", "1",
            "--config-json", json.dumps(CONFIG)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path, help="a her2st run's results/ folder")
    parser.add_argument("--sections", nargs="+", default=["C2", "C3", "C4", "C5", "C6"])
    parser.add_argument("--before-src", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=Path("/tmp/extract_memory"))
    args = parser.parse_args()
    srcs = {"this checkout": REPO / "src"}
    if args.before_src:
        srcs = {"before": args.before_src.resolve(), **srcs}
    shutil.rmtree(args.out, ignore_errors=True)
    rows: dict[str, dict[str, dict[str, float]]] = {}
    for section in args.sections:
        for label, src in srcs.items():
            env = {**os.environ, "PYTHONPATH": str(src), "OMP_NUM_THREADS": "1"}
            out = args.out / label.replace(" ", "_") / section
            rows.setdefault(section, {})[label] = measure(
                extract_cmd(args.results / "tiles", out, section), env, out.with_suffix(".log"))
            print(f"{section} {label}: {rows[section][label]}", flush=True)
    labels = list(srcs)
    print("\n| section | " + " | ".join(f"peak RSS MB, {lb}" for lb in labels)
          + " | " + " | ".join(f"sampled peak PSS MB, {lb}" for lb in labels)
          + " | " + " | ".join(f"CPU s, {lb}" for lb in labels) + " | features identical |")
    print("| --- " * (3 * len(labels) + 2) + "|")
    for section, by in rows.items():
        same = "-"
        if len(labels) == 2:
            dirs = [args.out / lb.replace(" ", "_") / section for lb in labels]
            same = str(all(filecmp.cmp(dirs[0] / t / f"{section}.h5",
                                       dirs[1] / t / f"{section}.h5", shallow=False)
                           for t in TILINGS))
        cells = ([f"{by[lb]['peak_rss_mb']:,.0f}" for lb in labels]
                 + [f"{by[lb]['peak_pss_mb']:,.0f}" for lb in labels]
                 + [f"{by[lb]['cpu_s']:.1f}" for lb in labels])
        print(f"| {section} | " + " | ".join(cells) + f" | {same} |")
    print(f"\nload average now {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
