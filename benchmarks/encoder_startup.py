"""Start-up cost of an extract job's encoder: imports and build, this checkout beside another.

Each measure runs in a fresh process, the checkouts alternating, ``--repeats`` times; prints
the median wall and CPU (user + sys) seconds of:

* ``import torch`` (the floor every encoder pays);
* ``import timm``;
* ``import slide2expr.extract.run`` (what an extract job imports);
* the same plus ``get_encoder(ENCODER)`` (imports, build, weights loaded from the local file).

Usage::

    python benchmarks/encoder_startup.py [--encoder efficientnet_lite0] [--repeats 5]
        [--before-src DIR]
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def snippets(encoder: str) -> dict[str, str]:
    """Measure name -> the code a fresh interpreter runs."""
    return {
        "import torch": "import torch",
        "import timm": "import timm",
        "import slide2expr.extract.run": "import slide2expr.extract.run",
        f"import + get_encoder('{encoder}')": (
            "import slide2expr.extract.run\n"
            "from slide2expr.extract.encoders import get_encoder\n"
            f"get_encoder({encoder!r})"),
        "timm imported by the job": (
            "import sys, slide2expr.extract.run\n"
            "from slide2expr.extract.encoders import get_encoder\n"
            f"get_encoder({encoder!r}); sys.exit(10 + ('timm' in sys.modules))"),
    }


def measure(code: str, src: Path) -> tuple[float, float, int]:
    """Wall s, CPU s (user + sys) and exit status of ``python -c code`` with ``src`` first."""
    env = {**os.environ, "PYTHONPATH": str(src)}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode not in (0, 10, 11):
        sys.exit(proc.stderr[-2000:])
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, proc.returncode


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--encoder", default="efficientnet_lite0")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--before-src", type=Path, default=None)
    args = parser.parse_args()
    srcs = {"this checkout": REPO / "src"}
    if args.before_src:
        srcs = {"before": args.before_src.resolve(), **srcs}
    print(f"load average at start {os.getloadavg()[0]:.1f}")
    codes = snippets(args.encoder)
    runs: dict[tuple[str, str], list[tuple[float, float, int]]] = {}
    for _ in range(args.repeats):
        for name, code in codes.items():
            for label, src in srcs.items():
                runs.setdefault((name, label), []).append(measure(code, src))
    print(f"\n| measure (median of {args.repeats} runs) | "
          + " | ".join(f"{label}: wall s | {label}: CPU s" for label in srcs) + " |")
    print("| --- |" + " --- | --- |" * len(srcs))
    for name in codes:
        cells = []
        for label in srcs:
            rows = runs[(name, label)]
            if name == "timm imported by the job":
                cells += ["yes" if rows[0][2] == 11 else "no", ""]
            else:
                cells += [f"{statistics.median(r[0] for r in rows):.2f}",
                          f"{statistics.median(r[1] for r in rows):.2f}"]
        print(f"| {name} | " + " | ".join(cells) + " |")
    print(f"\nload average at end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
