"""Fault injection: every failure is one line, the right exit status and no leftovers.

One test (or a parametrised family) per row of issue 13's table: unwritable output folders,
a disk that fills up, tampered models, sample-sheet near-misses, control characters and
quoted names, colliding heatmap file names, Ctrl-C, an unreadable slide, stray temporaries
and large plain JPEGs. Commands run in this process through :func:`slide2expr.cli.main`
(exit status and stderr as a user sees them) on tiny synthetic inputs; Ctrl-C and SIGKILL
run in a child process.

Read-only folders and small disks are real: a read-only tmpfs and a small tmpfs when the
tests run as root (root ignores permission bits), ``chmod`` otherwise; without ``mount``
the full-disk cases fall back to ``RLIMIT_FSIZE`` (EFBIG, treated like a full disk) in a
child process, and skip with the reason when neither works.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from slide2expr.atomic import (
    TEMPORARY_PATTERN,
    atomic_output,
    atomic_outputs,
    stale_temporaries,
    temporary_sibling,
)
from slide2expr.contracts.features import FeatureWriter, partial_path, read_features
from slide2expr.contracts.tiles import TileSet, read_tiles
from slide2expr.errors import EnvironmentFault
from slide2expr.testing import make_dataset, make_features, make_linear_model

TILE_PX = 96  # grid tiles of 96 px at 0.5 um/px: about 20 on the toy slide
N_GENES = 5

REPO = Path(__file__).resolve().parents[1]


# -- running the CLI -----------------------------------------------------------------------

def run_cli(capsys: pytest.CaptureFixture, *args: object) -> tuple[int, str]:
    """``slide2expr ARGS`` in this process: (exit status, stderr)."""
    from slide2expr import cli

    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    argv = sys.argv
    sys.argv = ["slide2expr", *map(str, args)]
    capsys.readouterr()
    cli._stopped_by.clear()
    try:
        cli.main()
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    finally:
        sys.argv = argv
        for s, h in handlers.items():
            signal.signal(s, h)
    return code, capsys.readouterr().err


def error_line(stderr: str) -> str:
    """The one ``error:`` line of stderr; fails on a traceback or several error lines."""
    assert "Traceback" not in stderr, stderr
    lines = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, stderr
    return lines[0]


def leftovers(folder: Path) -> list[str]:
    """Hidden or partial files under ``folder``: what a failed command must not leave."""
    if not folder.exists():
        return []
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")
                  if p.name.startswith(".") or "partial" in p.name)


# -- read-only folders and small disks -----------------------------------------------------

def _mount(*args: str) -> bool:
    if os.geteuid() != 0 or os.environ.get("SLIDE2EXPR_TEST_NO_MOUNT") or not shutil.which("mount"):
        return False
    return subprocess.run(["mount", *args], capture_output=True).returncode == 0


def _umount(path: Path) -> None:
    subprocess.run(["umount", "-l", str(path)], capture_output=True)


@pytest.fixture()
def read_only_dir(tmp_path: Path):
    """An existing folder nobody can write into (read-only tmpfs as root, else chmod)."""
    folder = tmp_path / "ro"
    folder.mkdir()
    if os.geteuid() != 0:
        folder.chmod(0o555)
        yield folder
        folder.chmod(0o755)
        return
    if not _mount("-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(folder)):
        pytest.skip("running as root (chmod does not stop root) and `mount -t tmpfs -o ro` "
                    "is not permitted here")
    try:
        yield folder
    finally:
        _umount(folder)


@pytest.fixture()
def small_disk(tmp_path: Path):
    """``make(size_kb) -> folder`` on a tmpfs of that size (skips if it cannot be mounted)."""
    mounted: list[Path] = []

    def make(size_kb: int) -> Path:
        folder = tmp_path / f"disk{len(mounted)}"
        folder.mkdir()
        if not _mount("-t", "tmpfs", "-o", f"size={size_kb}k", "tmpfs", str(folder)):
            pytest.skip("a small tmpfs cannot be mounted here (needs root and mount)")
        mounted.append(folder)
        return folder

    yield make
    for folder in mounted:
        _umount(folder)


def run_cli_with_file_limit(limit_bytes: int, *args: object) -> subprocess.CompletedProcess:
    """``slide2expr ARGS`` in a child whose files may not grow past ``limit_bytes``."""
    import resource

    def limit() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of being killed
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, limit_bytes))

    return subprocess.run([sys.executable, "-m", "slide2expr.cli", *map(str, args)],
                          capture_output=True, text=True, preexec_fn=limit, timeout=120)


# -- tiny inputs ---------------------------------------------------------------------------

def tissue_png(path: Path, *, width: int = 640, height: int = 480) -> Path:
    """A white 'slide' with a pink block of tissue (mpp given on the command line)."""
    rng = np.random.default_rng(0)
    img = np.full((height, width, 3), 245, dtype=np.uint8)
    block = rng.normal((190, 100, 160), 12, size=(height - 128, width - 128, 3))
    img[64:height - 64, 64:width - 64] = np.clip(block, 0, 255).astype(np.uint8)
    Image.fromarray(img).save(path)
    return path


@pytest.fixture(scope="module")
def toy(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A PNG slide and its grid tiles file (tiled once, through the tile stage)."""
    from slide2expr.tile import TilingParams, tile_slide

    root = tmp_path_factory.mktemp("toy")
    slide = tissue_png(root / "toy.png")
    tiles = root / "tiles" / "toy.h5"
    tile_slide(slide, sample_id="toy", out=tiles, sheet_mpp=0.5,
               params=TilingParams(target_mpp=0.5, tile_px=TILE_PX))
    return {"root": root, "slide": slide, "tiles": tiles}


@pytest.fixture(scope="module")
def bulk(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A bulk-mode join input: sheet, features of three samples, a samples x genes matrix."""
    root = tmp_path_factory.mktemp("bulk")
    feats = root / "features"
    for i, sid in enumerate(("A", "B", "C")):
        make_features(feats / f"{sid}.h5", sample_id=sid, seed=i)
    sheet = pd.DataFrame({"sample_id": ["A", "B", "C"], "slide": ["a.png", "b.png", "c.png"],
                          "patient": ["P1", "P2", "P3"]})
    sheet.to_csv(root / "samples.tsv", sep="\t", index=False)
    rng = np.random.default_rng(1)
    expr = pd.DataFrame(rng.integers(0, 50, size=(3, N_GENES)), index=["A", "B", "C"],
                        columns=[f"G{j}" for j in range(N_GENES)])
    expr.index.name = "sample_id"
    expr.to_csv(root / "expression.tsv", sep="\t")
    return {"root": root, "samples": root / "samples.tsv", "features": feats,
            "expression": root / "expression.tsv"}


def join_args(bulk: dict[str, Path], out: Path, *, samples: Path | None = None,
              expression: Path | None = None) -> list[object]:
    return ["join", samples or bulk["samples"], "-f", bulk["features"], "-o", out,
            "--mode", "bulk", "--encoder", "toy", "--expression", expression or bulk["expression"]]


def toy_model(folder: Path, genes: list[str], *, in_dim: int = 8) -> Path:
    """A saved one-fold linear MLP head predicting ``genes`` from ``in_dim`` features."""
    weight = np.random.default_rng(0).normal(scale=0.3, size=(len(genes), in_dim))
    make_linear_model(folder / "fold0", weight, genes=genes)
    return folder


def make_predictions(path: Path, *, n: int = 24, seed: int = 0) -> Path:
    """A minimal predictions ``.h5ad`` as the train stage writes it."""
    import anndata as ad

    rng = np.random.default_rng(seed)
    truth = rng.gamma(2.0, 1.0, size=(n, N_GENES)).astype(np.float32)
    obs = pd.DataFrame({"sample_id": [f"S{i % 4}" for i in range(n)],
                        "patient": [f"P{i % 4}" for i in range(n)],
                        "fold": np.arange(n) % 2}, index=[f"u{i}" for i in range(n)])
    adata = ad.AnnData(X=truth, obs=obs, var=pd.DataFrame(index=[f"G{j}" for j in range(N_GENES)]),
                       layers={"predicted": truth + rng.normal(0, 0.5, truth.shape).astype(np.float32),
                               "baseline_ridge": truth + rng.normal(0, 1, truth.shape).astype(np.float32)})
    path.parent.mkdir(parents=True, exist_ok=True)
    adata.write_h5ad(path)
    return path


# -- row: output folder not writable ----------------------------------------------------------

def test_tile_into_a_read_only_folder(toy, read_only_dir, capsys):
    code, err = run_cli(capsys, "tile", toy["slide"], "--sample-id", "toy", "--mpp", "0.5",
                        "--tile-px", TILE_PX, "-o", read_only_dir / "tiles" / "toy.h5")
    line = error_line(err)
    assert code == 1, err
    assert str(read_only_dir / "tiles") in line and ("read-only" in line or "permission" in line)
    assert "Fix:" in line
    assert list(read_only_dir.iterdir()) == []


def test_extract_into_a_read_only_folder(toy, read_only_dir, capsys):
    out = read_only_dir / "toy.h5"
    code, err = run_cli(capsys, "extract", toy["tiles"], "-o", out, "--device", "cpu",
                        "--no-progress", "--num-workers", "0")
    line = error_line(err)
    assert code == 1, err
    assert str(out) in line and ("read-only" in line or "permission" in line)
    assert list(read_only_dir.iterdir()) == []


def test_join_into_a_read_only_folder(bulk, read_only_dir, capsys):
    out = read_only_dir / "dataset.h5ad"
    code, err = run_cli(capsys, *join_args(bulk, out))
    line = error_line(err)
    assert code == 1, err
    assert str(out) in line and ("read-only" in line or "permission" in line)
    assert list(read_only_dir.iterdir()) == []


def test_report_into_a_read_only_folder(read_only_dir, tmp_path, capsys):
    predictions = make_predictions(tmp_path / "mlp.h5ad")
    out = read_only_dir / "report"
    code, err = run_cli(capsys, "report", predictions, "-o", out, "--bootstrap", "0",
                        "--n-scatter", "0")
    line = error_line(err)
    assert code == 1, err
    assert str(out) in line and ("read-only" in line or "permission" in line)
    assert list(read_only_dir.iterdir()) == []


def test_any_atomic_output_into_a_read_only_folder(read_only_dir):
    with pytest.raises(EnvironmentFault) as info, atomic_output(read_only_dir / "x.json") as tmp:
        tmp.write_text("{}")
    assert info.value.exit_code == 1 and str(read_only_dir / "x.json") in str(info.value)


# -- row: disk fills during extract / join --------------------------------------------------

def test_extract_onto_a_disk_too_small_fails_before_any_work(toy, small_disk, capsys):
    need = len(read_tiles(toy["tiles"])) * 1280 * 4
    disk = small_disk(need // 2048)  # half of what the features need
    out = disk / "features" / "toy.h5"
    code, err = run_cli(capsys, "extract", toy["tiles"], "-o", out, "--device", "cpu",
                        "--no-progress", "--num-workers", "0")
    line = error_line(err)
    assert code == 1, err
    assert str(out) in line and "disk is full" in line and "free space" in line
    assert leftovers(disk) == [] and not out.exists()


def test_extract_keeps_going_when_another_file_fills_the_disk(small_disk):
    """The features dataset is allocated up front: a disk filled later is no fault."""
    disk = small_disk(320)
    n, dim = 40, 1280  # 205 kB
    tiles = TileSet(coords=np.zeros((n, 2), dtype=np.int64), attrs={"tile_px_level0": 1.0})
    rows = np.random.default_rng(0).normal(size=(n, dim)).astype(np.float32)
    with FeatureWriter(disk / "x.h5", tiles, embed_dim=dim, attrs={"encoder": "e", "weights": "w"}) as w:
        w.write(0, rows[:8])
        with contextlib.suppress(OSError), open(disk / "filler", "wb") as f:
            while True:
                f.write(b"\0" * 4096)
                f.flush()
        assert shutil.disk_usage(disk).free < 8 * dim * 4  # the disk is full now
        for start in range(8, n, 8):
            w.write(start, rows[start:start + 8])
        w.finish()
    np.testing.assert_array_equal(read_features(disk / "x.h5").features, rows)


@pytest.fixture(scope="module")
def lite0():
    from slide2expr.extract.encoders import get_encoder

    return get_encoder("efficientnet_lite0")


def test_extract_stops_at_the_first_failed_write_and_resumes(toy, lite0, tmp_path, monkeypatch):
    """A write that fails anyway (a quota, a copy-on-write file system): one line, the rows
    written before stay valid in the partial file, and the rerun resumes bit for bit."""
    import torch

    from slide2expr.extract import extract_features

    torch.set_num_threads(1)
    reference = tmp_path / "reference.h5"
    extract_features(toy["tiles"], reference, encoder=lite0, batch_size=4, num_workers=0,
                     device="cpu", progress=False)
    out = tmp_path / "features" / "toy.h5"
    real = h5py.Dataset.__setitem__
    calls = {"n": 0}

    def failing(self, key, value):
        if self.name == "/features":
            calls["n"] += 1
            if calls["n"] == 3:
                raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, key, value)

    monkeypatch.setattr(h5py.Dataset, "__setitem__", failing)
    with pytest.raises(EnvironmentFault) as info:
        extract_features(toy["tiles"], out, encoder=lite0, batch_size=4, num_workers=0,
                         device="cpu", progress=False)
    message = str(info.value)
    assert "\n" not in message and "disk is full" in message
    assert "free space and rerun; it resumes after tile 8" in message
    assert not out.exists()
    # raw h5py: the partial file is incomplete on purpose, and read_features refuses those
    with h5py.File(partial_path(out), "r") as f:  # valid, and says what is done
        assert int(f.attrs["n_done"]) == 8
        np.testing.assert_array_equal(f["features"][:8], read_features(reference).features[:8])
    monkeypatch.setattr(h5py.Dataset, "__setitem__", real)
    result = extract_features(toy["tiles"], out, encoder=lite0, batch_size=4, num_workers=0,
                              device="cpu", progress=False)
    assert result.n_computed == result.n_tiles - 8
    np.testing.assert_array_equal(read_features(out).features, read_features(reference).features)
    assert leftovers(out.parent) == []


def test_join_onto_a_full_disk(bulk, small_disk, capsys):
    disk = small_disk(16)
    out = disk / "dataset.h5ad"
    code, err = run_cli(capsys, *join_args(bulk, out))
    line = error_line(err)
    assert code == 1, err
    assert str(out) in line and "disk is full" in line and "free space" in line
    assert list(disk.iterdir()) == []


def test_join_past_the_file_size_limit(bulk, tmp_path):
    """Without mount: RLIMIT_FSIZE makes writes fail with EFBIG, reported like a full disk."""
    out = tmp_path / "limited" / "dataset.h5ad"
    proc = run_cli_with_file_limit(8192, *join_args(bulk, out))
    line = error_line(proc.stderr)
    assert proc.returncode == 1, proc.stderr
    assert str(out) in line and "file size limit" in line
    assert leftovers(out.parent) == [] and not out.exists()


# -- row: tampered models ---------------------------------------------------------------------

def _strip_tensors(model: Path) -> None:
    from safetensors.torch import load_file, save_file

    weights = model / "fold0" / "head.safetensors"
    state = load_file(str(weights))
    save_file({k: v for k, v in state.items() if "feature_" in k or "target_" in k}, str(weights))


def _pickle_instead(model: Path) -> None:
    import torch

    torch.save({"net.weight": torch.zeros(2, 2)}, model / "fold0" / "head.safetensors")


def _truncate_meta(model: Path) -> None:
    meta = model / "fold0" / "head.json"
    meta.write_text(meta.read_text()[:40])


@pytest.mark.parametrize(("tamper", "culprit", "problem"), [
    (_strip_tensors, "head.safetensors", "missing tensor"),
    (_pickle_instead, "head.safetensors", "is not a safetensors file"),
    (_truncate_meta, "head.json", "is not valid JSON"),
])
def test_tampered_model_is_refused(tamper, culprit, problem, tmp_path, capsys):
    features = tmp_path / "toy.h5"
    make_features(features, sample_id="toy")
    model = toy_model(tmp_path / "models" / "mlp", [f"G{j}" for j in range(N_GENES)])
    out = tmp_path / "predicted.h5ad"
    assert run_cli(capsys, "predict", features, "--model", model, "-o", out)[0] == 0
    out.unlink()
    tamper(model)
    code, err = run_cli(capsys, "predict", features, "--model", model, "-o", out)
    line = error_line(err)
    assert code == 2, err
    assert str(model / "fold0" / culprit) in line and problem in line and "retrain" in line
    assert not out.exists() and leftovers(tmp_path) == []


# -- row: `train --config` values and misspelt top-level keys ---------------------------------

@pytest.mark.parametrize(("setting", "message"), [
    ("lr: fast", "config train.lr: 'fast' is not of type 'number'"),
    ("batch_size: 0", "config train.batch_size: 0 is less than the minimum of 1"),
    ("max_epochs: -5", "config train.max_epochs: -5 is less than the minimum of 1"),
])
def test_train_config_values_are_validated(setting, message, tmp_path, capsys):
    """The CLI validates ``train --config`` against the workflow's schema: one line, exit 2,
    before the dataset is even read."""
    config = tmp_path / "bad.yaml"
    config.write_text(f"train:\n  {setting}\n")
    models, preds = tmp_path / "models", tmp_path / "pred.h5ad"
    code, err = run_cli(capsys, "train", str(tmp_path / "dataset.h5ad"), "--models-dir",
                        str(models), "--predictions", str(preds), "--config", str(config))
    line = error_line(err)
    assert code == 2, err
    assert str(config) in line and message in line and "config/README.md" in line
    assert not models.exists() and not preds.exists()


def test_misspelt_top_level_config_key_stops_the_workflow(tmp_path):
    """``defualt_slide_mpp`` is refused by the workflow's schema instead of being ignored."""
    shutil.copytree(REPO / "config", tmp_path / "config")
    config = tmp_path / "config" / "config.yaml"
    config.write_text(config.read_text() + "defualt_slide_mpp: 0.5\n")
    proc = subprocess.run([sys.executable, "-m", "snakemake", "-s",
                           str(REPO / "Snakefile"), "-d", str(tmp_path), "-n"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert "defualt_slide_mpp" in proc.stdout + proc.stderr
    assert not (tmp_path / "results").exists()


# -- row: sample sheet near-misses --------------------------------------------------------------

@pytest.mark.parametrize("column", ["Patient", " patient", "PATIENT", "Sample ID"])
def test_sample_sheet_near_miss_is_refused(column, bulk, tmp_path, capsys):
    sheet = pd.read_csv(bulk["samples"], sep="\t").rename(
        columns={"patient" if "atient" in column else "sample_id": column})
    path = tmp_path / "samples.tsv"
    sheet.to_csv(path, sep="\t", index=False)
    out = tmp_path / "dataset.h5ad"
    code, err = run_cli(capsys, *join_args(bulk, out, samples=path))
    line = error_line(err)
    assert code == 2, err
    assert str(path) in line and repr(column) in line and "rename" in line
    assert not out.exists()


def test_unknown_sample_sheet_column_is_a_warning(bulk, tmp_path, caplog):
    from slide2expr.inputs.samples import read_sample_sheet

    path = tmp_path / "samples.tsv"
    pd.read_csv(bulk["samples"], sep="\t").assign(notes="x").to_csv(path, sep="\t", index=False)
    sheet = read_sample_sheet(path, mode="bulk", check_files=False)
    assert list(sheet["patient"]) == ["P1", "P2", "P3"]
    assert "'notes' are not used" in caplog.text


# -- row: control characters, quoted names ------------------------------------------------------

def test_gene_names_with_tabs_or_newlines_are_refused(bulk, tmp_path, capsys):
    expr = pd.read_csv(bulk["expression"], sep="\t", index_col=0)
    expr.columns = ["G0", "G\t1", "G2", "G\n3", "G4"]
    path = tmp_path / "expression.tsv"
    expr.to_csv(path, sep="\t")  # pandas quotes them
    out = tmp_path / "dataset.h5ad"
    code, err = run_cli(capsys, *join_args(bulk, out, expression=path))
    line = error_line(err)
    assert code == 2, err
    assert str(path) in line and "2 gene name(s) contain control characters" in line
    assert not out.exists()


def test_sample_ids_with_control_characters_are_refused(bulk, tmp_path, capsys):
    sheet = pd.read_csv(bulk["samples"], sep="\t")
    sheet.loc[1, "patient"] = "P\n2"
    path = tmp_path / "samples.tsv"
    sheet.to_csv(path, sep="\t", index=False)
    code, err = run_cli(capsys, *join_args(bulk, tmp_path / "d.h5ad", samples=path))
    line = error_line(err)
    assert code == 2 and "control characters" in line and "'patient'" in line


@pytest.mark.parametrize("sep", [",", "\t"])
def test_quoted_gene_names_are_kept_as_pandas_parses_them(sep, tmp_path):
    from slide2expr.inputs.expression.bulk import read_bulk_matrix

    path = tmp_path / ("expr.csv" if sep == "," else "expr.tsv")
    q = '"'
    header = sep.join(["sample_id", f'{q}HLA{sep}A{q}', '"TP53"', '"A""B"', "C"])
    path.write_text(header + "\n" + sep.join(["S1", "1", "2", "3", "4"]) + "\n"
                    + sep.join(["S2", "5", "6", "7", "8"]) + "\n")
    parsed = list(pd.read_csv(path, sep=sep, index_col=0).columns)
    assert parsed == [f"HLA{sep}A", "TP53", 'A"B', "C"]
    if sep == "\t":  # a tab inside a name: refused, not altered
        from slide2expr.errors import InputError

        with pytest.raises(InputError, match="control characters"):
            read_bulk_matrix(path, sample_ids=["S1", "S2"])
        return
    table = read_bulk_matrix(path, sample_ids=["S1", "S2"])
    assert list(table.genes) == parsed
    np.testing.assert_array_equal(table.dense(), [[1, 2, 3, 4], [5, 6, 7, 8]])


# -- row: gene names that sanitise to the same file name ---------------------------------------

def test_colliding_gene_file_names_are_made_unique(tmp_path, capsys, caplog):
    import logging

    from slide2expr.draw import gene_filename, gene_filenames

    genes = ["HLA/A", "HLA_A", "HLA A", "Gene", "GENE"]
    names = gene_filenames(genes)
    assert len({n.casefold() for n in names.values()}) == len(genes)
    assert names["HLA_A"] == "HLA_A" and gene_filename("HLA/A") == names["HLA/A"]
    assert names == gene_filenames(list(reversed(genes)))  # deterministic

    slide = tissue_png(tmp_path / "toy.png")
    features = tmp_path / "toy.h5"
    make_features(features, sample_id="toy", n=6, slide=str(slide), level0_width=640,
                  level0_height=480)
    model = toy_model(tmp_path / "models" / "mlp", genes)
    out = tmp_path / "heatmaps"
    with caplog.at_level(logging.INFO):
        code, err = run_cli(capsys, "heatmap", features, "--model-dir", model, "-o", out,
                            "--genes", ",".join(g for g in genes if "," not in g))
    assert code == 0, err
    pngs = sorted(p.name for p in (out / "toy").glob("*.png"))
    assert pngs == sorted(f"{names[g]}.png" for g in genes)
    limits = pd.read_csv(out / "toy" / "limits.tsv", sep="\t", keep_default_na=False)
    assert sorted(limits["gene"]) == sorted(genes)


# -- row: Ctrl-C ------------------------------------------------------------------------------------

def _many_tiles(toy: dict[str, Path], folder: Path, times: int) -> Path:
    """The toy's tiles ``times`` over: as much work as needed to act in the middle of it."""
    from slide2expr.contracts.tiles import write_tiles

    tiles = read_tiles(toy["tiles"])
    many = folder / "tiles" / "toy.h5"
    write_tiles(many, TileSet(coords=np.tile(tiles.coords, (times, 1)), attrs=tiles.attrs))
    return many


def _extract(tiles: Path, out: Path, *, batch_size: int = 1) -> subprocess.Popen:
    """``slide2expr extract`` in a child on one thread (one tile a batch: slow on purpose)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "slide2expr.cli", "extract", str(tiles), "-o", str(out),
         "--device", "cpu", "--no-progress", "--num-workers", "0", "--batch-size",
         str(batch_size), "--threads", "1"], stderr=subprocess.PIPE, text=True, env=env)


def _rows_done(partial: Path) -> int:
    """``n_done`` of a partial features file (0 while it is absent or being created).

    Raw h5py: the file is incomplete (read_features refuses it) and another process writes
    it (no HDF5 file locking)."""
    try:
        with h5py.File(partial, "r", locking=False) as f:
            return int(f.attrs.get("n_done", 0))
    except (OSError, KeyError):
        return 0


def _wait_for_rows(proc: subprocess.Popen, partial: Path, rows: int, timeout: float = 120) -> int:
    """Wait until the running extraction has written at least ``rows`` rows; return them."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        done = _rows_done(partial)
        if done >= rows:
            return done
        time.sleep(0.1)
    raise AssertionError(f"the extraction wrote fewer than {rows} rows (status {proc.poll()})")


def test_ctrl_c_says_interrupted_and_keeps_the_partial_file(toy, tmp_path):
    """The signal lands mid-run (rows written, rows to go); the partial file is valid and
    the rerun resumes from it, keeping the rows written before bit for bit."""
    from slide2expr.contracts.tiles import read_tiles

    many = _many_tiles(toy, tmp_path, 4)
    n = len(read_tiles(many))
    out = tmp_path / "features" / "toy.h5"
    proc = _extract(many, out)
    _wait_for_rows(proc, partial_path(out), 2)
    assert proc.poll() is None, "the extraction ended before the signal"
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1] == "interrupted; rerun to resume"
    assert not out.exists()
    # raw h5py: a partial file is incomplete on purpose, and read_features refuses those
    with h5py.File(partial_path(out), "r") as f:  # rows were written: the partial file is valid
        kept = int(f.attrs["n_done"])
        assert 2 <= kept < n == f["features"].shape[0]
        rows_before = f["features"][:kept]
    # the rerun resumes after the rows kept and publishes the complete file
    rerun = _extract(many, out, batch_size=16)
    _, err = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, err
    assert f"resuming after {kept} of {n} tiles" in err
    done = read_features(out)  # the reader refuses a file with fewer rows done than it holds
    assert len(done) == n
    np.testing.assert_array_equal(done.features[:kept], rows_before)
    assert leftovers(out.parent) == []


# -- issue 21: lost or corrupted data, and the environment ---------------------------------------
# Every case runs the CLI as a subprocess (a crash at interpreter exit is invisible in-process):
# one line, a non-zero status, the user's files byte-identical, nothing half-written visible.

TINY_TRAIN = json.dumps({"train": {"folds": 2, "max_epochs": 2, "min_epochs": 1, "hidden": 8,
                                   "batch_size": 32}})


def cli(*args: object, timeout: float = 300) -> subprocess.CompletedProcess:
    """``slide2expr ARGS`` in a child process: status and stderr as a user sees them."""
    return subprocess.run([sys.executable, "-m", "slide2expr.cli", *map(str, args)],
                          capture_output=True, text=True, timeout=timeout)


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (hidden ones too) with its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file()}


def one_clean_error(proc: subprocess.CompletedProcess) -> str:
    """The one ``error:`` line; no traceback, no HDF5 error stack, and nothing after it."""
    assert "HDF5-DIAG" not in proc.stderr and "Segmentation" not in proc.stderr, proc.stderr
    line = error_line(proc.stderr)
    assert proc.stderr.strip().splitlines()[-1] == line, proc.stderr
    return line


@pytest.fixture(scope="module")
def spot_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A spot-mode dataset for train: 3 patients x 20 spots, 8 features, 4 genes (gene j is
    feature j plus noise)."""
    path = tmp_path_factory.mktemp("spot_dataset") / "dataset.h5ad"
    make_dataset(path, n_patients=3, per_patient=20, dim=8, n_genes=4, noise_sd=0.3)
    return path


@pytest.fixture(scope="module")
def spot_join(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Spot-mode join inputs: 3 sections of 40 spots (her2st layout), 30 genes."""
    root = tmp_path_factory.mktemp("spot_join")
    rng = np.random.default_rng(0)
    rows = []
    for k, sid in enumerate(("A", "B", "C")):
        xs, ys = (a.ravel() for a in np.meshgrid(np.arange(8), np.arange(5)))
        ids = [f"{x}x{y}" for x, y in zip(xs, ys, strict=True)]
        spots, counts = root / "spots" / f"{sid}.tsv", root / "counts" / f"{sid}.tsv"
        spots.parent.mkdir(exist_ok=True)
        counts.parent.mkdir(exist_ok=True)
        pd.DataFrame({"x": xs, "y": ys, "pixel_x": 100 + 200.0 * xs,
                      "pixel_y": 100 + 200.0 * ys}).to_csv(spots, sep="\t", index=False)
        pd.DataFrame(rng.integers(0, 30, size=(len(ids), 30)), index=ids,
                     columns=[f"G{j}" for j in range(30)]).to_csv(counts, sep="\t")
        make_features(root / "features" / f"{sid}.h5", sample_id=sid, spot_ids=ids, seed=k)
        rows.append({"sample_id": sid, "slide": f"{sid}.png", "patient": f"P{k}",
                     "counts": counts, "spots": spots})
    pd.DataFrame(rows).to_csv(root / "samples.tsv", sep="\t", index=False)
    return {"samples": root / "samples.tsv", "features": root / "features"}


# case 1: an output folder slide2expr did not make is never emptied

def test_train_never_empties_a_models_dir_it_did_not_make(spot_dataset, tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    shutil.copy(spot_dataset, mine / "dataset.h5ad")  # even the input dataset
    (mine / "notes.txt").write_text("three weeks of notes\n")
    before = snapshot(tmp_path)
    proc = cli("train", mine / "dataset.h5ad", "--head", "mlp", "--models-dir", mine,
               "--predictions", tmp_path / "pred.h5ad", "--config-json", TINY_TRAIN)
    line = one_clean_error(proc)
    assert proc.returncode == 2, proc.stderr
    assert str(mine) in line and "did not write" in line and "dataset.h5ad" in line
    assert "Fix:" in line
    assert snapshot(tmp_path) == before  # byte-identical, nothing added (no predictions either)


def viewer_results(folder: Path) -> Path:
    """A results folder with one tile map (and its slide, S1.tiff): what `view` reads."""
    from test_viewer import make_tile_map, write_slide

    from slide2expr.contracts.tilemaps import write_tile_map

    slide = folder / "S1.tiff"
    write_slide(slide)
    results = folder / "results"
    write_tile_map(results / "heatmaps" / "mlp" / "S1.h5ad", make_tile_map(slide))
    return results


def test_view_replaces_only_a_viewer_folder_it_made(tmp_path):
    from slide2expr.atomic import FOLDER_MARKER

    results = viewer_results(tmp_path)
    theirs = tmp_path / "analysis"
    theirs.mkdir()
    (theirs / "figure1.svg").write_text("<svg/>")
    before = snapshot(theirs)
    proc = cli("view", results, "-o", theirs)
    line = one_clean_error(proc)
    assert proc.returncode == 2 and str(theirs) in line and "figure1.svg" in line
    assert snapshot(theirs) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["S1.tiff", "analysis", "results"]
    # its own folder (marked) is replaced whole by a rerun, a stray file included
    ours = tmp_path / "viewer"
    assert cli("view", results, "-o", ours).returncode == 0
    assert (ours / FOLDER_MARKER).is_file() and (ours / "index.html").is_file()
    (ours / "stray.txt").write_text("x")
    proc = cli("view", results, "-o", ours)
    assert proc.returncode == 0, proc.stderr
    assert not (ours / "stray.txt").exists() and (ours / "index.html").is_file()
    assert leftovers(tmp_path) == [f"viewer/{FOLDER_MARKER}"]


def test_folder_outputs_follow_one_rule(tmp_path):
    """:func:`check_replaceable`, through any atomic folder output: absent, empty or marked
    folders are written; a foreign folder, a file or a symlink is refused before any work."""
    from slide2expr.atomic import FOLDER_MARKER
    from slide2expr.errors import ForeignFolder

    def build(out: Path) -> list[str]:
        ran = []
        with atomic_output(out) as tmp:
            ran.append("work")
            tmp.mkdir()
            (tmp / "a.png").write_bytes(b"png")
        return ran

    assert build(tmp_path / "new") == ["work"]
    (tmp_path / "empty").mkdir()
    assert build(tmp_path / "empty") == ["work"]
    assert build(tmp_path / "new") == ["work"]  # marked by the first build
    assert sorted(p.name for p in (tmp_path / "new").iterdir()) == [FOLDER_MARKER, "a.png"]
    (tmp_path / "theirs").mkdir()
    (tmp_path / "theirs" / "x.txt").write_text("x")
    (tmp_path / "link").symlink_to(tmp_path / "new")
    for foreign in ("theirs", "link"):
        with pytest.raises(ForeignFolder):
            build(tmp_path / foreign)
    assert (tmp_path / "theirs" / "x.txt").read_text() == "x"
    assert (tmp_path / "new" / "a.png").is_file()


# case 2: one writer per output

def test_a_second_extract_of_the_same_output_is_refused(toy, tmp_path):
    many = _many_tiles(toy, tmp_path, 16)  # outlasts a second CLI start
    out = tmp_path / "features" / "toy.h5"
    first = _extract(many, out)
    try:
        _wait_for_rows(first, partial_path(out), 1)
        second = cli("extract", many, "-o", out, "--device", "cpu", "--no-progress",
                     "--num-workers", "0")
        assert first.poll() is None, "the first run ended before the second one started"
        line = one_clean_error(second)
        assert second.returncode == 1, second.stderr
        assert str(out) in line and f"process {first.pid}" in line and "Fix:" in line
        _, err = first.communicate(timeout=300)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == 0, err
    n = len(np.tile(toy_coords(toy), (16, 1)))
    assert len(read_features(out)) == n  # the first run's file, whole (all rows done)
    assert leftovers(out.parent) == []


def toy_coords(toy: dict[str, Path]) -> np.ndarray:
    return read_tiles(toy["tiles"]).coords


# case 3: extract with a slide that is not the tiles' slide

def test_extract_refuses_a_slide_that_is_not_the_tiles_slide(toy, tmp_path):
    from slide2expr.contracts.tiles import read_tiles
    from slide2expr.extract.run import check_same_slide

    tiles = read_tiles(toy["tiles"])
    other_size = tissue_png(tmp_path / "other.png", width=800, height=600)
    same_size = tmp_path / "same_size.png"
    pixels = np.asarray(Image.open(toy["slide"])).copy()
    pixels[0, 0] = 0  # one pixel: same size and mpp, another file
    Image.fromarray(pixels).save(same_size)
    for slide, what in ((other_size, "level-0 size is 800 x 600"), (same_size, "content differs")):
        out = tmp_path / "features" / f"{slide.stem}.h5"
        proc = cli("extract", toy["tiles"], "-o", out, "--slide", slide, "--device", "cpu",
                   "--no-progress", "--num-workers", "0")
        line = one_clean_error(proc)
        assert proc.returncode == 2, proc.stderr
        assert str(slide) in line and "is not the slide" in line and what in line
        assert not out.exists() and leftovers(out.parent) == []
    moved = tmp_path / "moved.png"  # the very slide, moved: accepted
    shutil.copy(toy["slide"], moved)
    check_same_slide(moved, tiles, source=toy["tiles"])


# case 7: a full disk during join (spot mode) and train

def test_join_spot_mode_stops_at_a_full_disk(spot_join, small_disk):
    disk = small_disk(16)
    out = disk / "dataset.h5ad"
    proc = cli("join", spot_join["samples"], "-f", spot_join["features"], "-o", out,
               "--encoder", "toy")
    line = one_clean_error(proc)
    assert proc.returncode == 1, proc.stderr
    assert str(out) in line and "disk is full" in line and "free space" in line
    assert list(disk.iterdir()) == []


@pytest.mark.parametrize("full", ["models", "predictions"])
def test_train_stops_at_a_full_disk(full, spot_dataset, small_disk):
    """One output on a 16 kB disk, the other on a roomy one: nothing is left on either."""
    small, roomy = small_disk(16), small_disk(4096)
    models = (small if full == "models" else roomy) / "models"
    predictions = (small if full == "predictions" else roomy) / "pred.h5ad"
    proc = cli("train", spot_dataset, "--head", "mlp", "--models-dir", models,
               "--predictions", predictions, "--config-json", TINY_TRAIN)
    line = one_clean_error(proc)
    assert proc.returncode == 1, proc.stderr
    named = models if full == "models" else predictions
    assert line.startswith(f"error: {named}: ") and "disk is full" in line
    assert list(small.iterdir()) == [] and list(roomy.iterdir()) == []


# case 8: Ctrl-C during train

def test_ctrl_c_during_train_says_interrupted_and_leaves_nothing(spot_dataset, tmp_path):
    slow = json.dumps({"train": {"folds": 2, "max_epochs": 1000, "min_epochs": 1000,
                                 "patience": 1000, "hidden": 8, "batch_size": 4}})
    models, predictions = tmp_path / "out" / "models", tmp_path / "out" / "pred.h5ad"
    args = ["train", spot_dataset, "--head", "mlp", "--models-dir", models, "--predictions",
            predictions]
    proc = subprocess.Popen([sys.executable, "-m", "slide2expr.cli", *map(str, args),
                             "--config-json", slow], stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not list(models.parent.glob(".models.partial-*/fold0/metrics.csv")):
        assert proc.poll() is None and time.monotonic() < deadline, "training never started"
        time.sleep(0.1)
    assert proc.poll() is None, "training ended before the signal"  # a fold is being trained
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and err.strip().splitlines()[-1] == "interrupted; rerun to resume"
    assert list(models.parent.iterdir()) == []  # no half-trained folder, no lock, no predictions
    rerun = cli(*args, "--config-json", TINY_TRAIN)
    assert rerun.returncode == 0, rerun.stderr
    assert (models / "fold0" / "head.safetensors").is_file() and predictions.is_file()


# case 13: a read-only output folder names the user's output; status 1 in every command

def test_read_only_output_names_the_users_output(spot_dataset, read_only_dir, tmp_path):
    models = read_only_dir / "models"
    proc = cli("train", spot_dataset, "--head", "mlp", "--models-dir", models, "--predictions",
               read_only_dir / "pred.h5ad", "--config-json", TINY_TRAIN)
    line = one_clean_error(proc)
    assert proc.returncode == 1, proc.stderr
    assert line.startswith(f"error: {models}: ") and "partial" not in line
    viewer = read_only_dir / "viewer"
    proc = cli("view", viewer_results(tmp_path), "-o", viewer)
    line = one_clean_error(proc)
    assert proc.returncode == 1, proc.stderr
    assert line.startswith(f"error: {viewer}: ") and ("read-only" in line or "permission" in line)
    assert list(read_only_dir.iterdir()) == []


# -- row: extract on an unreadable slide ------------------------------------------------------------

def test_extract_on_an_unreadable_slide_leaves_nothing(toy, tmp_path, capsys):
    broken = tmp_path / "broken.png"
    broken.write_bytes(toy["slide"].read_bytes()[:200])
    out = tmp_path / "features" / "toy.h5"
    code, err = run_cli(capsys, "extract", toy["tiles"], "-o", out, "--slide", broken,
                        "--device", "cpu", "--no-progress", "--num-workers", "0")
    line = error_line(err)
    assert code == 2, err
    assert str(broken) in line
    assert not out.exists() and leftovers(tmp_path / "features") == []


# -- row: temporary names ----------------------------------------------------------------------------

def test_temporary_names_are_never_doubled(tmp_path):
    final = tmp_path / "toy.h5"
    tmp = temporary_sibling(final)
    assert tmp.name == f".toy.partial-{tmp.name.split('partial-')[1]}"
    assert tmp.name.endswith(f"-{os.getpid()}.h5") and temporary_sibling(tmp) == tmp
    seen = []
    with atomic_outputs(final) as (outer,):
        with atomic_output(outer) as inner:  # as tile_slide nests write_tiles
            seen.append(inner)
            inner.write_text("x")
    assert seen == [outer] and final.read_text() == "x" and leftovers(tmp_path) == []


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_stray_temporaries_of_a_killed_run_are_cleaned_on_the_next_run(toy, tmp_path, capsys):
    out = tmp_path / "tiles" / "toy.h5"
    # a real SIGKILL in the middle of an atomic write of this output
    code = ("import os, signal, sys\nfrom slide2expr.atomic import atomic_output\n"
            f"with atomic_output({str(out)!r}) as tmp:\n"
            "    tmp.write_bytes(b'half')\n    os.kill(os.getpid(), signal.SIGKILL)\n")
    killed = subprocess.Popen([sys.executable, "-c", code])
    assert killed.wait() == -signal.SIGKILL
    lock = out.parent / ".toy.h5.lock"
    assert lock.is_file()  # the kernel dropped the lock; the file stays until the next run
    strays = [s for s in leftovers(out.parent) if s != lock.name]
    assert len(strays) == 1
    match = TEMPORARY_PATTERN.match(strays[0])
    assert match and match["stem"] == "toy" and int(match["pid"]) == killed.pid
    # one of a live process (this one's parent) and one of another output stay
    live = out.parent / f".toy.partial-{match['host']}-{os.getppid()}.h5"
    live.write_bytes(b"busy")
    other = out.parent / f".other.partial-{match['host']}-{_dead_pid()}.h5"
    other.write_bytes(b"other")
    assert stale_temporaries(out) == [out.parent / strays[0]]
    code, err = run_cli(capsys, "tile", toy["slide"], "--sample-id", "toy", "--mpp", "0.5",
                        "--tile-px", TILE_PX, "-o", out)
    assert code == 0, err
    assert leftovers(out.parent) == sorted([live.name, other.name])
    assert out.is_file()


# -- row: large plain JPEGs ---------------------------------------------------------------------

def test_her2st_jpeg_opens_without_a_decompression_bomb_warning(her2st):
    from slide2expr.inputs.slides import open_slide

    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with open_slide(her2st / "C2_HE.jpg", sheet_mpp=0.69) as slide:
            assert slide.level_dimensions[0] == (9274, 9911)
            thumb, _ = slide.thumbnail_by_downsample(64)
    assert thumb.shape[2] == 3 and Image.MAX_IMAGE_PIXELS is not None


# -- usage errors (issue 16) ----------------------------------------------------------------------

def test_usage_error_shows_usage_and_exits_2(capsys):
    code, err = run_cli(capsys, "tile", "--bogus")
    assert code == 2
    assert "Traceback" not in err and "Usage:" in err and "No such option: --bogus" in err


def test_faults_hidden_in_h5py_messages_are_recognised():
    """Disk-full errnos hidden in h5py messages are recognised; others are not faults."""
    from slide2expr.errors import environment_fault, fault_errno

    hdf5 = RuntimeError("Can't write data (file write failed: time = x, filename = 'a.h5', "
                        "errno = 28, error message = 'No space left on device')")
    assert fault_errno(hdf5) == errno.ENOSPC
    assert environment_fault(hdf5).path == "a.h5"
    wrapped = ValueError("while writing X")
    wrapped.__cause__ = hdf5
    assert fault_errno(wrapped) == errno.ENOSPC
    assert environment_fault(OSError(errno.ENOENT, "missing")) is None
    fault = environment_fault(PermissionError(errno.EACCES, "denied", "/x/y"))
    assert fault is not None and fault.path == "/x/y" and json.dumps(fault.one_line())


def test_train_without_head_trains_the_first_of_train_heads(spot_dataset, tmp_path):
    """``slide2expr train`` without ``--head`` trains the schema's default head (context),
    so a dataset without its context windows is refused in one line naming the missing
    block; ``train.heads: [mlp]`` in the config makes it train mlp."""
    models, predictions = tmp_path / "models", tmp_path / "pred.h5ad"
    proc = cli("train", spot_dataset, "--models-dir", models, "--predictions", predictions,
               "--config-json", TINY_TRAIN)
    line = one_clean_error(proc)
    assert proc.returncode == 2, proc.stderr
    assert "train input 'ctx300'" in line and "train.inputs" in line
    assert not models.exists() and not predictions.exists()
    mlp = json.dumps({"train": {**json.loads(TINY_TRAIN)["train"], "heads": ["mlp"]}})
    proc = cli("train", spot_dataset, "--models-dir", models, "--predictions", predictions,
               "--config-json", mlp)
    assert proc.returncode == 0, proc.stderr
    assert json.loads((models / "fold0" / "head.json").read_text())["head"] == "mlp"
