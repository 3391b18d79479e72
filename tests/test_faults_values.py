"""Fault cases of issue 21 about impossible values and unguarded inputs (cases 6, 9, 10, 12).

Every case runs the CLI as a subprocess (a crash at interpreter exit is invisible to an
in-process call) on tiny synthetic inputs, and checks one line naming the file, the problem
and the fix, a non-zero exit status and no partial output.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from PIL import Image
from test_faults import tissue_png

REPO = Path(__file__).resolve().parents[1]
#: Small, fast training (the planted signal is linear, so a few epochs suffice).
FAST_TRAIN = {"folds": "loo", "max_epochs": 6, "min_epochs": 2, "patience": 3, "hidden": 16,
              "batch_size": 32, "genes": {"method": "all", "min_fraction": 0.0,
                                          "min_mean": 0.0}}


def cli(*args: object, cwd: Path | None = None, timeout: int = 900) -> subprocess.CompletedProcess:
    """``slide2expr ARGS`` in a child process, with this checkout's code first on the path."""
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "slide2expr", *map(str, args)], cwd=cwd,
                          env=env, capture_output=True, text=True, timeout=timeout)


def error_line(result: subprocess.CompletedProcess) -> str:
    """The one ``error:`` line of stderr; fails on a traceback or several error lines."""
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, result.stderr[-3000:]
    return lines[0]


# -- case 6: near-constant features, implausible predictions -----------------------------------

def two_section_dataset(path: Path, *, shift: float, near_constant: bool, n: int = 40,
                        seed: int = 0) -> Path:
    """A spot dataset of two sections whose target G0 follows feature 1.

    With ``near_constant`` feature 0 has an SD of 1e-5 inside each section and sits ``shift``
    apart between them (a channel that barely fires in one section and does in another), so
    a model trained on one section sees a held-out z-score of ``shift / 1e-5``. Without it,
    feature 1 of the second section is scaled by ``shift``: the predictive feature leaves the
    training range and a linear model follows it out of its target's range.
    """
    rng = np.random.default_rng(seed)
    feats = rng.normal(size=(2 * n, 6)).astype(np.float32)
    second = np.arange(2 * n) >= n
    if near_constant:
        feats[:, 0] = np.where(second, shift, 0.0) + 1e-5 * rng.normal(size=2 * n)
    y0 = 2.0 + 0.5 * feats[:, 1]
    if not near_constant:
        feats[second, 1] *= shift
    y = np.stack([y0, 2.0 + 0.3 * rng.normal(size=2 * n), 1.0 + 0.3 * rng.normal(size=2 * n)],
                 axis=1)
    x = np.clip(y, 0, None).astype(np.float32)
    obs = pd.DataFrame({"sample_id": np.where(second, "s1", "s0"),
                        "patient": np.where(second, "p1", "p0")},
                       index=[f"u{i}" for i in range(2 * n)])
    adata = ad.AnnData(X=x, obs=obs, var=pd.DataFrame(index=["G0", "G1", "G2"]))
    adata.layers["counts"] = np.round(np.expm1(x) * 10).astype(np.float32)
    adata.obsm["X_toy"] = feats
    adata.obsm["spatial"] = rng.uniform(0, 1000, size=(2 * n, 2))
    adata.uns["slide2expr"] = {"mode": "spot", "encoder": "toy"}
    adata.write_h5ad(path)
    return path


def train(dataset: Path, out: Path) -> tuple[subprocess.CompletedProcess, Path]:
    preds = out / "predictions" / "mlp.h5ad"
    result = cli("train", dataset, "--head", "mlp", "--models-dir", out / "models" / "mlp",
                 "--predictions", preds, "--threads", 1, "--accelerator", "cpu",
                 "--config-json", json.dumps({"train": {**FAST_TRAIN, "baselines":
                                                        ["ridge", "mean"]}}))
    return result, preds


def range_check(preds: Path) -> dict:
    return ad.read_h5ad(preds).uns["slide2expr"]["train"]["range_check"]


def test_near_constant_feature_no_longer_explodes(tmp_path):
    """Feature 0 is constant up to 1e-5 in the training section and 3 units away in the
    held-out one: without the SD floor its z-score is 300,000 and the predictions follow."""
    dataset = two_section_dataset(tmp_path / "dataset.h5ad", shift=3.0, near_constant=True)
    result, preds = train(dataset, tmp_path / "run")
    assert result.returncode == 0, result.stderr[-3000:]
    out = ad.read_h5ad(preds)
    truth = np.asarray(out.X)
    for layer in ("predicted", "baseline_ridge"):
        p = np.asarray(out.layers[layer])
        assert np.isfinite(p).all(), layer
        # within the plausible range: the measured range widened by half of it on each side
        span = truth.max(0) - truth.min(0)
        assert (p <= truth.max(0) + span).all() and (p >= truth.min(0) - span).all(), \
            (layer, p.min(0), p.max(0), truth.min(0), truth.max(0))
    record = out.uns["slide2expr"]["train"]["range_check"]
    assert record["layers"]["predicted"]["outside"] == 0
    assert record["layers"]["predicted"]["checked"] == truth.size
    assert "train min" in record["rule"] and float(record["margin"]) == 0.5
    folds = out.uns["slide2expr"]["train"]["folds"]
    assert [int(folds[f]["near_constant_features"]) for f in sorted(folds)] == [1, 1]


def test_out_of_range_predictions_are_counted_logged_and_reported(tmp_path):
    """The predictive feature is 40x wider in the held-out section: ridge follows it far out
    of G0's range. The values are kept, counted in the predictions file, logged by train and
    named by the report (log, summary.json, page)."""
    dataset = two_section_dataset(tmp_path / "dataset.h5ad", shift=40.0, near_constant=False)
    result, preds = train(dataset, tmp_path / "run")
    assert result.returncode == 0, result.stderr[-3000:]
    record = range_check(preds)
    ridge = record["layers"]["baseline_ridge"]
    assert ridge["outside"] > 0 and "G0" in list(ridge["genes"])
    assert record["layers"]["baseline_mean"]["outside"] == 0  # the mean is always in range
    # the count is the number of held-out values beyond the fold's bounds, recomputed here
    out = ad.read_h5ad(preds)
    counted = 0
    for k in np.unique(out.obs["fold"]):
        train_rows = np.asarray(out.obs["fold"] != k)
        y = np.asarray(out.X)[train_rows]
        lo, hi = y.min(0) - 0.5 * np.ptp(y, 0), y.max(0) + 0.5 * np.ptp(y, 0)
        p = np.asarray(out.layers["baseline_ridge"])[~train_rows]
        counted += int(((p < lo) | (p > hi)).sum())
    assert ridge["outside"] == counted
    # every fold's head.json keeps its bounds, for the maps and `slide2expr predict`
    for k in np.unique(out.obs["fold"]):
        y = np.asarray(out.X)[np.asarray(out.obs["fold"] != k)]
        meta = json.loads((tmp_path / "run" / "models" / "mlp" / f"fold{int(k)}"
                           / "head.json").read_text())
        cols = [list(out.var_names).index(g) for g in meta["genes"]]
        lo, hi = y.min(0) - 0.5 * np.ptp(y, 0), y.max(0) + 0.5 * np.ptp(y, 0)
        np.testing.assert_allclose(meta["plausible"]["low"], lo[cols], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(meta["plausible"]["high"], hi[cols], rtol=1e-5, atol=1e-5)
    warning = [line for line in result.stderr.splitlines() if "plausible range" in line]
    assert len(warning) == 1 and "baseline_ridge" in warning[0], result.stderr[-3000:]

    report = cli("report", preds, "-o", tmp_path / "report", "--bootstrap", 0)
    assert report.returncode == 0, report.stderr[-3000:]
    assert "Implausible predictions: baseline_ridge" in report.stderr
    summary = json.loads((tmp_path / "report" / "summary.json").read_text())
    assert summary["implausible_predictions"]["layers"]["baseline_ridge"]["outside"] == counted
    assert "Implausible predictions" in (tmp_path / "report" / "index.html").read_text()


def test_sd_floor_leaves_ordinary_features_alone_and_bounds_near_constant_ones():
    from slide2expr.train.baselines import hest_baseline, ridge_baseline
    from slide2expr.train.scaling import SD_FLOOR_FRACTION, floored_sd, standardise

    rng = np.random.default_rng(0)
    train = rng.normal(size=(50, 8))
    train[:, 0] = 1e-6 * rng.normal(size=50)
    test = rng.normal(size=(5, 8))
    test[:, 0] = 3.0
    sd = train.std(axis=0)
    floored = floored_sd(sd)
    np.testing.assert_array_equal(floored[1:], sd[1:])  # ordinary features: exactly as before
    assert floored[0] == 1.0  # near constant: raw units, as scikit-learn does for constants
    _, z = standardise(train, test)
    assert np.abs(z[:, 0]).max() < 3.01  # 3 / 1e-6 = 3,000,000 without the floor
    # blocks: the second block's scale (1e-3) is its own, not the first block's
    small = np.concatenate([sd, sd * 1e-3])
    np.testing.assert_array_equal(floored_sd(small, [8, 8])[9:], small[9:])
    assert SD_FLOOR_FRACTION * np.median(sd) > sd[0]
    # every feature constant: divided by 1, as scikit-learn does
    np.testing.assert_array_equal(floored_sd(np.zeros(4)), np.ones(4))
    y = train[:, 1:3] + 0.1 * rng.normal(size=(50, 2))
    ridge, _ = ridge_baseline(train, y, test, np.arange(50) % 5, alphas=[1.0, 10.0], seed=0)
    assert np.abs(ridge).max() < 50
    assert np.abs(hest_baseline(train, y, test, n_components=4)).max() < 50


# -- case 9: implausible mpp from any source ---------------------------------------------------

# tissue_png: the white 'slide' with a pink block of tissue, without a resolution in its
# metadata (a PNG written by PIL carries none), shared with the other fault tests.


@pytest.mark.parametrize(("flags", "source", "problem"), [
    (["--mpp", "1000"], "the sample sheet (--mpp) gives mpp 1000", "outside the plausible range"),
    (["--mpp", "1e308"], "the sample sheet (--mpp) gives mpp 1e+308", "outside the plausible"),
    (["--default-mpp", "0"], "default_slide_mpp (--default-mpp) gives mpp 0", "not positive"),
    (["--default-mpp", "-1"], "default_slide_mpp (--default-mpp) gives mpp -1", "not positive"),
    (["--default-mpp", "1e308"], "default_slide_mpp (--default-mpp) gives mpp 1e+308",
     "outside the plausible"),
    # a bad default is refused even when the sheet's value would be used
    (["--mpp", "0.5", "--default-mpp", "0"], "default_slide_mpp (--default-mpp)", "not positive"),
])
def test_implausible_mpp_is_named_with_its_source(flags, source, problem, tmp_path):
    slide = tissue_png(tmp_path / "toy.png")
    out = tmp_path / "out"
    result = cli("tile", slide, "--sample-id", "toy", *flags, "-o", out / "toy.h5", timeout=60)
    line = error_line(result)
    assert result.returncode == 2
    assert str(slide) in line and source in line and problem in line and "Fix:" in line
    assert not out.exists() or list(out.iterdir()) == []


def test_placeholder_metadata_mpp_is_named_as_such(tmp_path):
    """A 72-dpi resolution tag is 352.8 um/px: named as the metadata's implausible value
    when nothing else gives an mpp, and set aside with a warning when the sheet does."""
    import tifffile

    image = np.asarray(Image.open(tissue_png(tmp_path / "toy.png")).convert("RGB"))
    slide = tmp_path / "dpi72.tiff"
    tifffile.imwrite(slide, image, tile=(256, 256), resolution=(72, 72),
                     resolutionunit="INCH", photometric="rgb")
    result = cli("tile", slide, "--sample-id", "toy", "-o", tmp_path / "a" / "t.h5", timeout=60)
    line = error_line(result)
    assert result.returncode == 2 and "metadata gives mpp 352.8" in line
    assert "no resolution" not in line and not (tmp_path / "a").exists()
    result = cli("tile", slide, "--sample-id", "toy", "--mpp", "0.5", "--tile-px", "96",
                 "-o", tmp_path / "b" / "t.h5", timeout=60)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "metadata gives mpp 352.8" in result.stderr and "set aside" in result.stderr


def test_sample_sheet_mpp_out_of_range_is_refused(tmp_path):
    sheet = tmp_path / "samples.tsv"
    sheet.write_text("sample_id\tslide\tmpp\nA\ta.png\t0.5\nB\tb.png\t1000\n")
    expression = tmp_path / "expression.tsv"
    expression.write_text("sample_id\tG0\nA\t1\nB\t2\n")
    result = cli("join", sheet, "-f", tmp_path / "features", "-o", tmp_path / "out" / "d.h5ad",
                 "--mode", "bulk", "--encoder", "toy", "--expression", expression, timeout=60)
    line = error_line(result)
    assert result.returncode == 2
    assert str(sheet) in line and "B (1000)" in line and "plausible range 0.05-20" in line
    assert not (tmp_path / "out").exists()


# -- case 12 and case 10 (busy port): view --serve ---------------------------------------------

def serve(folder: Path, port: int = 0) -> tuple[subprocess.Popen, str]:
    """``slide2expr view --serve --no-build`` in a child process; returns it and its URL."""
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    proc = subprocess.Popen([sys.executable, "-m", "slide2expr", "view", "--serve", "--no-build",
                             "-o", str(folder), "--port", str(port)], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    line = proc.stdout.readline()
    assert line.startswith("serving"), line + proc.stderr.read()
    return proc, line.split(" at ")[1].split()[0].rsplit("/", 1)[0]


def status(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, b""


def test_serve_gives_only_regular_files_inside_the_folder(tmp_path):
    folder = tmp_path / "viewer"
    (folder / "slides" / "C2").mkdir(parents=True)
    (folder / "index.html").write_text("<html>viewer</html>")
    (folder / "slides" / "C2" / "0_0.jpeg").write_bytes(b"tile")
    (folder / "inside.txt").write_text("ok")
    secret = tmp_path / "secret.txt"
    secret.write_text("not for the browser")
    (folder / "leak").symlink_to(secret)
    (folder / "passwd").symlink_to("/etc/passwd")
    (folder / "outside").symlink_to(tmp_path, target_is_directory=True)
    (folder / "alias.txt").symlink_to(folder / "inside.txt")
    proc, base = serve(folder)
    try:
        assert status(f"{base}/index.html") == (200, b"<html>viewer</html>")
        assert status(f"{base}/") == (200, b"<html>viewer</html>")
        assert status(f"{base}/slides/C2/0_0.jpeg") == (200, b"tile")
        assert status(f"{base}/alias.txt") == (200, b"ok")  # a link that stays inside
        for path in ("leak", "passwd", "outside/secret.txt", "missing.txt"):
            assert status(f"{base}/{path}")[0] == 404, path
        for path in ("slides/", "slides/C2/", "outside/"):
            code, body = status(f"{base}/{path}")
            assert code in (403, 404) and b"0_0.jpeg" not in body, path
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_serve_on_a_busy_port_is_one_line(tmp_path):
    folder = tmp_path / "viewer"
    folder.mkdir()
    (folder / "index.html").write_text("<html></html>")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = cli("view", "--serve", "--no-build", "-o", folder, "--port", port, timeout=60)
    line = error_line(result)
    assert result.returncode == 2
    assert f"port {port}" in line and "in use" in line and "--port" in line
    assert "OSError" not in result.stderr


# -- case 10: one line each ---------------------------------------------------------------------

def test_config_section_that_is_not_a_mapping(tmp_path):
    slide = tissue_png(tmp_path / "toy.png")
    config = tmp_path / "config.yaml"
    config.write_text("tiling: 5\n")
    result = cli("tile", slide, "--sample-id", "toy", "--mpp", 0.5, "--config", config,
                 "-o", tmp_path / "out" / "t.h5", timeout=60)
    line = error_line(result)
    assert result.returncode == 2 and str(config) in line
    assert "section 'tiling' is 5, not a mapping" in line and "Fix:" in line
    assert not (tmp_path / "out").exists()
    config.write_text("train: 5\n")
    dataset = two_section_dataset(tmp_path / "dataset.h5ad", shift=1.0, near_constant=False)
    result = cli("train", dataset, "--models-dir", tmp_path / "models", "--predictions",
                 tmp_path / "p.h5ad", "--config", config, timeout=120)
    line = error_line(result)
    assert result.returncode == 2 and "section 'train' is 5, not a mapping" in line
    assert not (tmp_path / "models").exists() and not (tmp_path / "p.h5ad").exists()


@pytest.mark.parametrize("content", ["", "# only a comment\n"])
def test_empty_sample_sheet(content, tmp_path):
    sheet = tmp_path / "samples.tsv"
    sheet.write_text(content)
    result = cli("join", sheet, "-f", tmp_path / "features", "-o", tmp_path / "out" / "d.h5ad",
                 "--mode", "bulk", "--encoder", "toy", "--expression", sheet, timeout=60)
    line = error_line(result)
    assert result.returncode == 2 and str(sheet) in line
    assert ("is empty (0 bytes)" if not content else "has no header line") in line
    assert not (tmp_path / "out").exists()


def test_sample_id_too_long_for_a_file_name(tmp_path):
    slide = tissue_png(tmp_path / "toy.png")
    long_id = "s" * 300
    result = cli("tile", slide, "--sample-id", long_id, "--mpp", 0.5,
                 "-o", tmp_path / "out" / "t.h5", timeout=60)
    line = error_line(result)
    assert result.returncode == 2 and "300 characters" in line and "at most 128" in line
    sheet = tmp_path / "samples.tsv"
    sheet.write_text(f"sample_id\tslide\n{long_id}\ttoy.png\n")
    result = cli("join", sheet, "-f", tmp_path / "features", "-o", tmp_path / "out" / "d.h5ad",
                 "--mode", "bulk", "--encoder", "toy", "--expression", sheet, timeout=60)
    line = error_line(result)
    assert result.returncode == 2 and str(sheet) in line and "300 characters" in line
    # an output name the file system refuses, given directly: named as too long, not a crash
    result = cli("tile", slide, "--sample-id", "toy", "--mpp", 0.5,
                 "-o", tmp_path / "out" / f"{long_id}.h5", timeout=60)
    line = error_line(result)
    assert result.returncode == 2 and f"{long_id}.h5: a file or folder name" in line
    assert "bytes; the file system allows 255" in line
    assert not (tmp_path / "out").exists() or list((tmp_path / "out").iterdir()) == []


def test_output_path_under_a_file(tmp_path):
    slide = tissue_png(tmp_path / "toy.png")
    blocker = tmp_path / "results"
    blocker.write_text("a file, not a folder")
    for out in (blocker / "t.h5", blocker / "tiles" / "t.h5"):
        result = cli("tile", slide, "--sample-id", "toy", "--mpp", 0.5, "-o", out, timeout=60)
        line = error_line(result)
        assert result.returncode == 2
        assert line.startswith(f"error: {blocker}: is a file") and "Fix:" in line
    assert blocker.read_text() == "a file, not a folder"


def test_models_dir_that_is_a_symlink(tmp_path):
    dataset = two_section_dataset(tmp_path / "dataset.h5ad", shift=1.0, near_constant=False)
    real = tmp_path / "real_models"
    real.mkdir()
    (real / "keep.txt").write_text("mine")
    link = tmp_path / "models"
    link.symlink_to(real, target_is_directory=True)
    result = cli("train", dataset, "--models-dir", link, "--predictions", tmp_path / "p.h5ad",
                 "--accelerator", "cpu", "--config-json",
                 json.dumps({"train": FAST_TRAIN}), timeout=120)
    line = error_line(result)
    assert result.returncode == 2 and str(link) in line and "symbolic link" in line
    assert str(real) in line  # the fix names the real folder
    assert link.is_symlink() and sorted(p.name for p in real.iterdir()) == ["keep.txt"]
    assert not (tmp_path / "p.h5ad").exists()


def test_decompression_bomb_is_named_as_too_large(tmp_path):
    """A PNG whose header claims 70,000 x 70,000 px (4,900 Mpx) in a few bytes."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(b"\x89PNG\r\n\x1a\n"
                     + chunk(b"IHDR", struct.pack(">IIBBBBB", 70000, 70000, 8, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b""))
    result = cli("tile", bomb, "--sample-id", "bomb", "--mpp", 0.5,
                 "-o", tmp_path / "out" / "t.h5", timeout=60)
    line = error_line(result)
    assert result.returncode == 2 and str(bomb) in line
    assert "too large" in line and "4,900 Mpx" in line and "pyramidal TIFF" in line
    assert "truncated" not in line and "corrupt" not in line and "re-copy" not in line
    assert not (tmp_path / "out").exists()


def test_view_with_an_unreadable_predictions_file(tmp_path):
    from slide2expr.contracts.tilemaps import TileMap, write_tile_map

    results = tmp_path / "results"
    coords = np.array([[0, 0], [64, 0], [0, 64]], dtype=np.int64)
    attrs = {"sample_id": "S1", "slide": str(tmp_path / "S1.tiff"), "slide_mpp": 0.5,
             "mpp_source": "metadata", "level0_width": 128, "level0_height": 128,
             "tile_px_level0": 64.0, "head": "mlp", "model_use": "fold 0"}
    write_tile_map(results / "heatmaps" / "mlp" / "S1.h5ad",
                   TileMap(values=np.ones((3, 2), np.float32), genes=["G0", "G1"],
                           coords=coords, tile_size0=64.0, attrs=attrs))
    predictions = results / "predictions" / "mlp.h5ad"
    predictions.parent.mkdir(parents=True)
    predictions.write_bytes(b"\x89HDF\r\n\x1a\n" + b"\x00" * 200)  # a truncated HDF5 file
    result = cli("view", results, timeout=120)
    line = error_line(result)
    assert result.returncode == 2 and str(predictions) in line and "not a readable" in line
    assert not (results / "viewer").exists()
