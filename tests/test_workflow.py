"""The whole workflow on the demo cohort, as a user runs it: plan, run, rerun."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from slide2expr.contracts.tiles import read_tiles
from slide2expr.keys import DEFAULT_ENCODER

REPO = Path(__file__).resolve().parents[1]


def snakemake(workdir: Path, *args: str, timeout: int = 1800) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["snakemake", "-s", str(REPO / "Snakefile"), "-d", str(workdir), "--cores", "2", *args],
        capture_output=True, text=True, timeout=timeout,
    )


@pytest.fixture(scope="session")
def demo_run(demo_workflow_run: tuple[Path, float]) -> Path:
    """The shipped config, run once in a fresh working directory (see conftest)."""
    return demo_workflow_run[0]


def test_dry_run_plans_every_stage(tmp_path: Path) -> None:
    shutil.copytree(REPO / "config", tmp_path / "config")
    result = snakemake(tmp_path, "-n", "--quiet", "rules")
    assert result.returncode == 0, result.stderr
    planned = result.stdout + result.stderr
    for rule in ("demo_data", "tile"):
        assert rule in planned
    n_samples = len(pd.read_csv(REPO / "config" / "samples.tsv", sep="\t"))
    tile_line = next(line for line in planned.splitlines() if line.strip().startswith("tile "))
    assert int(tile_line.split()[-1]) == n_samples


def test_one_extract_job_per_slide_and_a_job_for_an_unplanned_tiling(tmp_path: Path) -> None:
    """The demo plans one extract job per slide for every tiling (spots, grid and, for the
    default context head, the ctx300/ctx1000 windows around spots and grid tiles); with heatmaps
    off, a grid features file asked for by name still has a job (rule extract_tiling)."""
    shutil.copytree(REPO / "config", tmp_path / "config")
    result = snakemake(tmp_path, "-n", "-p")
    assert result.returncode == 0, result.stderr
    jobs = [line for line in result.stdout.splitlines() if "slide2expr extract " in line]
    n_samples = len(pd.read_csv(REPO / "config" / "samples.tsv", sep="\t"))
    assert len(jobs) == n_samples
    tilings = ("spots", "grid", "ctx300", "ctx1000", "grid_ctx300", "grid_ctx1000")
    assert all(all(f"tiles/{t}/" in line for t in tilings) and line.count(" -o ") == 6
               for line in jobs)
    off = tmp_path / "off.yaml"
    off.write_text("heatmap:\n  enabled: false\n")
    target = f"results/features/{DEFAULT_ENCODER}/grid/demo1.h5"
    result = snakemake(tmp_path, "-n", "-p", "--configfile", "config/config.yaml", str(off),
                       "--", target)
    assert result.returncode == 0, result.stderr
    jobs = [line for line in result.stdout.splitlines() if "slide2expr extract " in line]
    assert jobs == [line for line in jobs if "tiles/grid/demo1.h5 -o " + target in line]
    assert len(jobs) == 1 and "extract_tiling" in result.stdout


def test_catalog_test_config_plans_every_stage(tmp_path: Path) -> None:
    """`.test/` (the catalog's small run) plans every stage for its three slides, and
    `snakemake --lint` finds nothing to say about the workflow."""
    shutil.copytree(REPO / ".test" / "config", tmp_path / "config")
    result = snakemake(tmp_path, "-n", "--quiet", "rules")
    assert result.returncode == 0, result.stderr
    planned = result.stdout + result.stderr
    counts = {line.split()[0]: int(line.split()[-1]) for line in planned.splitlines()
              if len(line.split()) == 2 and line.split()[-1].isdigit()}
    # one extract job a slide embeds both its tilings (spots and grid)
    assert counts["tile"] == 3 and counts["heatmap"] == 3 and counts["extract"] == 3
    for rule in ("demo_data", "join", "train", "report", "compare", "manifest"):
        assert counts[rule] == 1
    lint = snakemake(tmp_path, "--lint")
    assert lint.returncode == 0 and "good condition" in lint.stdout + lint.stderr


def test_top_level_is_the_entry_point_and_loads_the_default_profile(tmp_path: Path) -> None:
    """The Snakefile, envs/ and profiles/ sit at the root (workflow/ keeps rules, schemas and
    report captions); Snakemake finds profiles/default beside the Snakefile by itself, and the
    rule files are as snakefmt writes them."""
    for path in ("Snakefile", "envs/slide2expr.yaml", "profiles/default/config.yaml",
                 "profiles/slurm/config.yaml", "workflow/rules/common.smk", "workflow/schemas",
                 "workflow/report/workflow.rst"):
        assert (REPO / path).exists(), path
    for moved in ("workflow/Snakefile", "workflow/envs", "workflow/profiles"):
        assert not (REPO / moved).exists(), moved
    shutil.copytree(REPO / "config", tmp_path / "config")
    # run from the working directory, which has no profiles/ of its own
    result = subprocess.run(["snakemake", "-s", str(REPO / "Snakefile"), "-n", "--quiet", "rules"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert f"workflow specific profile {REPO / 'profiles' / 'default'}" in result.stderr
    snakefmt = Path(sys.executable).parent / "snakefmt"
    if not snakefmt.exists():
        pytest.skip("snakefmt is not installed (pip install -e '.[dev]')")
    rule_files = [REPO / "Snakefile", *sorted((REPO / "workflow" / "rules").glob("*.smk"))]
    check = subprocess.run([str(snakefmt), "--check", *map(str, rule_files)], cwd=REPO,
                           capture_output=True, text=True, timeout=120)
    assert check.returncode == 0, (check.stdout + check.stderr)[-3000:]


@pytest.mark.slow
def test_demo_tiles_and_qc_for_every_sample(demo_run: Path) -> None:
    samples = pd.read_csv(demo_run / "config" / "samples.tsv", sep="\t")["sample_id"]
    truth = pd.read_csv(demo_run / "resources" / "demo" / "truth" / "spots.tsv", sep="\t")
    for sample in samples:
        grid = read_tiles(demo_run / "results" / "tiles" / "grid" / f"{sample}.h5")
        spots = read_tiles(demo_run / "results" / "tiles" / "spots" / f"{sample}.h5")
        assert len(grid) > 50 and grid.attrs.mpp_source == "metadata"
        assert sorted(spots.spot_ids) == sorted(truth.loc[truth.sample_id == sample, "spot_id"])
        assert (demo_run / "results" / "qc" / f"{sample}.png").stat().st_size > 10_000
        assert (demo_run / "results" / "logs" / "tile" / f"{sample}.log").exists()


@pytest.mark.slow
def test_rerun_does_nothing(demo_run: Path) -> None:
    result = snakemake(demo_run, "-n")
    assert result.returncode == 0
    assert "Nothing to be done" in result.stdout + result.stderr


@pytest.mark.slow
def test_demo_report_finds_planted_genes_not_noise(demo_run: Path) -> None:
    """The end of the pipeline: planted genes lead the report, noise genes do not."""
    genes = pd.read_csv(demo_run / "results" / "report" / "context" / "genes.tsv", sep="\t")
    truth = pd.read_csv(demo_run / "resources" / "demo" / "truth" / "genes.tsv", sep="\t")
    kind = truth.set_index("gene")["kind"]
    genes["kind"] = genes["gene"].map(kind)
    planted = genes[genes["kind"].isin(["tumour", "stroma"])]
    noise = genes[genes["kind"] == "noise"]
    assert planted["pearson_r"].median() > 0.5, planted[["gene", "pearson_r"]]
    assert noise["pearson_r"].abs().mean() < 0.15, noise[["gene", "pearson_r"]]
    top = genes.sort_values("pearson_r", ascending=False).head(5)
    assert top["kind"].isin(["tumour", "stroma", "compensator"]).all(), top[["gene", "kind"]]


@pytest.mark.slow
def test_demo_heatmaps_and_manifest(demo_run: Path) -> None:
    samples = pd.read_csv(demo_run / "config" / "samples.tsv", sep="\t")["sample_id"]
    for sample in samples:
        pngs = list((demo_run / "results" / "heatmaps" / "context" / sample).glob("*.png"))
        assert len(pngs) >= 4
        geojson = demo_run / "results" / "heatmaps" / "context" / f"{sample}.geojson"
        assert geojson.stat().st_size > 1000
    import json

    manifest = json.loads((demo_run / "results" / "manifest.json").read_text())
    assert manifest["config"]["mode"] == "spot"


def test_her2st_with_heatmaps_plans_grid_context_for_the_context_head(tmp_path: Path,
                                                                      her2st: Path) -> None:
    """The her2st config with heatmaps on: the context head (inputs spot, ctx300, ctx1000,
    nbr300, slide) paints maps from grid_ctx{um} windows centred on the grid tiles, tiled
    and extracted once per slide and window; its heatmap reads the dataset (slide vector).
    With heatmaps off the DAG has no grid context at all."""
    import yaml

    shutil.copytree(REPO / "config", tmp_path / "config")
    config = tmp_path / "config" / "benchmarks" / "her2st.yaml"
    n = len([line for line in (tmp_path / "config" / "benchmarks" / "her2st_samples.tsv")
             .read_text().splitlines() if line and not line.startswith(("#", "sample_id"))])

    def plan(enabled: bool) -> tuple[dict[str, int], str]:
        override = tmp_path / f"heatmap_{enabled}.yaml"
        override.write_text(yaml.safe_dump({"data_root": str(her2st),
                                            "heatmap": {"enabled": enabled}}))
        result = snakemake(tmp_path, "-n", "-p", "--configfile", str(config), str(override))
        assert result.returncode == 0, result.stderr[-4000:]
        out = result.stdout + result.stderr
        counts = {line.split()[0]: int(line.split()[-1]) for line in out.splitlines()
                  if len(line.split()) == 2 and line.split()[-1].isdigit()}
        return counts, out

    counts, out = plan(True)
    assert counts["grid_context_tiles"] == 2 * n          # ctx300 and ctx1000, per slide
    assert counts["heatmap"] == 2 * n                      # mlp and context, per slide
    # spots, ctx300, ctx1000, grid, grid_ctx300, grid_ctx1000: one extraction job per slide
    assert counts["extract"] == n and "extract_tiling" not in counts
    one_pass = [line for line in out.splitlines() if "slide2expr extract " in line]
    assert len(one_pass) == n and all(line.count(" -o ") == 6 for line in one_pass)
    for um in (300, 1000):
        assert f"results/features/{DEFAULT_ENCODER}/grid_ctx{um}/C2.h5" in out
    context_jobs = [line for line in out.splitlines()
                    if "slide2expr heatmap " in line and "models/context" in line]
    mlp_jobs = [line for line in out.splitlines()
                if "slide2expr heatmap " in line and "models/mlp" in line]
    assert len(context_jobs) == len(mlp_jobs) == n
    assert all("--dataset results/dataset.h5ad" in line for line in context_jobs)
    assert not any("--dataset" in line for line in mlp_jobs)  # spot-only: no context read

    counts, _ = plan(False)
    assert "grid_context_tiles" not in counts and "heatmap" not in counts
    assert counts["extract"] == n  # spots, ctx300, ctx1000 in one job per slide


@pytest.mark.slow
def test_documented_report_command_works(demo_run: Path, tmp_path: Path) -> None:
    """The `snakemake --report report.zip ...` line of config/README.md, run as written (in
    the finished demo's working directory), bundles the report."""
    import re
    import shlex

    doc = (REPO / "config" / "README.md").read_text()
    command = shlex.split(re.search(r"`(snakemake --report report\.zip[^`]*)`", doc).group(1))
    out = tmp_path / "report.zip"
    args = [str(out) if a == "report.zip" else a for a in command[1:]]
    result = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"),
                             *args], cwd=demo_run, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    assert out.stat().st_size > 10_000
