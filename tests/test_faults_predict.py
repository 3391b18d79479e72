"""Issue 21 cases 4 and 5: ``slide2expr predict`` refuses a model that does not fit its
features or is damaged, and NaN inputs, with one line, exit 2 and no output.

Each case runs the CLI as a subprocess. A good model on good features is the control: it
writes the predictions the faulty cases must not.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from slide2expr.contracts.features import FeatureWriter
from slide2expr.contracts.tiles import TileSet

REPO = Path(__file__).resolve().parents[1]
GENES = ["G0", "G1", "G2", "G3", "G4"]
DIM = 8


def slide2expr(*args: object, cwd: Path) -> subprocess.CompletedProcess[str]:
    """``python -m slide2expr ARGS`` in a fresh process (this checkout's code)."""
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    return subprocess.run([sys.executable, "-m", "slide2expr", *map(str, args)], cwd=cwd,
                          env=env, capture_output=True, text=True, timeout=300)


def error_line(stderr: str) -> str:
    """The one ``error:`` line of stderr; fails on a traceback or several error lines."""
    assert "Traceback" not in stderr, stderr
    lines = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, stderr
    return lines[0]


def write_features(path: Path, *, encoder: str = "toy", nan_rows: tuple[int, ...] = (),
                   n: int = 6) -> Path:
    """A complete grid features file of ``n`` tiles; ``nan_rows`` are set to NaN."""
    rng = np.random.default_rng(0)
    coords = np.stack([np.arange(n) * 64, np.zeros(n)], axis=1).astype(np.int64)
    tiles = TileSet(coords=coords, spot_ids=None,
                    attrs={"sample_id": "S1", "tile_px_level0": 64.0, "slide_mpp": 0.5})
    feats = rng.normal(size=(n, DIM)).astype(np.float32)
    feats[list(nan_rows)] = np.nan
    path.parent.mkdir(parents=True, exist_ok=True)
    with FeatureWriter(path, tiles, embed_dim=DIM,
                       attrs={"encoder": encoder, "weights": "random-init"}) as w:
        w.write(0, feats)
        w.finish()
    return path


def write_model(folder: Path, *, encoder: str = "toy") -> Path:
    """A one-fold MLP head predicting :data:`GENES` from ``DIM`` features."""
    import torch

    from slide2expr.train.heads import MLPHead
    from slide2expr.train.save import save_head

    torch.manual_seed(0)
    module = MLPHead(in_dim=DIM, n_genes=len(GENES), hidden=0)
    save_head(module, folder / "fold0",
              meta={"head": "mlp", "hparams": {"in_dim": DIM, "n_genes": len(GENES),
                                               "hidden": 0},
                    "genes": GENES, "fold": 0, "encoder": encoder})
    return folder


def edit_genes(model: Path, genes: list[str]) -> Path:
    """Rewrite ``head.json``'s gene list (as a hand edit or another run's file would)."""
    meta_path = model / "fold0" / "head.json"
    meta = json.loads(meta_path.read_text())
    meta["genes"] = genes
    meta_path.write_text(json.dumps(meta))
    return meta_path


def poison_weights(model: Path) -> Path:
    """One weight of ``head.safetensors`` set to NaN (a damaged or tampered file)."""
    from safetensors.torch import load_file, save_file

    path = model / "fold0" / "head.safetensors"
    state = load_file(str(path))
    name = next(k for k, v in state.items() if v.is_floating_point() and v.ndim == 2)
    state[name][0, 0] = float("nan")
    save_file(state, str(path))
    return path


def assert_refused(result: subprocess.CompletedProcess[str], out: Path, *,
                   names: Path, says: str) -> str:
    """Exit 2, one line naming ``names`` and containing ``says`` and a fix; no output."""
    line = error_line(result.stderr)
    assert result.returncode == 2, result.stderr
    assert str(names) in line and says in line, line
    assert "Fix:" in line
    assert not out.exists()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]
    return line


def test_a_fitting_model_predicts_every_gene(tmp_path):
    """The control: the same model and features without a fault give 5 finite columns."""
    import anndata as ad

    features = write_features(tmp_path / "features" / "S1.h5")
    model = write_model(tmp_path / "models")
    out = tmp_path / "out" / "pred.h5ad"
    out.parent.mkdir()
    result = slide2expr("predict", features, "--model", model, "-o", out, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    adata = ad.read_h5ad(out)
    assert list(adata.var_names) == GENES and adata.n_obs == 6
    assert np.isfinite(np.asarray(adata.X)).all()


def test_a_model_of_another_encoder_is_refused(tmp_path):
    features = write_features(tmp_path / "features" / "S1.h5", encoder="uni")
    model = write_model(tmp_path / "models", encoder="toy")
    out = tmp_path / "out" / "pred.h5ad"
    out.parent.mkdir()
    result = slide2expr("predict", features, "--model", model, "-o", out, cwd=tmp_path)
    line = assert_refused(result, out, names=features, says="trained on toy")
    assert "uni" in line


@pytest.mark.parametrize("genes", [GENES[:3], [], [*GENES, "G5", "G6"], ["G0"] * 5],
                         ids=["fewer", "none", "more", "duplicates"])
def test_a_gene_list_that_does_not_match_the_outputs_is_refused(tmp_path, genes):
    """Fewer names than outputs gave wrong columns, none gave 0 columns, exit 0."""
    features = write_features(tmp_path / "features" / "S1.h5")
    model = write_model(tmp_path / "models")
    meta_path = edit_genes(model, genes)
    out = tmp_path / "out" / "pred.h5ad"
    out.parent.mkdir()
    result = slide2expr("predict", features, "--model", model, "-o", out, cwd=tmp_path)
    says = "more than once" if len(genes) == len(GENES) else f"lists {len(genes)} genes"
    assert_refused(result, out, names=meta_path, says=says)


def test_heatmap_refuses_the_same_gene_list_through_the_same_check(tmp_path):
    """``heatmap`` (map only: no slide needed) gives the line ``predict`` gives."""
    features = write_features(tmp_path / "features" / "S1.h5")
    model = write_model(tmp_path / "models")
    meta_path = edit_genes(model, GENES[:3])
    out = tmp_path / "out" / "pred.h5ad"
    out.parent.mkdir()
    predict = slide2expr("predict", features, "--model", model, "-o", out, cwd=tmp_path)
    heatmap = slide2expr("heatmap", features, "--model-dir", model, "-o", tmp_path / "maps",
                         "--map-only", cwd=tmp_path)
    assert heatmap.returncode == 2
    assert error_line(heatmap.stderr) == error_line(predict.stderr)
    assert str(meta_path) in error_line(heatmap.stderr)
    assert not (tmp_path / "maps" / "S1.h5ad").exists()


def test_nan_feature_rows_are_refused(tmp_path):
    features = write_features(tmp_path / "features" / "S1.h5", nan_rows=(1, 4))
    model = write_model(tmp_path / "models")
    out = tmp_path / "out" / "pred.h5ad"
    out.parent.mkdir()
    result = slide2expr("predict", features, "--model", model, "-o", out, cwd=tmp_path)
    line = assert_refused(result, out, names=features, says="2 feature row(s) of 6")
    assert "extract" in line


def test_nan_weights_are_refused(tmp_path):
    features = write_features(tmp_path / "features" / "S1.h5")
    model = write_model(tmp_path / "models")
    weights = poison_weights(model)
    out = tmp_path / "out" / "pred.h5ad"
    out.parent.mkdir()
    result = slide2expr("predict", features, "--model", model, "-o", out, cwd=tmp_path)
    line = assert_refused(result, out, names=weights, says="NaN or infinite weights")
    assert "retrain" in line


def set_bounds(model: Path, low: list[float], high: list[float]) -> None:
    """Record a plausible range in ``head.json``, as training does."""
    meta_path = model / "fold0" / "head.json"
    meta = json.loads(meta_path.read_text())
    meta["plausible"] = {"rule": "test", "low": low, "high": high}
    meta_path.write_text(json.dumps(meta))


def own_predictions(model: Path, features: Path) -> np.ndarray:
    """What the model predicts for the file's tiles (in this process)."""
    from slide2expr.contracts.features import read_features
    from slide2expr.predict import load_trained_head

    return load_trained_head(model).predict_tiles(read_features(features).features)


@pytest.mark.parametrize("command", ["predict", "heatmap"])
def test_values_outside_the_training_range_are_counted_and_logged(tmp_path, command):
    """Issue 21 case 6 for new slides: G1's bounds sit above every value the model gives, so
    all 6 tiles' G1 values are implausible; G0's bounds hold its values exactly (0 outside).
    Both ``predict`` and the heatmap's tile map record the count and log one warning; the
    values themselves are kept."""
    import anndata as ad

    from slide2expr.contracts.tilemaps import read_tile_map

    features = write_features(tmp_path / "features" / "S1.h5")
    model = write_model(tmp_path / "models")
    values = own_predictions(model, features)
    low = [float(v) for v in values.min(0)]
    high = [float(v) for v in values.max(0)]
    low[1], high[1] = float(values[:, 1].max()) + 1.0, float(values[:, 1].max()) + 2.0
    set_bounds(model, low, high)
    if command == "predict":
        out = tmp_path / "out" / "pred.h5ad"
        out.parent.mkdir()
        result = slide2expr("predict", features, "--model", model, "-o", out, cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        adata = ad.read_h5ad(out)
        record = adata.uns["slide2expr"]["range_check"]
        assert int(record["outside"]) == 6 and list(record["genes"]) == ["G1"]
        assert int(record["checked"]) == 6 * len(GENES)
        np.testing.assert_allclose(np.asarray(adata.X), values, rtol=1e-5)  # kept, not clipped
    else:
        result = slide2expr("heatmap", features, "--model-dir", model, "-o", tmp_path / "maps",
                            "--map-only", cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        tmap = read_tile_map(tmp_path / "maps" / "S1.h5ad")
        assert int(tmap.attrs.implausible_values) == 6
        assert int(tmap.attrs.plausible_checked) == 6 * len(GENES)
    warnings = [line for line in result.stderr.splitlines() if "plausible range" in line]
    assert len(warnings) == 1 and "6 predicted values" in warnings[0] and "G1" in warnings[0]


def test_values_inside_the_training_range_give_no_warning(tmp_path):
    """The control: bounds that hold every value give a count of 0 and no warning."""
    import anndata as ad

    features = write_features(tmp_path / "features" / "S1.h5")
    model = write_model(tmp_path / "models")
    values = own_predictions(model, features)
    set_bounds(model, [float(v) - 1 for v in values.min(0)],
               [float(v) + 1 for v in values.max(0)])
    out = tmp_path / "out" / "pred.h5ad"
    out.parent.mkdir()
    result = slide2expr("predict", features, "--model", model, "-o", out, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert int(ad.read_h5ad(out).uns["slide2expr"]["range_check"]["outside"]) == 0
    assert "plausible range" not in result.stderr
