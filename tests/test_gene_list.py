"""train.genes.list: a fixed published gene set restricts what every fold models."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from slide2expr.errors import InputError
from slide2expr.train.config import GeneSelection, TrainConfig
from slide2expr.train.gene_selection import select_training_genes


def test_the_list_restricts_the_candidates(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    x = rng.gamma(2.0, size=(40, 6))
    x[:, 4] = 1.0  # constant in training: never modelled, listed or not
    names = np.array(["A", "B", "C", "D", "E", "F"])
    listed = tmp_path / "genes.txt"
    listed.write_text("# a published set\nB\nE\n\nF  # trailing comment\nNOT_IN_DATA\n")
    chosen = select_training_genes(x, names, settings=GeneSelection(list=str(listed), min_fraction=0.0))
    assert list(names[chosen]) == ["B", "F"]
    everything = select_training_genes(x, names, settings=GeneSelection(min_fraction=0.0))
    assert list(names[everything]) == ["A", "B", "C", "D", "F"]


def test_a_missing_or_empty_list_is_an_input_error(tmp_path: Path) -> None:
    x = np.arange(12, dtype=float).reshape(4, 3)
    with pytest.raises(InputError, match="does not exist"):
        select_training_genes(x, np.array(["A", "B", "C"]),
                     settings=GeneSelection(list=str(tmp_path / "none.txt")))
    (tmp_path / "empty.txt").write_text("# nothing\n")
    with pytest.raises(InputError, match="empty"):
        select_training_genes(x, np.array(["A", "B", "C"]),
                     settings=GeneSelection(list=str(tmp_path / "empty.txt")))


def test_the_config_key(her2st: Path) -> None:
    config = TrainConfig.from_dict({"genes": {"list": str(her2st / "genes_785.txt")}})
    assert config.genes.list.endswith("genes_785.txt")
    assert config.to_dict()["genes"]["list"] == config.genes.list


REPO = Path(__file__).resolve().parents[1]


def _dry_run(workdir: Path, override: str) -> subprocess.CompletedProcess[str]:
    (workdir / "override.yaml").write_text(override)
    return subprocess.run(
        ["snakemake", "-s", str(REPO / "Snakefile"), "-d", str(workdir), "-n", "-p",
         "--cores", "2", "--configfile", str(REPO / "config" / "benchmarks" / "her2st.yaml"),
         str(workdir / "override.yaml")],
        capture_output=True, text=True, timeout=300,
    )


def test_her2st_config_takes_its_gene_list_from_data_root(her2st: Path, tmp_path: Path) -> None:
    """One override, data_root, moves the sheet's files and the 785-gene list together,
    from any working directory."""
    shutil.copytree(REPO / "config", tmp_path / "config")
    result = _dry_run(tmp_path, f"data_root: {her2st}\n")
    assert result.returncode == 0, result.stderr[-3000:]
    train = result.stdout.split("\nrule train:")[1].split("\nrule ")[0]
    assert f"{her2st}/genes_785.txt" in train  # resolved in the job's input and settings
    assert "{data_root}" not in result.stdout
    unset = _dry_run(tmp_path, "data_root: null\n")
    assert unset.returncode != 0
    said = unset.stdout + unset.stderr
    assert "train.genes.list" in said and "data_root is not set" in said
