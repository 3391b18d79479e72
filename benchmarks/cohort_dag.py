"""Snakemake planning at cohort scale: `snakemake -n` on 1,000 and 10,000 placeholder slides.

Writes a synthetic bulk-mode cohort (a sample sheet, one empty placeholder file a slide,
a placeholder expression matrix: the dry run only needs the files to exist) under WORKDIR,
then times `snakemake -n` with the real rules (the repository's Snakefile) in a fresh
process under /usr/bin/time -v, once with the default (local) settings and once with the
SLURM profile, whose groups bundle per-slide jobs. It counts rule jobs, and the SLURM
submissions the profile's grouping makes (a group job, however many rule jobs it holds, is
one `sbatch`).

    python benchmarks/cohort_dag.py WORKDIR [--sizes 1000,10000] [--group-components tile=16]
    python benchmarks/cohort_dag.py WORKDIR --sizes 1000,2000,5000,10000 \
        --profiles local,slurm,slurm-tile-extract --timeout 1800

Profiles: ``local`` (``--cores 2``), ``slurm`` (profiles/slurm as shipped), and
``slurm-tile-extract``, a copy of it written under WORKDIR with the settings docs/cluster.md
recommends for large cohorts: tile and extract of a slide in one bundle (``extract: tile``),
and the heatmap rules left ungrouped. Snakemake 9's group checks walk every group member's
upstream jobs once per member (``DAG._check_groups``, ``DAG.validate_group``); a heatmap job's
upstream is the whole cohort (it needs the trained model: train <- join <- every extract), so
grouping heatmaps makes planning quadratic in the number of slides, while a tile+extract
bundle's upstream is its own slides.

Prints one JSON line per (size, profile); a dry run stopped by ``--timeout`` says so (its CPU
and memory are not measured: ``/usr/bin/time`` sees only ``timeout``). Nothing is written outside WORKDIR.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = Path(sys.executable).with_name("snakemake")


def write_cohort(root: Path, n: int) -> Path:
    """A bulk-mode cohort of ``n`` placeholder slides (2 slides a patient); returns its config."""
    root.mkdir(parents=True, exist_ok=True)
    slides = root / "slides"
    slides.mkdir(exist_ok=True)
    ids = [f"S{i:05d}" for i in range(n)]
    rows = ["sample_id\tslide\tpatient"]
    for i, sid in enumerate(ids):
        path = slides / f"{sid}.svs"
        path.touch()
        rows.append(f"{sid}\tslides/{sid}.svs\tP{i // 2:05d}")
    (root / "samples.tsv").write_text("\n".join(rows) + "\n")
    (root / "bulk.tsv").write_text("gene\t" + "\t".join(ids) + "\nG1\t" + "\t".join("1" * n) + "\n")
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    config.update(samples="samples.tsv", mode="bulk", demo_data=False)
    config.setdefault("join", {})["expression"] = "bulk.tsv"
    config.setdefault("train", {})["heads"] = ["he2rna"]
    cfg = root / "config.yaml"
    cfg.write_text(yaml.safe_dump(config, sort_keys=False))
    return cfg


def recommended_profile(workdir: Path) -> Path:
    """A copy of the SLURM profile with docs/cluster.md's large-cohort bundling: tile and
    extract of a slide share the group ``tile`` (16 slides a SLURM job, run in turn), the
    heatmap rules are not grouped."""
    config = yaml.safe_load((REPO / "profiles" / "slurm" / "config.yaml").read_text())
    config["groups"] = {"extract": "tile"}
    config["group-components"] = {"tile": 16}
    for rule in ("heatmap_map", "heatmap"):
        config["set-resources"].get(rule, {}).pop("bundle_slot", None)
    config["set-resources"]["extract"] = {**config["set-resources"]["extract"], "runtime": 30,
                                          "bundle_slot": 1}
    folder = workdir / "profiles" / "slurm-tile-extract"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return folder


def dry_run(root: Path, cfg: Path, profile: str | Path | None, extra: list[str], *,
            timeout: int = 0) -> dict[str, object]:
    """`snakemake -n` in a fresh process: wall time, peak RSS, jobs per rule, submissions.

    ``profile`` is a folder of profiles/, or a path; with ``timeout`` (s) a dry run
    still planning then is stopped (``finished: false``) and its CPU and memory reported.
    """
    cmd = ["/usr/bin/time", "-v", *(["timeout", "-s", "KILL", str(timeout)] if timeout else []),
           str(SNAKEMAKE), "-n", "--snakefile", str(REPO / "Snakefile"),
           "--directory", str(root), "--configfile", str(cfg)]
    if profile:
        path = Path(profile) if Path(profile).is_absolute() else REPO / "profiles" / profile
        cmd += ["--profile", str(path)]
    else:
        cmd += ["--cores", "2"]
    cmd += extra
    t = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=root)
    wall = time.perf_counter() - t
    stopped = bool(timeout) and p.returncode in (124, 137)  # timeout killed snakemake
    if p.returncode != 0 and not stopped:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{p.stderr[-3000:]}\n{p.stdout[-3000:]}")
    out = p.stdout + p.stderr
    rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", p.stderr)[1]) / 1024
    # CPU seconds do not depend on what else the machine runs; wall time does.
    cpu = sum(float(re.search(rf"{k} time \(seconds\): ([\d.]+)", p.stderr)[1])
              for k in ("User", "System"))
    name = Path(profile).name if profile else "local"
    if stopped:  # /usr/bin/time then sees only `timeout`, not the killed snakemake: no CPU, RSS
        return {"profile": name, "finished": False, "timeout_s": timeout,
                "wall_s": round(wall, 1)}
    top = Counter(re.findall(r"^(?:local)?rule (\w+):", out, flags=re.M))  # not in a group
    nested = Counter(re.findall(r"^\s+(?:local)?rule (\w+):", out, flags=re.M))  # in a group
    groups = Counter(re.findall(r"Group job (\S+) \(jobs in lexicogr\. order\):", out))
    top.pop("all", None)  # the target rule has no command: Snakemake never submits it
    return {"profile": name, "finished": True, "wall_s": round(wall, 1), "cpu_s": round(cpu, 1),
            "peak_rss_mb": round(rss),
            "rule_jobs": sum(top.values()) + sum(nested.values()),
            "jobs_per_rule": dict(top + nested), "group_jobs": dict(groups),
            "submissions": sum(groups.values()) + sum(top.values())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("workdir", type=Path, help="where the cohorts are written (temporary)")
    ap.add_argument("--sizes", default="1000,10000")
    ap.add_argument("--profiles", default="local,slurm",
                    help="local, slurm, slurm-tile-extract (see above) or a profile folder")
    ap.add_argument("--timeout", type=int, default=0,
                    help="stop a dry run after this many seconds (0: never)")
    ap.add_argument("--extra", default="", help="more snakemake arguments, e.g. "
                    "'--group-components tile=64'")
    a = ap.parse_args()
    for n in (int(s) for s in a.sizes.split(",")):
        root = a.workdir / f"cohort{n}"
        t = time.perf_counter()
        cfg = write_cohort(root, n)
        write_s = time.perf_counter() - t
        for prof in a.profiles.split(","):
            profile: str | Path | None = {"local": None, "slurm-tile-extract":
                                          recommended_profile(a.workdir)}.get(prof, prof)
            res = dry_run(root, cfg, profile, a.extra.split(), timeout=a.timeout)
            print(json.dumps({"slides": n, "write_s": round(write_s, 1), "extra": a.extra, **res}),
                  flush=True)


if __name__ == "__main__":
    main()
