"""Files written by an earlier slide2expr still read, or are refused with the version to rerun.

``tests/data/archived/`` holds one small run made at an older commit (its README says which
and how). Each file is read with today's code when its format version is one the reader
supports, and its content is checked against the other files of the same run; a version the
reader no longer supports must be refused with one line naming the file, its version and
what to re-run. A copy of each file stamped with a version from the future is refused the
same way, in-process and through the CLI.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import h5py
import numpy as np
import pytest

from slide2expr.contracts import dataset, features, models, predictions, tilemaps, tiles
from slide2expr.contracts._h5 import FORMAT_ATTR
from slide2expr.errors import InputError

ARCHIVE = Path(__file__).parent / "data" / "archived"
ENCODER = "efficientnet_lite0"
GRID_FEATURES = ARCHIVE / "features" / ENCODER / "grid" / "demo1.h5"
SPOT_FEATURES = ARCHIVE / "features" / ENCODER / "spots" / "demo1.h5"
MODELS = ARCHIVE / "models" / "mlp"


@dataclass(frozen=True)
class Archived:
    """One archived file: where it is, the module owning its contract, how it is read, how
    its version stamp is stored."""

    path: Path
    module: ModuleType
    read: Callable[[Path], Any]
    stamp_in: str  # "h5" (file attribute), "uns" (uns['slide2expr'][...]), "json"
    uns_key: tuple[str, ...] = ("slide2expr",)


ARCHIVED = {
    "tiles grid": Archived(ARCHIVE / "tiles" / "grid" / "demo1.h5", tiles, tiles.read_tiles, "h5"),
    "tiles spots": Archived(ARCHIVE / "tiles" / "spots" / "demo1.h5", tiles, tiles.read_tiles,
                            "h5"),
    "features grid": Archived(GRID_FEATURES, features, features.read_features, "h5"),
    "features spots": Archived(SPOT_FEATURES, features, features.read_features, "h5"),
    "dataset": Archived(ARCHIVE / "dataset.h5ad", dataset, dataset.read_dataset, "uns"),
    "predictions": Archived(ARCHIVE / "predictions" / "mlp.h5ad", predictions,
                            predictions.read_predictions, "uns"),
    "tile map": Archived(ARCHIVE / "heatmaps" / "mlp" / "demo1.h5ad", tilemaps,
                         tilemaps.read_tile_map, "uns", ("slide2expr", "heatmap")),
    "head.json": Archived(MODELS / "fold0" / "head.json", models, models.read_head_meta, "json"),
}


def stamp_of(item: Archived, path: Path | None = None) -> str:
    """The ``slide2expr_format`` stamp of an archived file, read without the contract."""
    path = path or item.path
    if item.stamp_in == "json":
        return json.loads(path.read_text())[FORMAT_ATTR]
    with h5py.File(path, "r") as f:
        if item.stamp_in == "h5":
            return str(f.attrs[FORMAT_ATTR])
        group = f["uns/" + "/".join(item.uns_key)]
        value = group[FORMAT_ATTR][()]
    return value.decode() if isinstance(value, bytes) else str(value)


def restamp(item: Archived, path: Path, stamp: str) -> None:
    """Change the ``slide2expr_format`` stamp of ``path`` (a copy of an archived file).

    Raw h5py and JSON on purpose: this writes a version no writer of the package makes.
    """
    if item.stamp_in == "json":
        meta = json.loads(path.read_text())
        path.write_text(json.dumps({**meta, FORMAT_ATTR: stamp}))
        return
    with h5py.File(path, "r+") as f:
        if item.stamp_in == "h5":
            f.attrs[FORMAT_ATTR] = stamp
            return
        group = f["uns/" + "/".join(item.uns_key)]
        attrs = dict(group[FORMAT_ATTR].attrs)
        del group[FORMAT_ATTR]
        group.create_dataset(FORMAT_ATTR, data=stamp, dtype=h5py.string_dtype("utf-8"))
        group[FORMAT_ATTR].attrs.update(attrs)


def supported_versions(module: ModuleType) -> tuple[str, ...]:
    """The format versions the contract's reader accepts (its ``READS``, else its one
    ``VERSION``)."""
    return tuple(getattr(module, "READS", (module.VERSION,)))


def assert_version_refusal(exc: InputError, path: Path, module: ModuleType, version: str) -> None:
    line = exc.one_line()
    assert "\n" not in line
    assert str(path) in line
    assert f"{module.CONTRACT} format version {version}" in line
    assert "re-run `slide2expr " in line and f"{module.CONTRACT}/{module.VERSION}" in line



def test_the_archive_is_small_and_documented():
    files = [p for p in ARCHIVE.rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in files) < 1_000_000
    readme = (ARCHIVE / "README.md").read_text()
    for item in ARCHIVED.values():
        assert item.path.relative_to(ARCHIVE).as_posix() in readme
    assert (ARCHIVE / "make_archive.sh").is_file()


@pytest.mark.parametrize("name", list(ARCHIVED))
def test_archived_file_reads_or_is_refused_with_the_version_to_rerun(name):
    item = ARCHIVED[name]
    contract, _, version = stamp_of(item).partition("/")
    assert contract == item.module.CONTRACT
    if version in supported_versions(item.module):
        assert item.read(item.path) is not None
    else:
        with pytest.raises(InputError) as caught:
            item.read(item.path)
        assert_version_refusal(caught.value, item.path, item.module, version)


@pytest.mark.parametrize("name", list(ARCHIVED))
def test_a_file_from_a_newer_version_is_refused_in_one_line(name, tmp_path):
    item = ARCHIVED[name]
    copy = tmp_path / item.path.name
    shutil.copyfile(item.path, copy)
    future = str(int(item.module.VERSION) + 1)
    restamp(item, copy, f"{item.module.CONTRACT}/{future}")
    assert stamp_of(item, copy) == f"{item.module.CONTRACT}/{future}"
    with pytest.raises(InputError) as caught:
        item.read(copy)
    assert_version_refusal(caught.value, copy, item.module, future)
    assert "from a newer slide2expr" in caught.value.one_line()


def test_the_cli_refuses_a_newer_model_in_one_line(tmp_path):
    """`slide2expr predict` on a model whose head.json is of a newer format: one line, exit 2,
    no output."""
    model = tmp_path / "mlp"
    shutil.copytree(MODELS, model)
    for meta in model.glob("fold*/head.json"):
        restamp(ARCHIVED["head.json"], meta, f"model/{int(models.VERSION) + 1}")
    out = tmp_path / "predicted.h5ad"
    proc = subprocess.run([sys.executable, "-m", "slide2expr", "predict", str(SPOT_FEATURES),
                           "--model", str(model), "-o", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert "Traceback" not in proc.stderr and len(lines) == 1, proc.stderr
    assert "head.json" in lines[0] and f"model format version {int(models.VERSION) + 1}" in lines[0]
    assert "re-run `slide2expr train`" in lines[0]
    assert not out.exists()


def _read_all() -> dict[str, Any]:
    """Every archived file read with today's code; skips when one is refused (that is then
    checked by the test above)."""
    read = {}
    for name, item in ARCHIVED.items():
        if stamp_of(item).partition("/")[2] not in supported_versions(item.module):
            pytest.skip(f"{name}: the archived format is no longer read")
        read[name] = item.read(item.path)
    return read


def test_archived_files_agree_with_each_other():
    """The old run's files, read today, hold what the run made: the same tiles, spots and
    embeddings from file to file."""
    run = _read_all()
    grid_tiles, spot_tiles = run["tiles grid"], run["tiles spots"]
    grid, spots = run["features grid"], run["features spots"]
    assert grid_tiles.attrs.mode == "grid" and grid_tiles.spot_ids is None
    np.testing.assert_array_equal(grid.coords, grid_tiles.coords)
    np.testing.assert_array_equal(spots.coords, spot_tiles.coords)
    np.testing.assert_array_equal(spots.spot_ids, spot_tiles.spot_ids)
    assert spots.features.shape == (len(spot_tiles), 1280) and spots.features.dtype == np.float16
    assert np.isfinite(spots.features).all() and np.isfinite(grid.features).all()
    assert spots.attrs.encoder == ENCODER == grid.attrs.encoder
    assert spots.attrs.tile_px_level0 > 0 and grid.attrs.sample_id == "demo1"

    data = run["dataset"]
    demo1 = data[data.obs["sample_id"] == "demo1"]
    row = {str(s): i for i, s in enumerate(spots.spot_ids)}
    order = [row[s] for s in demo1.obs["spot_id"].astype(str)]
    np.testing.assert_array_equal(demo1.obsm[f"X_{ENCODER}"],
                                  spots.features[order].astype(np.float32))
    assert sorted(set(data.obs["sample_id"])) == ["demo1", "demo2", "demo3", "demo4"]

    pred = run["predictions"]
    assert list(pred.obs_names) == list(data.obs_names)
    assert np.isfinite(pred.layers["predicted"]).all()
    meta = run["head.json"]
    assert meta["head"] == "mlp" and list(pred.var_names) == meta["genes"]

    tmap = run["tile map"]
    assert tmap.genes == meta["genes"]
    np.testing.assert_array_equal(tmap.coords, grid.coords)


def test_an_archived_model_paints_its_archived_tile_map_again():
    """Today's prediction code, given the old model and the old grid features, paints the
    very map the old heatmap stage wrote (the fold that held demo1 out)."""
    from slide2expr.predict.tiles import predict_slide_map

    old = _read_all()["tile map"]
    new = predict_slide_map(GRID_FEATURES, MODELS)
    assert new.genes == old.genes
    np.testing.assert_allclose(new.values, old.values, rtol=1e-5, atol=1e-6)
    assert "held demo1 out" in str(new.attrs.model_use)
