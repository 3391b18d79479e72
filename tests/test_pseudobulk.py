"""Pseudo-bulk from spatial data: windows of a synthetic section whose sums are known.

The section is 2000 x 2000 px at 1 um/px: tissue (pink) for x < 1344, glass beyond. Spots sit
on a 100 px grid over the whole slide; spot (i, j) has counts ONE = 1 and COL = i (its column
number), so a window's summed profile is its number of spots and the sum of their columns.
Windows of 448 um are 4 x 4 tiles of 112 um: a 4 x 4 grid of windows, of which the three
columns over tissue (x < 1344) are kept.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile

from slide2expr.inputs.expression.bulk import read_bulk_matrix
from slide2expr.inputs.regions import parse_region
from slide2expr.inputs.samples import read_sample_sheet

SIZE, PITCH, WINDOW = 2000, 100, 448


def run_cli(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "slide2expr", "-q", *map(str, args)],
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def section(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A spot-mode sheet of one section (patient P1) in a folder of its own."""
    root = tmp_path_factory.mktemp("pseudobulk")
    rng = np.random.default_rng(0)
    image = np.full((SIZE, SIZE, 3), 245, np.uint8)
    image[:, :1344] = np.clip(np.array([225, 140, 180]) + rng.normal(0, 10, (SIZE, 1344, 3)),
                              0, 255).astype(np.uint8)
    tifffile.imwrite(root / "s1.tif", image, tile=(256, 256), photometric="rgb",
                     resolution=(1e4, 1e4), resolutionunit="CENTIMETER")
    cols, rows = np.meshgrid(np.arange(SIZE // PITCH), np.arange(SIZE // PITCH))
    ids = [f"{i}x{j}" for i, j in zip(cols.ravel(), rows.ravel(), strict=True)]
    pd.DataFrame({"spot_id": ids, "pixel_x": cols.ravel() * PITCH + PITCH / 2,
                  "pixel_y": rows.ravel() * PITCH + PITCH / 2}).to_csv(
        root / "s1_spots.tsv", sep="\t", index=False)
    pd.DataFrame({"ONE": 1, "COL": cols.ravel()}, index=pd.Index(ids)).to_csv(
        root / "s1_counts.tsv", sep="\t")
    (root / "spots.tsv").write_text("sample_id\tslide\tpatient\tmpp\tcounts\tspots\n"
                                    "S1\ts1.tif\tP1\t1.0\ts1_counts.tsv\ts1_spots.tsv\n")
    return root


@pytest.fixture(scope="module")
def regions(section: Path) -> tuple[Path, Path]:
    sheet, matrix = section / "regions.tsv", section / "pseudobulk.tsv"
    proc = run_cli("pseudobulk", section / "spots.tsv", "--data-root", section, "--out-sheet",
                   sheet, "--out-expression", matrix, "--window-um", WINDOW, "--min-spots", 8,
                   "--tile-um", 112)
    assert proc.returncode == 0, proc.stderr
    return sheet, matrix


def test_windows_on_tissue_become_region_samples(regions, section):
    sheet = read_sample_sheet(regions[0], mode="bulk", root=section)
    assert len(sheet) == 12  # 4 rows x the 3 window columns over tissue
    assert set(sheet["patient"]) == {"P1"} and set(sheet["section"]) == {"S1"}
    boxes = [parse_region(r).geometry for r in sheet["roi"]]
    assert all(b.bounds[2] <= 1344 + 1e-6 for b in boxes)  # none on the glass
    assert all(abs(b.area - WINDOW ** 2) < 1 for b in boxes)
    assert sum(a.intersection(b).area for i, a in enumerate(boxes) for b in boxes[i + 1:]) == 0


def test_bulk_profile_is_the_sum_of_the_spots_inside(regions, section):
    sheet = read_sample_sheet(regions[0], mode="bulk", root=section)
    table = read_bulk_matrix(regions[1], values="counts", sample_ids=list(sheet.index))
    frame = pd.DataFrame(table.dense(), index=table.ids, columns=table.genes)
    for sample, roi in zip(sheet.index, sheet["roi"], strict=True):
        x0, y0, x1, y1 = parse_region(roi).geometry.bounds
        centres = np.arange(SIZE // PITCH) * PITCH + PITCH / 2
        in_x = centres[(centres >= x0) & (centres < x1)]
        in_y = centres[(centres >= y0) & (centres < y1)]
        assert frame.loc[sample, "ONE"] == len(in_x) * len(in_y)
        assert frame.loc[sample, "COL"] == len(in_y) * ((in_x - PITCH / 2) / PITCH).sum()


def test_region_sheet_keeps_the_spot_truth_and_relative_paths(regions):
    raw = pd.read_csv(regions[0], sep="\t", comment="#")
    assert list(raw["slide"].unique()) == ["s1.tif"]
    assert list(raw["counts"].unique()) == ["s1_counts.tsv"]
    assert list(raw["spots"].unique()) == ["s1_spots.tsv"]
    assert (raw["roi_units"] == "px").all()


def test_no_window_qualifies_is_one_line_and_writes_nothing(section, tmp_path):
    sheet, matrix = tmp_path / "regions.tsv", tmp_path / "pb.tsv"
    proc = run_cli("pseudobulk", section / "spots.tsv", "--data-root", section, "--out-sheet",
                   sheet, "--out-expression", matrix, "--window-um", WINDOW, "--min-spots", 500)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "section S1: no window of 448 um holds 500 spots" in lines[0]
    assert "Fix:" in lines[0]
    assert not sheet.exists() and not matrix.exists()


@pytest.mark.slow
def test_one_run_writes_the_regions_and_runs_them(section, tmp_path):
    """The pseudobulk rule is a checkpoint: a single snakemake invocation cuts the section
    into regions (896 um windows: 2 x 2, all on enough tissue, so four) and then plans and runs
    everything else on them, up to each region's held-out prediction."""
    import anndata as ad

    config = tmp_path / "bulk.yaml"
    config.write_text(
        f"samples: results/pseudobulk/samples.tsv\ndata_root: {section}\nmode: bulk\n"
        "demo_data: false\n"
        f"pseudobulk: {{spots_samples: {section / 'spots.tsv'}, window_um: 896, min_spots: 8}}\n"
        "join: {expression: results/pseudobulk/expression.tsv}\n"
        "train: {heads: [he2rna], folds: 2, group_by: sample_id, max_epochs: 1, min_epochs: 0,"
        " baselines: [mean], genes: {min_fraction: 0.0}}\n"
        "report: {bootstrap: 0}\nheatmap: {enabled: false}\n")
    repo = Path(__file__).resolve().parents[1]
    proc = subprocess.run(
        ["snakemake", "-s", str(repo / "Snakefile"), "-d", str(tmp_path), "--cores", "2",
         "--configfile", str(config)], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    sheet = read_sample_sheet(tmp_path / "results" / "pseudobulk" / "samples.tsv", mode="bulk",
                              check_files=False)
    assert len(sheet) == 4
    predictions = ad.read_h5ad(tmp_path / "results" / "predictions" / "he2rna.h5ad")
    assert sorted(predictions.obs["sample_id"]) == sorted(sheet.index)
    assert (predictions.obs["fold"].astype(int) >= 0).all()
    for sample in sheet.index:
        assert (tmp_path / "results" / "tiles" / "grid" / f"{sample}.h5").is_file()
    # one tile job and one extract job for the section's four regions (one slide)
    assert "checkpoint pseudobulk" in proc.stderr and proc.stderr.count("rule tile:") == 0
    assert proc.stderr.count("rule tile_regions:") == 1
    assert proc.stderr.count("rule extract_regions:") == 1
    assert proc.stderr.count("rule region_features:") == 4
    assert (tmp_path / "results" / "manifest.json").is_file()


def test_bulk_benchmark_config_plans_regions_first_then_the_run(tmp_path, test_data):
    """The her2st bulk config: before the region sheet exists the plan is the pseudobulk
    checkpoint (the rest is planned when it has run); once it exists, every region is tiled
    inside its roi, the bulk heads train on them, and the ceiling (the spot-trained default
    model, a nested run) is scored by the report."""
    import shutil

    repo = Path(__file__).resolve().parents[1]
    shutil.copytree(repo / "config", tmp_path / "config")
    config = tmp_path / "config" / "benchmarks" / "her2st_bulk.yaml"

    def plan() -> tuple[dict[str, int], str]:
        proc = subprocess.run(
            ["snakemake", "-s", str(repo / "Snakefile"), "-d", str(tmp_path), "--cores", "2",
             "-n", "-p", "--configfile", str(config), "--config", f"data_root={test_data}"],
            capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        out = proc.stdout + proc.stderr
        counts = {line.split()[0]: int(line.split()[-1]) for line in out.splitlines()
                  if len(line.split()) == 2 and line.split()[-1].isdigit()}
        return counts, out

    counts, out = plan()
    assert counts.get("pseudobulk") == 1 and "tile" not in counts
    assert "DAG of jobs will be updated after completion" in out
    out_dir = tmp_path / "results" / "pseudobulk"
    out_dir.mkdir(parents=True)
    (out_dir / "samples.tsv").write_text(
        "sample_id\tslide\tpatient\tsection\tmpp\troi\troi_units\n"
        "C2_a\ther2st/C2_HE.jpg\tC\tC2\t0.69\t3000,3000,4000,4000\tpx\n"
        "C2_b\ther2st/C2_HE.jpg\tC\tC2\t0.69\t4000,3000,5000,4000\tpx\n"
        "A1_a\ther2st_A/A1_HE.png\tA\tA1\t3.2\t800,600,1000,800\tpx\n")
    (out_dir / "expression.tsv").write_text("sample_id\tERBB2\nC2_a\t5\nC2_b\t7\nA1_a\t3\n")
    counts, out = plan()
    assert "pseudobulk" not in counts
    # one tile job and one extract job per slide (C2, A1) for the three regions
    assert counts["tile_regions"] == 2 and counts["extract_regions"] == 2
    assert counts["region_tiles"] == 3 and "tile" not in counts and "extract" not in counts
    assert counts["train"] == 2
    assert "--roi 3000,3000,4000,4000 --roi-units px" in out
    assert counts["ceiling"] == 1
    assert "--ceiling results/ceiling/results/predictions/context.h5ad" in out
    assert "-d results/ceiling --configfile" in out
