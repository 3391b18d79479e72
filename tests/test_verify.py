"""`slide2expr verify`: identical runs pass, every kind of real difference is named."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import pytest
from PIL import Image
from safetensors.numpy import save_file

from slide2expr.repro.verify import is_volatile, verify_runs
from slide2expr.testing import make_features


def _write_run(root: Path, *, workdir: str, seconds: float, log_text: str) -> Path:
    """A small results directory with one file of every kind the workflow writes."""
    rng = np.random.default_rng(0)
    res = root / "results"
    genes = [f"GENE{i}" for i in range(30)]
    (res / "report" / "mlp").mkdir(parents=True)
    table = pd.DataFrame({"gene": genes, "pearson_r": rng.normal(size=30).round(6),
                          "n": np.arange(30)})
    table.to_csv(res / "report" / "mlp" / "genes.tsv", sep="\t", index=False)
    summary = {"input": f"{workdir}/results/predictions/mlp.h5ad",
               "model": {"all": {"mean_r": 0.25, "n_genes": 30}},
               "per_fold": [{"fold": 0, "seconds": seconds}], "n_genes": 30}
    (res / "report" / "mlp" / "summary.json").write_text(json.dumps(summary))
    (res / "report" / "mlp" / "index.html").write_text(f"<p>made at {seconds}</p>")
    (res / "report" / "compare.tsv").write_text(
        f"encoder\tmodel\tmean_r_all\twall_s_train\nenc\tmlp\t0.25\t{seconds}\n")

    adata = ad.AnnData(X=rng.normal(size=(12, 30)).astype(np.float32),
                       obs=pd.DataFrame(index=[f"s{i}" for i in range(12)]),
                       var=pd.DataFrame(index=genes))
    adata.layers["predicted"] = rng.normal(size=(12, 30)).astype(np.float32)
    adata.uns["slide2expr"] = {"train": {"fold0": {"seconds": seconds, "epochs": 7}},
                               "sheet": f"{workdir}/config/samples.tsv"}
    (res / "predictions").mkdir()
    adata.write_h5ad(res / "predictions" / "mlp.h5ad")

    (res / "features" / "enc" / "spots").mkdir(parents=True)
    make_features(res / "features" / "enc" / "spots" / "S1.h5",
                  features=rng.normal(size=(20, 8)).astype(np.float32),
                  coords=np.arange(40).reshape(20, 2), sample_id="S1", encoder="enc",
                  slide=f"{workdir}/data/S1.tiff", encoder_attrs={"tiles_per_s": 1000.0 / seconds})

    (res / "models" / "mlp" / "fold0").mkdir(parents=True)
    save_file({"w": rng.normal(size=(4, 3)).astype(np.float32)},
              str(res / "models" / "mlp" / "fold0" / "head.safetensors"))
    (res / "models" / "mlp" / "fold0" / "best.ckpt").write_bytes(workdir.encode())
    (res / "qc").mkdir()
    Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(res / "qc" / "S1.png")

    (res / "logs" / "train").mkdir(parents=True)
    (res / "logs" / "train" / "mlp.log").write_text(log_text)
    (res / "benchmarks" / "train").mkdir(parents=True)
    (res / "benchmarks" / "train" / "mlp.tsv").write_text(f"s\th:m:s\n{seconds}\t0:00:01\n")
    (res / "manifest.json").write_text(json.dumps({
        "config": {"data_root": f"{workdir}/data"}, "run": {"start_time": str(seconds)},
        "inputs": [{"role": "slide", "path": f"{workdir}/data/S1.tiff", "sha256": "ab" * 32}],
        "timings": {"stages": {"train": {"wall_s": seconds}}}}))
    return root


@pytest.fixture
def two_runs(tmp_path: Path) -> tuple[Path, Path]:
    """Two runs of the same thing in different folders, at different times."""
    a = _write_run(tmp_path / "a", workdir="/scratch/run_a", seconds=11.5, log_text="one")
    b = _write_run(tmp_path / "b", workdir="/home/me/run_b", seconds=13.25, log_text="two")
    return a, b


def test_identical_runs_pass_and_volatile_fields_are_ignored(two_runs) -> None:
    a, b = two_runs
    result = verify_runs(a, b)
    assert result.identical, [str(d) for d in result.differences]
    # What legitimately differs was seen and ignored, not silently equal.
    ignored = " ".join(result.ignored)
    for field in ("per_fold[0].seconds", "input", "wall_s_train", "tiles_per_s",
                  "run.start_time", "inputs[0].path", "fold0/seconds"):
        assert field in ignored, field
    assert result.compared["report/mlp/genes.tsv"] == "bytes"
    assert result.compared["predictions/mlp.h5ad"] == "hdf5"
    assert "models/mlp/fold0/best.ckpt" in result.skipped
    assert "logs/" in result.skipped and "benchmarks/" in result.skipped
    # Given the working directories, verify finds results/ inside them.
    assert result.run_a == a / "results"


def test_perturbed_genes_tsv_is_named_with_gene_and_column(two_runs) -> None:
    a, b = two_runs
    path = b / "results" / "report" / "mlp" / "genes.tsv"
    table = pd.read_csv(path, sep="\t")
    old = table.loc[3, "pearson_r"]
    table.loc[3, "pearson_r"] = old + 1e-6
    table.to_csv(path, sep="\t", index=False)
    result = verify_runs(a, b)
    messages = [str(d) for d in result.differences]
    assert not result.identical
    assert any("genes.tsv" in m and "not byte-identical" in m for m in messages)
    assert any("gene=GENE3, column pearson_r" in m and str(old) in m for m in messages)
    assert all("genes.tsv" in m for m in messages), messages


def test_numbers_must_be_exact_unless_a_tolerance_is_given(two_runs) -> None:
    a, b = two_runs
    path = b / "results" / "predictions" / "mlp.h5ad"
    adata = ad.read_h5ad(path)
    adata.layers["predicted"][2, 5] += 1e-4
    adata.write_h5ad(path)
    result = verify_runs(a, b)
    [diff] = result.differences
    assert diff.path == "predictions/mlp.h5ad" and diff.where == "layers/predicted"
    assert "1 of 360 values differ" in diff.detail and "(2, 5)" in diff.detail
    assert verify_runs(a, b, atol=1e-3).identical


def test_json_h5_attrs_tensors_pixels_and_missing_files(two_runs) -> None:
    a, b = two_runs
    res = b / "results"
    summary = json.loads((res / "report" / "mlp" / "summary.json").read_text())
    summary["model"]["all"]["mean_r"] = 0.26
    (res / "report" / "mlp" / "summary.json").write_text(json.dumps(summary))
    # raw h5py: tampering with a finished file, as no writer of the package would
    with h5py.File(res / "features" / "enc" / "spots" / "S1.h5", "a") as f:
        f.attrs["encoder"] = "other"
        f["coords"][0, 0] = 99
    save_file({"w": np.zeros((4, 3), np.float32)},
              str(res / "models" / "mlp" / "fold0" / "head.safetensors"))
    img = np.asarray(Image.open(res / "qc" / "S1.png")).copy()
    img[0, 0] = 255 - img[0, 0]
    Image.fromarray(img).save(res / "qc" / "S1.png")
    (res / "report" / "mlp" / "extra.tsv").write_text("a\n1\n")
    (a / "results" / "manifest.json").unlink()
    result = verify_runs(a, b)
    got = {(d.path, d.where) for d in result.differences}
    assert ("report/mlp/summary.json", "model.all.mean_r") in got
    assert ("features/enc/spots/S1.h5", "/ attr encoder") in got
    assert ("features/enc/spots/S1.h5", "coords") in got
    assert ("models/mlp/fold0/head.safetensors", "w") in got
    assert ("qc/S1.png", "") in got
    assert ("report/mlp/extra.tsv", "") in got
    assert ("manifest.json", "") in got
    assert len(result.differences) == 7, [str(d) for d in result.differences]


def run_cli(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
            *args: str) -> tuple[int, str, str]:
    """Run ``slide2expr ARGS`` in this process (a subprocess pays the imports again)."""
    from slide2expr.cli import main

    monkeypatch.setattr("sys.argv", ["slide2expr", *args])
    try:
        main()
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_cli_exit_status_and_messages(two_runs, tmp_path: Path, monkeypatch, capsys) -> None:
    a, b = two_runs
    code, out, err = run_cli(monkeypatch, capsys, "verify", str(a), str(b))
    assert code == 0, err
    assert out.startswith("identical:")
    shutil.copy(a / "results" / "qc" / "S1.png", b / "results" / "qc" / "S2.png")
    code, out, err = run_cli(monkeypatch, capsys, "verify", str(a), str(b), "--json",
                             str(tmp_path / "v.json"))
    assert code == 1
    assert "DIFF qc/S2.png: only in" in out
    assert "DIFFERENT: 1 difference(s) in 1 file(s)" in err
    assert json.loads((tmp_path / "v.json").read_text())["identical"] is False
    code, _, err = run_cli(monkeypatch, capsys, "verify", str(a), str(tmp_path / "nope"))
    assert code == 2
    assert err.startswith("error: ") and "nope" in err


def test_volatile_names() -> None:
    for name in ("seconds", "wall_s", "wall_s_extract", "start_time", "end", "timings",
                 "tiles_per_s", "h:m:s", "s", "max_rss", "hostname", "train_seconds"):
        assert is_volatile(name), name
    for name in ("pearson_r", "spearman_r", "n_significant", "seed", "sha256", "encoder",
                 "start_x", "series", "mean_r_all"):
        assert not is_volatile(name), name


def test_empty_datasets_compare_as_equal(tmp_path) -> None:
    """anndata writes None (e.g. ``uns['log1p']['base']``) as an empty HDF5 dataset, which
    has no shape and no size: equal ones are identical, and nothing crashes."""
    for run in ("a", "b"):
        res = tmp_path / run / "results"
        res.mkdir(parents=True)
        with h5py.File(res / "x.h5", "w") as f:  # any HDF5 file (no contract): raw h5py
            f.create_dataset("base", data=h5py.Empty("f"))
            f.create_dataset("n", data=np.arange(3) + (run == "b"))
    result = verify_runs(tmp_path / "a", tmp_path / "b")
    assert [(d.path, d.where) for d in result.differences] == [("x.h5", "n")]


def test_logs_and_benchmarks_of_a_nested_run_are_per_run_records(two_runs) -> None:
    """A nested run's logs/ and benchmarks/ (the bulk benchmark's ceiling/) are skipped like
    the top level's, even when only one run has them; its results still count."""
    a, b = two_runs
    for run in (a, b):
        nested = run / "results" / "ceiling" / "results"
        (nested / "report").mkdir(parents=True)
        (nested / "report" / "genes.tsv").write_text("gene\tr\nG\t0.5\n")
    (a / "results" / "ceiling" / "results" / "logs").mkdir()
    (a / "results" / "ceiling" / "results" / "logs" / "tile.log").write_text("only in a\n")
    (a / "results" / "ceiling" / "results" / "benchmarks").mkdir()
    (a / "results" / "ceiling" / "results" / "benchmarks" / "tile.tsv").write_text("s\n1\n")
    result = verify_runs(a, b)
    assert result.identical, [str(d) for d in result.differences]
    assert "ceiling/results/report/genes.tsv" in result.compared
    assert "ceiling/results/logs/" in result.skipped
    assert "ceiling/results/benchmarks/" in result.skipped
    (b / "results" / "ceiling" / "results" / "report" / "genes.tsv").write_text("gene\tr\nG\t0.6\n")
    assert not verify_runs(a, b).identical
