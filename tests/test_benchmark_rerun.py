"""The her2st benchmark, reduced, run twice in two folders: the outputs must be identical.

Reduced so CI can afford it twice: three of the five sections (so three leave-one-section-out
folds), a few epochs, few bootstrap replicates and no heatmaps. Everything else is the shipped
``config/benchmarks/her2st.yaml``: the same rules, encoder, gene list and baselines.
"""

from __future__ import annotations

import filecmp
import json
import shutil
import subprocess
from pathlib import Path

import h5py
import pandas as pd
import pytest
import yaml

from slide2expr.keys import DEFAULT_ENCODER

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
SECTIONS = ("C2", "C3", "C4")


def snakemake(workdir: Path, *args: str, timeout: int = 3600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["snakemake", "-s", str(REPO / "Snakefile"), "-d", str(workdir), "--cores", "2", *args],
        capture_output=True, text=True, timeout=timeout,
    )


def reduced_benchmark(workdir: Path, her2st: Path) -> list[str]:
    """Copy the configs into ``workdir`` with the reduction; return the snakemake options."""
    shutil.copytree(REPO / "config", workdir / "config")
    sheet = workdir / "config" / "benchmarks" / "her2st_samples.tsv"
    lines = sheet.read_text().splitlines()
    kept = [line for line in lines if line.startswith(("#", "sample_id")) or
            line.split("\t")[0] in SECTIONS]
    sheet.write_text("\n".join(kept) + "\n")
    override = {
        "data_root": str(her2st),
        "extract": {"device": "cpu"},  # the claim under test: CPU runs are bit-identical
        # the 785-gene list comes from data_root, as the shipped config says
        "train": {"max_epochs": 4, "min_epochs": 2, "patience": 2, "accelerator": "cpu"},
        "report": {"bootstrap": 20},
    }
    (workdir / "reduced.yaml").write_text(yaml.safe_dump(override))
    return reduced_benchmark_args(workdir)


def reduced_benchmark_args(workdir: Path) -> list[str]:
    return ["--configfile", str(workdir / "config" / "benchmarks" / "her2st.yaml"),
            str(workdir / "reduced.yaml")]


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory: pytest.TempPathFactory, her2st: Path) -> tuple[Path, Path]:
    runs = []
    for name in ("run_a", "run_b"):
        workdir = tmp_path_factory.mktemp(name)
        result = snakemake(workdir, *reduced_benchmark(workdir, her2st))
        assert result.returncode == 0, result.stderr[-6000:]
        runs.append(workdir)
    return runs[0], runs[1]


def verify(a: Path, b: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["slide2expr", "verify", str(a), str(b)], capture_output=True,
                          text=True, timeout=600)


def test_two_runs_are_identical(two_runs) -> None:
    a, b = two_runs
    genes_a = a / "results" / "report" / "mlp" / "genes.tsv"
    genes_b = b / "results" / "report" / "mlp" / "genes.tsv"
    assert filecmp.cmp(genes_a, genes_b, shallow=False), "report genes.tsv differs"
    table = pd.read_csv(genes_a, sep="\t")
    assert len(table) > 500 and table["pearson_r"].notna().sum() > 500  # the 785-gene list
    result = verify(a, b)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert result.stdout.startswith("identical:")


def test_manifest_records_the_run(two_runs, her2st: Path) -> None:
    a, _ = two_runs
    manifest = json.loads((a / "results" / "manifest.json").read_text())
    slides = {i["sample"]: i for i in manifest["inputs"] if i["role"] == "slide"}
    assert sorted(slides) == list(SECTIONS)
    assert all(len(i["sha256"]) == 64 for i in manifest["inputs"]), manifest["inputs"]
    assert manifest["config"]["train"]["max_epochs"] == 4
    assert manifest["config"]["train"]["folds"] == "loo"
    assert manifest["seeds"]["train.seed"] == 0
    for stage in ("tile", "extract", "join", "train", "report", "compare"):
        assert manifest["timings"]["stages"][stage]["wall_s"] > 0, stage
    assert manifest["compute"]["extract"][DEFAULT_ENCODER]["devices"] == ["cpu"]


def test_compare_table(two_runs) -> None:
    a, _ = two_runs
    table = pd.read_csv(a / "results" / "report" / "compare.tsv", sep="\t")
    # each head with the baselines on its own inputs: the context head's ridge sees the context
    assert list(table["model"]) == ["mlp", "ridge", "mean", "context", "ridge", "mean"]
    assert list(table["head"]) == ["mlp"] * 3 + ["context"] * 3
    assert (table["encoder"] == DEFAULT_ENCODER).all()
    assert table.loc[0, "mean_r_all"] == pytest.approx(
        json.loads((a / "results" / "report" / "mlp" / "summary.json").read_text())
        ["model"]["all"]["mean_r"], abs=1e-6)
    assert (table[["wall_s_tile", "wall_s_extract", "wall_s_train"]] > 0).all().all()


def test_rerun_does_nothing(two_runs) -> None:
    a, _ = two_runs
    result = snakemake(a, "-n", *reduced_benchmark_args(a))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Nothing to be done" in result.stdout + result.stderr


def test_verify_names_perturbed_outputs(two_runs, tmp_path: Path) -> None:
    a, b = two_runs
    copy = tmp_path / "perturbed"
    shutil.copytree(b / "results", copy / "results")
    genes = copy / "results" / "report" / "mlp" / "genes.tsv"
    table = pd.read_csv(genes, sep="\t", dtype=str, keep_default_na=False)
    gene = table.loc[10, "gene"]
    table.loc[10, "pearson_r"] = "0.123456"
    table.to_csv(genes, sep="\t", index=False)
    # raw h5py: one value of a finished file changed, as no writer of the package would
    with h5py.File(copy / "results" / "predictions" / "mlp.h5ad", "a") as f:
        f["layers/predicted"][0, 0] += 1.0
    result = verify(a, copy)
    assert result.returncode == 1
    assert f"report/mlp/genes.tsv [gene={gene}, column pearson_r]" in result.stdout
    assert "predictions/mlp.h5ad [layers/predicted]: 1 of" in result.stdout
