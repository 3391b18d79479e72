"""Contracts own what is inside their files: outside ``slide2expr.contracts`` no attribute is
read or written by its name as a string, and the typed records keep every attribute (and
its order, so a file written back is the same bytes)."""

from __future__ import annotations

import ast
import hashlib
from pathlib import Path

import h5py
import numpy as np
import pytest

from slide2expr.contracts.features import FeatureAttrs, FeatureWriter, read_features
from slide2expr.contracts.tilemaps import TileMap, TileMapAttrs, read_tile_map, write_tile_map
from slide2expr.contracts.tiles import TileAttrs, TileSet, read_tiles, write_tiles
from slide2expr.errors import InputError

SRC = Path(__file__).resolve().parents[1] / "src" / "slide2expr"
CONTRACTS = SRC / "contracts"

#: Modules allowed a string-key ``attrs`` read, each with its reason.
ALLOWED = {
    "inputs/spots.py": "pandas DataFrame.attrs['source'] (the spot table's file, named in "
                       "errors), not a file's attributes",
}


def _holds_attrs(node: ast.expr) -> bool:
    """``x.attrs``, ``x.attrs.extra``, or a name ending in ``attrs`` (``attrs``,
    ``tile_attrs``)."""
    if isinstance(node, ast.Attribute):
        return node.attr == "attrs" or (node.attr == "extra" and _holds_attrs(node.value))
    return isinstance(node, ast.Name) and node.id.endswith("attrs")


def _is_text(node: ast.expr) -> bool:
    return (isinstance(node, ast.Constant) and isinstance(node.value, str)) \
        or isinstance(node, ast.JoinedStr)


def string_key_reads(path: Path) -> list[int]:
    """Lines of ``path`` that index, ``get``, ``pop`` or ``setdefault`` an attrs object
    with a string key, or ``getattr`` one with a string."""
    lines = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Subscript) and _holds_attrs(node.value) and _is_text(node.slice):
            lines.append(node.lineno)
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
              and node.func.attr in ("get", "pop", "setdefault")
              and _holds_attrs(node.func.value) and node.args and _is_text(node.args[0])):
            lines.append(node.lineno)
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
              and node.func.id in ("getattr", "setattr") and len(node.args) >= 2
              and _holds_attrs(node.args[0]) and _is_text(node.args[1])):
            lines.append(node.lineno)
    return sorted(set(lines))


def test_no_string_key_attribute_reads_outside_contracts():
    found = {}
    for path in SRC.rglob("*.py"):
        if CONTRACTS in path.parents:
            continue
        name = path.relative_to(SRC).as_posix()
        lines = string_key_reads(path)
        if lines and name not in ALLOWED:
            found[name] = lines
    assert not found, (f"attributes read by string key outside slide2expr.contracts "
                       f"(use the contract's typed record): {found}")


def test_the_scan_finds_string_key_reads(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text("a = fs.attrs['slide_mpp']\nb = attrs.get('x', 0)\n"
                     "c = t.attrs.extra['spaceranger_image']\nd = fs.attrs.slide_mpp\n"
                     "e = feature_attrs[sid]\nf = getattr(tmap.attrs, 'head')\n")
    assert string_key_reads(probe) == [1, 2, 3, 6]


def test_every_allowed_module_still_needs_it():
    for name in ALLOWED:
        assert string_key_reads(SRC / name), f"{name} no longer needs its place in ALLOWED"


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _tiles() -> TileSet:
    attrs = TileAttrs(sample_id="S1", slide="/data/S1.svs", slide_mpp=0.5, mpp_source="metadata",
                      tile_px=224, level0_width=4000, level0_height=3000, min_tissue=0.5)
    attrs.update({"scanner": "made-up"})  # an attribute without a field goes to extra
    attrs.mode = "grid"
    attrs.target_mpp = 0.5
    attrs.tile_px_level0 = 224.0
    return TileSet(coords=np.array([[0, 0], [224, 0]]), attrs=attrs)


def test_a_record_keeps_the_order_its_attributes_were_set_in():
    attrs = _tiles().attrs
    assert list(attrs.to_attrs()) == ["sample_id", "slide", "slide_mpp", "mpp_source", "tile_px",
                                      "level0_width", "level0_height", "min_tissue", "scanner",
                                      "mode", "target_mpp", "tile_px_level0"]
    attrs.slide_mpp = None  # None is no attribute
    assert "slide_mpp" not in attrs.to_attrs()
    attrs.slide_mpp = 0.25  # set again: last, as a dict key added again
    assert list(attrs.to_attrs())[-1] == "slide_mpp"


def test_tiles_read_and_written_back_are_the_same_bytes(tmp_path):
    write_tiles(tmp_path / "a.h5", _tiles())
    back = read_tiles(tmp_path / "a.h5")
    assert back.attrs.slide_mpp == 0.5 and back.attrs.mode == "grid"
    assert back.attrs.extra == {"scanner": "made-up"}
    assert back.attrs.slide2expr_format == "tiles/1"
    write_tiles(tmp_path / "b.h5", back)  # in the order h5py reads (by name), stamp last
    again = read_tiles(tmp_path / "b.h5")
    write_tiles(tmp_path / "c.h5", again)
    assert _sha(tmp_path / "b.h5") == _sha(tmp_path / "c.h5")
    assert again.attrs == back.attrs


def test_features_carry_the_tiling_and_encoder_attributes(tmp_path):
    tiles = _tiles()
    before = tiles.attrs.to_attrs()
    with FeatureWriter(tmp_path / "f.h5", tiles, embed_dim=3,
                       attrs=FeatureAttrs(encoder="toy", weights="random-init")) as w:
        w.write(0, np.ones((2, 3), np.float32))
        w.finish()
    fs = read_features(tmp_path / "f.h5")
    assert isinstance(fs.attrs, FeatureAttrs)
    assert (fs.attrs.encoder, fs.attrs.embed_dim, fs.attrs.n_tiles) == ("toy", 3, 2)
    assert fs.attrs.slide_mpp == 0.5 and fs.attrs.extra == {"scanner": "made-up"}
    assert fs.attrs.slide2expr_format == "features/1" and fs.attrs.view_names == ()
    assert tiles.attrs.to_attrs() == before  # the writer copies the tiles' record


def test_a_tile_map_keeps_its_provenance_typed(tmp_path):
    attrs = TileMapAttrs(sample_id="S1", slide_mpp=0.5, head="mlp", model_use="all folds",
                         n_models=3)
    attrs.update({"ctx300": {"context_um": 300.0}})
    tmap = TileMap(values=np.zeros((2, 1), np.float32), genes=["G"],
                   coords=np.array([[0, 0], [224, 0]]), tile_size0=224.0, attrs=attrs)
    write_tile_map(tmp_path / "S1.h5ad", tmap)
    back = read_tile_map(tmp_path / "S1.h5ad")
    assert (back.attrs.head, back.attrs.model_use, back.attrs.n_models) == ("mlp", "all folds", 3)
    assert back.attrs.tile_size0 == 224.0 and back.attrs.slide2expr_format is None
    assert "ctx300" in back.attrs.extra


def test_a_file_of_another_contract_is_refused(tmp_path):
    write_tiles(tmp_path / "t.h5", _tiles())
    with h5py.File(tmp_path / "t.h5", "a") as f:
        f.attrs["slide2expr_format"] = "tiles/9"
    with pytest.raises(InputError, match="format version 9"):
        read_tiles(tmp_path / "t.h5")
