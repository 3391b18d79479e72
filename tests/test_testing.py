"""slide2expr.testing: each factory's file reads back through its contract with what was
chosen, stamped as the stages stamp it."""

from __future__ import annotations

import numpy as np
import pytest

from slide2expr.contracts._h5 import FORMAT_ATTR
from slide2expr.contracts.dataset import read_dataset
from slide2expr.contracts.features import read_features
from slide2expr.contracts.tilemaps import read_tile_map
from slide2expr.contracts.tiles import read_tiles
from slide2expr.testing import (
    make_dataset,
    make_features,
    make_linear_model,
    make_tile_map,
    make_tiles,
    spot_dataset,
)


def test_tiles_and_features_read_back_with_what_was_chosen(tmp_path):
    coords = np.array([[0, 0], [100, 0], [0, 100]])
    make_tiles(tmp_path / "t.h5", coords=coords, spot_ids=["a", "b", "c"], sample_id="S1",
               slide="S1.tif")
    tiles = read_tiles(tmp_path / "t.h5")
    np.testing.assert_array_equal(tiles.coords, coords)
    assert list(tiles.spot_ids) == ["a", "b", "c"]
    assert tiles.attrs.mode == "spots" and tiles.attrs.slide == "S1.tif"
    assert tiles.attrs.slide2expr_format == "tiles/1"

    rows = np.arange(12, dtype=np.float32).reshape(3, 4)
    rotated = rows[::-1].copy()
    made = make_features(tmp_path / "f.h5", features=rows, tiles=tiles, encoder="enc",
                         views={"rot90": rotated}, dtype="float16")
    back = read_features(tmp_path / "f.h5")
    np.testing.assert_array_equal(back.features, rows)
    np.testing.assert_array_equal(back.views["rot90"], rotated)
    np.testing.assert_array_equal(back.coords, coords)
    assert list(back.spot_ids) == ["a", "b", "c"] and back.features.dtype == np.float16
    assert back.attrs.encoder == "enc" and back.attrs.sample_id == "S1"
    assert back.attrs.slide2expr_format == "features/1"
    np.testing.assert_array_equal(made.features, back.features)


def test_default_features_follow_the_tiles_and_the_seed(tmp_path):
    a = make_features(tmp_path / "a.h5", spot_ids=[f"s{i}" for i in range(9)], seed=3)
    b = make_features(tmp_path / "b.h5", spot_ids=[f"s{i}" for i in range(9)], seed=3)
    c = make_features(tmp_path / "c.h5", spot_ids=[f"s{i}" for i in range(9)], seed=4)
    assert len(a) == 9 and np.array_equal(a.features, b.features)
    assert not np.array_equal(a.features, c.features)
    with pytest.raises(ValueError, match="2 feature rows for 9 tiles"):
        make_features(tmp_path / "d.h5", features=np.zeros((2, 4)),
                      spot_ids=[f"s{i}" for i in range(9)])


def test_tile_map_and_dataset_read_back(tmp_path):
    values = np.array([[1.0, 2.0], [3.0, 4.0]])
    make_tile_map(tmp_path / "m.h5ad", values=values, genes=["GA", "GB"], tile_size0=50.0,
                  spread=np.full((2, 2), 0.5), slide="S.tif")
    tmap = read_tile_map(tmp_path / "m.h5ad")
    np.testing.assert_allclose(tmap.values, values)
    np.testing.assert_allclose(tmap.centres, [[25.0, 25.0], [75.0, 25.0]])
    assert tmap.genes == ["GA", "GB"] and tmap.spread is not None

    make_dataset(tmp_path / "d.h5ad", n_patients=2, per_patient=5, noise_sd=0.0)
    data = read_dataset(tmp_path / "d.h5ad")
    assert data.uns["slide2expr"][FORMAT_ATTR] == "dataset/1"
    assert sorted(set(data.obs["patient"])) == ["p0", "p1"] and data.n_obs == 10
    # without noise, gene j is 2 + feature j (clipped at 0)
    np.testing.assert_allclose(data.X, np.clip(2 + data.obsm["X_toy"][:, :4], 0, None),
                               rtol=1e-6)


def test_spot_dataset_signal_draws_in_a_fixed_order():
    weights = []

    def signal(features, rng):
        w = rng.normal(size=(3, 2))
        weights.append(w)
        return features[:, :3] @ w

    a = spot_dataset(n_genes=2, signal=signal, seed=1)
    b = spot_dataset(n_genes=2, signal=signal, seed=1)
    np.testing.assert_array_equal(weights[0], weights[1])
    np.testing.assert_array_equal(a.X, b.X)
    assert a.X.shape == (60, 2) and (a.X >= 0).all()


def test_linear_model_predicts_its_weights(tmp_path):
    from slide2expr.predict import load_trained_head

    weight = np.array([[1.0, 0.0, 2.0], [0.0, -1.0, 0.0]])
    make_linear_model(tmp_path / "m" / "fold0", weight, np.array([0.5, 1.0]),
                      genes=["GA", "GB"])
    head = load_trained_head(tmp_path / "m")
    x = np.array([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]], dtype=np.float32)
    np.testing.assert_allclose(head.predict_tiles(x), x @ weight.T + [0.5, 1.0], atol=1e-6)
    assert head.genes == ["GA", "GB"] and head.meta["encoder"] == "toy"
