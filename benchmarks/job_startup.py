"""Per-job start-up: the seconds every Snakemake job pays before its first useful work.

Each rule runs one ``slide2expr`` command in a fresh process: the interpreter starts, the CLI
is imported, then the command imports its stage (torch for extract, train and heatmap) and
only then reads its inputs. This measures those parts in fresh processes, median of N:

- ``python``: the bare interpreter (``python -c pass``), the floor;
- ``--help``: ``slide2expr --help`` (interpreter + CLI);
- one row a command: interpreter + CLI + the modules the command imports before its work.

With a finished run's ``results/`` (``--results``), each row also gives the median wall time
of that rule's jobs (Snakemake's ``benchmarks/``) and the share of it that is start-up.

Run: ``python benchmarks/job_startup.py [--repeat 5] [--results results]``.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

#: Rule -> the modules its command imports before it reads anything.
STAGE_IMPORTS = {
    "tile": ["slide2expr.cli", "slide2expr.tile"],
    "extract": ["slide2expr.cli", "slide2expr.extract"],
    "join": ["slide2expr.cli", "slide2expr.join", "slide2expr.contracts.dataset"],
    "train": ["slide2expr.cli", "slide2expr.train", "slide2expr.contracts.dataset"],
    "report": ["slide2expr.cli", "slide2expr.report"],
    "heatmap": ["slide2expr.cli", "slide2expr.heatmap", "slide2expr.predict"],
    "manifest": ["slide2expr.cli", "slide2expr.repro.manifest"],
}


def wall(args: list[str], repeat: int) -> float:
    """Median wall seconds of ``args`` run ``repeat`` times, each in a fresh process."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        subprocess.run(args, check=True, capture_output=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def rule_walls(results: Path) -> dict[str, float]:
    """Median wall seconds of each rule's jobs from Snakemake's benchmark files."""
    import pandas as pd

    out: dict[str, float] = {}
    for rule_dir in sorted((results / "benchmarks").iterdir()) if results.is_dir() else []:
        files = list(rule_dir.rglob("*.tsv")) if rule_dir.is_dir() else [rule_dir]
        seconds = [float(pd.read_csv(f, sep="\t")["s"].iloc[0]) for f in files
                   if f.suffix == ".tsv"]
        if seconds:
            out[rule_dir.stem] = statistics.median(seconds)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--results", type=Path, default=None,
                        help="a finished run's results/ (adds each rule's job wall time)")
    args = parser.parse_args()
    python = [sys.executable]
    floor = wall([*python, "-c", "pass"], args.repeat)
    help_s = wall([*python, "-m", "slide2expr", "--help"], args.repeat)
    jobs = rule_walls(args.results) if args.results else {}
    print(f"python {sys.version.split()[0]}, median of {args.repeat} fresh processes\n")
    print("| what | start-up s | job wall s | start-up share |")
    print("| --- | --- | --- | --- |")
    print(f"| `python -c pass` | {floor:.2f} | | |")
    print(f"| `slide2expr --help` | {help_s:.2f} | | |")
    for rule, modules in STAGE_IMPORTS.items():
        code = "import " + ", ".join(modules)
        seconds = wall([*python, "-c", code], args.repeat)
        job = jobs.get(rule)
        share = f"{seconds / job:.0%}" if job else ""
        print(f"| {rule} | {seconds:.2f} | {job:.1f} | {share} |" if job else
              f"| {rule} | {seconds:.2f} | | |")


if __name__ == "__main__":
    main()
