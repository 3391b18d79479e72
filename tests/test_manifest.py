"""The run manifest and the encoder x head comparison table, on small hand-made runs."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pandas as pd
import pytest

from slide2expr.errors import InputError
from slide2expr.repro.compare import build_compare, parse_run, write_compare
from slide2expr.repro.manifest import build_manifest, collect_seeds, read_benchmarks, stage_timings


def _bench(path: Path, seconds: float, rss: float = 100.0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\t"
                    f"cpu_time\n{seconds}\t0:00:01\t{rss}\t1\t1\t1\t0\t0\t50\t{seconds / 2}\n")


@pytest.fixture
def small_run(tmp_path: Path, her2st: Path) -> tuple[Path, dict]:
    """A two-section her2st config and a results folder with benchmark files."""
    sheet = tmp_path / "samples.tsv"
    sheet.write_text("sample_id\tslide\tpatient\tmpp\tcounts\tspots\n"
                     "C2\tC2_HE.jpg\tC2\t0.69\tC2.tsv.gz\tC2_selection.tsv\n"
                     "C3\tC3_HE.jpg\tC3\t0.69\tC3.tsv.gz\tC3_selection.tsv\n")
    config = {"samples": str(sheet), "data_root": str(her2st), "mode": "spot",
              "extract": {"encoders": ["efficientnet_lite0"], "weights": {}},
              "train": {"seed": 3, "genes": {"list": str(her2st / "genes_785.txt")}},
              "report": {"seed": 7, "bootstrap": 10}}
    res = tmp_path / "results"
    _bench(res / "benchmarks" / "tile" / "C2.tsv", 2.0, rss=50)
    _bench(res / "benchmarks" / "tile" / "C3.tsv", 3.0, rss=80)
    _bench(res / "benchmarks" / "extract" / "efficientnet_lite0" / "spots" / "C2.tsv", 10.0)
    _bench(res / "benchmarks" / "train" / "mlp.tsv", 20.0)
    return res, config


def test_manifest_records_inputs_seeds_versions_and_timings(small_run, her2st: Path) -> None:
    res, config = small_run
    manifest = build_manifest(config, results=res, progress=False)
    json.dumps(manifest)  # serialisable as is
    inputs = {(i["role"], i["sample"]): i for i in manifest["inputs"]}
    slide = inputs[("slide", "C2")]
    assert slide["path"] == str(her2st / "C2_HE.jpg")
    assert slide["sha256"] == hashlib.sha256((her2st / "C2_HE.jpg").read_bytes()).hexdigest()
    assert slide["bytes"] == (her2st / "C2_HE.jpg").stat().st_size
    for key in [("counts", "C3"), ("spots", "C3"), ("sample_sheet", None), ("gene_list", None)]:
        assert inputs[key]["sha256"] and len(inputs[key]["sha256"]) == 64
    weights = inputs[("weights", "efficientnet_lite0")]
    assert weights["sha256"], "the packaged ImageNet weights are found offline"
    assert len(manifest["inputs"]) == 1 + 2 * 3 + 1 + 1

    assert manifest["seeds"] == {"train.seed": 3, "report.seed": 7}
    assert manifest["config"] is config
    assert manifest["libraries"]["torch"] and manifest["libraries"]["snakemake"]
    assert manifest["python"]["version"].count(".") == 2
    assert manifest["compute"]["torch"]["version"]
    assert manifest["compute"]["determinism"]["train"]["torch.use_deterministic_algorithms"]
    assert len(manifest["slide2expr"]["source_sha256"]) == 64
    commit = manifest["slide2expr"]["git"]["commit"]
    assert commit is None or len(commit) == 40

    stages = manifest["timings"]["stages"]
    assert list(stages) == ["tile", "extract", "train"]  # pipeline order
    assert stages["tile"] == {"jobs": 2, "wall_s": 5.0, "cpu_s": 2.5, "max_rss_mb": 80.0}
    assert manifest["run"]["start_time"] <= manifest["run"]["end_time"]
    assert manifest["run"]["wall_s"] >= 20.0  # at least the longest job


def test_missing_inputs_are_recorded_not_fatal(small_run, tmp_path: Path) -> None:
    res, config = small_run
    config = dict(config, data_root=str(tmp_path / "elsewhere"))
    manifest = build_manifest(config, results=res, progress=False)
    slides = [i for i in manifest["inputs"] if i["role"] == "slide"]
    assert all(i["sha256"] is None and "not found" in i["note"] for i in slides)
    with pytest.raises(InputError):
        build_manifest({"mode": "spot"}, results=res, progress=False)


def test_seeds_are_found_at_any_depth() -> None:
    seeds = collect_seeds({"a": {"seed": 1, "b": {"split_seed": 2}}, "seed": 0, "seedling": 5})
    assert seeds == {"a.seed": 1, "a.b.split_seed": 2, "seed": 0}


def test_benchmarks_and_stage_totals(small_run) -> None:
    res, _ = small_run
    records = read_benchmarks(res / "benchmarks")
    jobs = {(r["rule"], r["job"]) for r in records}
    assert ("extract", "efficientnet_lite0/spots/C2") in jobs
    assert stage_timings(records)["extract"]["wall_s"] == 10.0
    assert read_benchmarks(res / "nothing") == []


def _summary(path: Path, r_model: float, r_ridge: float, n_sig: int) -> Path:
    def block(r: float) -> dict:
        return {"all": {"mean_r": r}, "top_mean": {"mean_r": r + 0.1},
                "hvg": {"mean_r": r + 0.2}}

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"n_genes": 785, "model": block(r_model),
                                "baselines": {"ridge": block(r_ridge), "mean": block(0.0)},
                                "counts": {"n_significant": n_sig}}))
    return path


def test_compare_table_rows_and_wall_time_attribution(tmp_path: Path) -> None:
    bench = tmp_path / "benchmarks"
    _bench(bench / "tile" / "S1.tsv", 4.0)                        # shared by every row
    _bench(bench / "extract" / "encA" / "spots" / "S1.tsv", 10.0)
    _bench(bench / "extract" / "encB" / "spots" / "S1.tsv", 30.0)
    _bench(bench / "join" / "encA" / "join.tsv", 1.0)
    _bench(bench / "join" / "encB" / "join.tsv", 2.0)
    _bench(bench / "train" / "encA" / "mlp.tsv", 5.0)
    _bench(bench / "train" / "encA" / "mlp2.tsv", 6.0)
    _bench(bench / "train" / "encB" / "mlp.tsv", 7.0)
    runs = [
        parse_run(f"encA:mlp:{_summary(tmp_path / 'a_mlp.json', 0.3, 0.2, 40)}"),
        parse_run(f"encA:mlp2:{_summary(tmp_path / 'a_mlp2.json', 0.35, 0.2, 50)}"),
        parse_run(f"encB:mlp:{_summary(tmp_path / 'b_mlp.json', 0.1, 0.05, 3)}"),
    ]
    table = build_compare(runs, benchmarks=bench)
    assert list(table["model"]) == ["mlp", "ridge", "mean", "mlp2", "mlp", "ridge", "mean"]
    row = table.iloc[3]  # encA / mlp2
    assert (row.encoder, row.mean_r_all, row.mean_r_hvg, row.n_significant) == \
        ("encA", 0.35, pytest.approx(0.55), 50)
    assert (row.wall_s_tile, row.wall_s_extract, row.wall_s_join, row.wall_s_train) == \
        (4.0, 10.0, 1.0, 6.0)
    encb = table.iloc[4]
    assert (encb.wall_s_extract, encb.wall_s_join, encb.wall_s_train) == (30.0, 2.0, 7.0)
    assert pd.isna(table.iloc[1]["n_significant"])  # baselines have no significance test

    out = tmp_path / "report" / "compare.tsv"
    write_compare(table, out, tmp_path / "report" / "compare.html", top_n=50, n_hvg=50)
    back = pd.read_csv(out, sep="\t")
    assert list(back.columns[:8]) == ["encoder", "head", "model", "n_genes", "mean_r_all",
                                      "mean_r_top", "mean_r_hvg", "n_significant"]
    page = (tmp_path / "report" / "compare.html").read_text()
    assert "id='compare'" in page and "encB" in page and "data:image/png;base64," in page


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


def test_compare_cli_errors(tmp_path: Path, monkeypatch, capsys) -> None:
    code, _, err = run_cli(monkeypatch, capsys, "compare", "--run", "encA-mlp", "-o",
                           str(tmp_path / "c.tsv"))
    assert code == 2 and "ENCODER:HEAD:SUMMARY_JSON" in err
    code, _, err = run_cli(monkeypatch, capsys, "compare", "--run",
                           f"e:h:{tmp_path / 'none.json'}", "-o", str(tmp_path / "c.tsv"))
    assert code == 2 and "none.json" in err
    assert not (tmp_path / "c.tsv").exists()
