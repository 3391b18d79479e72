"""The report contract (:mod:`slide2expr.contracts.report`): ``genes.tsv``, ``summary.json``
and ``scale.tsv`` are written and read in one place; bad files are one clear error."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from slide2expr.contracts.report import (
    read_gene_r,
    read_genes_table,
    read_scale,
    read_summary,
    write_genes_table,
    write_scale,
    write_summary,
)
from slide2expr.draw import select_genes
from slide2expr.errors import InputError


def test_genes_table_round_trip_keeps_nan_and_feeds_the_drawing_choice(tmp_path):
    path = tmp_path / "genes.tsv"
    write_genes_table(pd.DataFrame({"gene": ["NA", "B", "C"], "pearson_r": [0.5, np.nan, 0.9],
                                    "n": [3, 3, 3]}), path)
    assert path.read_text().splitlines()[2] == "B\tNaN\t3"
    r = read_gene_r(path)
    assert r["NA"] == 0.5 and np.isnan(r["B"]) and r["C"] == 0.9  # "NA" is a gene, not NaN
    # the heatmap's choice reads the same table: best finite r first, NaN skipped
    assert select_genes(["NA", "B", "C"], report=path, n_genes=3) == ["C", "NA"]


def test_a_genes_table_without_pearson_r_is_one_error_naming_the_file(tmp_path):
    path = tmp_path / "genes.tsv"
    path.write_text("gene\tr\nA\t0.1\n")
    with pytest.raises(InputError, match=r"no column.*pearson_r") as err:
        read_genes_table(path)
    assert str(path) in str(err.value)
    path.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(InputError, match="not a readable report table"):
        read_gene_r(path)


def test_summary_round_trip_and_refusals(tmp_path):
    path = tmp_path / "summary.json"
    write_summary({"head": "mlp", "model": {"all": {"mean_r": 0.25}}}, path)
    assert read_summary(path)["model"]["all"]["mean_r"] == 0.25
    with pytest.raises(ValueError):  # NaN in a summary is a bug upstream: not written
        write_summary({"mean_r": float("nan")}, tmp_path / "nan.json")
    (tmp_path / "list.json").write_text(json.dumps([1, 2]))
    with pytest.raises(InputError, match="not a JSON object"):
        read_summary(tmp_path / "list.json")
    (tmp_path / "cut.json").write_text('{"head": ')
    with pytest.raises(InputError, match="not a readable summary"):
        read_summary(tmp_path / "cut.json")
    with pytest.raises(InputError, match="does not exist"):
        read_summary(tmp_path / "missing.json")


def test_scale_round_trip_and_an_empty_range_is_refused(tmp_path):
    path = tmp_path / "scale.tsv"
    write_scale(path, pd.DataFrame({"gene": ["A", "B"], "vmin": [0.0, 1.0], "vmax": [2.0, 3.5],
                                    "n_tiles": [10, 10], "n_slides": [2, 2]}))
    assert read_scale(path) == {"A": (0.0, 2.0), "B": (1.0, 3.5)}
    path.write_text("gene\tvmin\tvmax\nA\t1\t1\n")
    with pytest.raises(InputError, match="'A' has no valid vmin < vmax"):
        read_scale(path)
