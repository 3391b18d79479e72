"""The whole workflow on the demo cohort, as a user runs it: plan, run, rerun."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pytest

from slide2expr.contracts.tiles import read_tiles

REPO = Path(__file__).resolve().parents[1]


def snakemake(workdir: Path, *args: str, timeout: int = 1800) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["snakemake", "-s", str(REPO / "workflow" / "Snakefile"), "-d", str(workdir), "--cores", "2", *args],
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


def test_catalog_test_config_plans_every_stage(tmp_path: Path) -> None:
    """`.test/` (the catalog's small run) plans every stage for its three slides, and
    `snakemake --lint` finds nothing to say about the workflow."""
    shutil.copytree(REPO / ".test" / "config", tmp_path / "config")
    result = snakemake(tmp_path, "-n", "--quiet", "rules")
    assert result.returncode == 0, result.stderr
    planned = result.stdout + result.stderr
    counts = {line.split()[0]: int(line.split()[-1]) for line in planned.splitlines()
              if len(line.split()) == 2 and line.split()[-1].isdigit()}
    assert counts["tile"] == 3 and counts["heatmap"] == 3 and counts["extract"] == 6
    for rule in ("demo_data", "join", "train", "report", "compare", "manifest"):
        assert counts[rule] == 1
    lint = snakemake(tmp_path, "--lint")
    assert lint.returncode == 0 and "good condition" in lint.stdout + lint.stderr


@pytest.mark.slow
def test_demo_tiles_and_qc_for_every_sample(demo_run: Path) -> None:
    samples = pd.read_csv(demo_run / "config" / "samples.tsv", sep="\t")["sample_id"]
    truth = pd.read_csv(demo_run / "resources" / "demo" / "truth" / "spots.tsv", sep="\t")
    for sample in samples:
        grid = read_tiles(demo_run / "results" / "tiles" / "grid" / f"{sample}.h5")
        spots = read_tiles(demo_run / "results" / "tiles" / "spots" / f"{sample}.h5")
        assert len(grid) > 50 and grid.attrs["mpp_source"] == "metadata"
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
    genes = pd.read_csv(demo_run / "results" / "report" / "mlp" / "genes.tsv", sep="\t")
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
        pngs = list((demo_run / "results" / "heatmaps" / "mlp" / sample).glob("*.png"))
        assert len(pngs) >= 4
        geojson = demo_run / "results" / "heatmaps" / "mlp" / f"{sample}.geojson"
        assert geojson.stat().st_size > 1000
    import json

    manifest = json.loads((demo_run / "results" / "manifest.json").read_text())
    assert manifest["config"]["mode"] == "spot"
