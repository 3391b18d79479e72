"""Heatmap stage: tile maps, overlays at tile positions, QuPath GeoJSON, cohort scales,
measured vs predicted at spots, large slides, the CLI, and the demo's planted signal."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from slide2expr.atomic import FOLDER_MARKER
from slide2expr.draw import (
    OverlayStyle,
    blend_overlay,
    cohort_scale,
    colormap,
    mask_polygons,
    rasterize_tiles,
    select_genes,
    tile_pixel_boxes,
)
from slide2expr.errors import InputError
from slide2expr.heatmap import (
    HeatmapOptions,
    TileMap,
    make_heatmaps,
    read_image_box,
    read_tile_map,
    write_tile_map,
)
from slide2expr.inputs.slides import Slide
from slide2expr.testing import make_features

REPO = Path(__file__).resolve().parents[1]
QUPATH_OBJECT_TYPES = {"annotation", "detection", "tile", "cell", "tma_core", "root"}


def validate_geojson(obj: dict, *, width: float | None = None,
                     height: float | None = None) -> list[str]:
    """Problems of a QuPath FeatureCollection, geometry checked by shapely.

    Each geometry must be a valid shapely Polygon/MultiPolygon (no self-intersection, holes
    inside), rings closed as written, exteriors counter-clockwise and holes clockwise (RFC
    7946 right-hand rule, x right and y up as in the shoelace sum), inside the slide's
    level-0 box; objectType one QuPath knows; measurements finite numbers.
    """
    import math

    import shapely
    from shapely.geometry import box, shape

    if not isinstance(obj, dict) or obj.get("type") != "FeatureCollection":
        return ["top level is not a FeatureCollection"]
    slide = None if width is None or height is None else box(0, 0, width, height)
    problems = []
    for i, feat in enumerate(obj["features"]):
        where = f"features[{i}]"
        geom = feat["geometry"]
        if geom["type"] not in ("Polygon", "MultiPolygon"):
            problems.append(f"{where}: geometry {geom['type']}")
            continue
        polygons = [geom["coordinates"]] if geom["type"] == "Polygon" else geom["coordinates"]
        for rings in polygons:
            for r, ring in enumerate(rings):
                if len(ring) < 4:
                    problems.append(f"{where}: a ring has fewer than 4 positions")
                elif ring[0] != ring[-1]:
                    problems.append(f"{where}: ring not closed")
                elif shapely.LinearRing(ring).is_ccw != (r == 0):
                    problems.append(f"{where}: ring {r} winds the wrong way")
        if any(len(ring) < 4 for rings in polygons for ring in rings):
            continue
        g = shape(geom)
        if not g.is_valid:
            problems.append(f"{where}: invalid geometry ({shapely.is_valid_reason(g)})")
        if g.area <= 0:
            problems.append(f"{where}: zero area")
        if slide is not None and not slide.buffer(1e-6).contains(g):
            problems.append(f"{where}: beyond the slide {width} x {height}")
        props = feat.get("properties") or {}
        if props.get("objectType") not in QUPATH_OBJECT_TYPES:
            problems.append(f"{where}: objectType {props.get('objectType')!r}")
        for k, v in (props.get("measurements") or {}).items():
            if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
                problems.append(f"{where}: measurement {k!r} is not a finite number")
    return problems


# -- helpers ------------------------------------------------------------------------------
class FakeSlide(Slide):
    """An in-memory pyramid: pale background, pink 'tissue' inside ``tissue_box`` (level-0
    x0, y0, x1, y1). Records every read and refuses to render level 0 beyond 4k x 4k px."""

    backend = "fake"

    def __init__(self, size0: tuple[int, int], *, mpp: float = 0.5,
                 downsamples: tuple[int, ...] = (1, 4, 16, 64),
                 tissue_box: tuple[int, int, int, int] | None = None) -> None:
        super().__init__(Path("fake.svs"), mpp)
        w0, h0 = size0
        self._dims = [(max(1, w0 // d), max(1, h0 // d)) for d in downsamples]
        self.tissue_box = tissue_box or (0, 0, w0, h0)
        self.reads: list[tuple[int, int, int]] = []

    @property
    def level_dimensions(self) -> list[tuple[int, int]]:
        return self._dims

    def _read_level(self, level: int, x: int, y: int, width: int, height: int) -> np.ndarray:
        self.reads.append((level, width, height))
        if level == 0 and width * height > 4096 ** 2:
            raise AssertionError(f"level 0 rendered at {width} x {height}")
        ds = self.level_downsamples[level]
        img = np.full((height, width, 3), 243, dtype=np.uint8)
        x0, y0, x1, y1 = (v / ds for v in self.tissue_box)
        cols = np.arange(x, x + width) + 0.5
        rows = np.arange(y, y + height) + 0.5
        inside = ((rows >= y0) & (rows < y1))[:, None] & ((cols >= x0) & (cols < x1))[None, :]
        img[inside] = (205, 120, 170)
        return img


def grid_coords(x0: int, y0: int, nx: int, ny: int, size: float) -> np.ndarray:
    gx, gy = np.meshgrid(np.arange(nx), np.arange(ny))
    return np.stack([x0 + np.floor(gx.ravel() * size), y0 + np.floor(gy.ravel() * size)],
                    axis=1).astype(np.int64)


def tile_map(coords: np.ndarray, values: np.ndarray, genes: list[str], *, size: float,
             sample: str = "s1", level0: tuple[int, int] = (6000, 4000), **attrs) -> TileMap:
    return TileMap(values=np.asarray(values, dtype=np.float32), genes=genes, coords=coords,
                   tile_size0=float(size),
                   attrs={"sample_id": sample, "level0_width": level0[0],
                          "level0_height": level0[1], "slide_mpp": 0.5, "head": "toy", **attrs})


def planted_checkerboard(coords: np.ndarray, size: float) -> np.ndarray:
    """1 on tiles of a 2 x 2-tile checkerboard, 0 elsewhere, plus a high bar on row 0."""
    col = np.round((coords[:, 0] - coords[:, 0].min()) / size).astype(int)
    row = np.round((coords[:, 1] - coords[:, 1].min()) / size).astype(int)
    high = ((col // 2 + row // 2) % 2 == 0) | ((row == 0) & (col >= 3))
    return high.astype(np.float32)


# -- rasterising --------------------------------------------------------------------------
@pytest.mark.parametrize(("size", "downsample"), [(224.0, 10.0), (162.3, 7.3), (448.0, 48.8)])
def test_adjacent_tiles_cover_each_pixel_once_and_leave_no_gap(size, downsample):
    coords = grid_coords(300, 170, 9, 7, size)
    shape = (int(np.ceil((170 + 8 * size) / downsample)), int(np.ceil((300 + 10 * size) / downsample)))
    boxes = tile_pixel_boxes(coords, size, downsample, shape)
    count = np.zeros(shape, dtype=int)
    for c0, r0, c1, r1 in boxes:
        count[r0:r1, c0:c1] += 1
    centres_x = (np.arange(shape[1]) + 0.5) * downsample
    centres_y = (np.arange(shape[0]) + 0.5) * downsample
    x_end = coords[:, 0].max() + size
    y_end = coords[:, 1].max() + size
    inside = (((centres_y >= 170) & (centres_y < y_end))[:, None]
              & ((centres_x >= 300) & (centres_x < x_end))[None, :])
    assert (count[inside] >= 1).all()  # no gap inside the tiled area
    assert (count[~inside] == 0).all()  # nothing outside it
    if size == int(size):
        assert count.max() == 1  # integer lattice: each pixel in exactly one tile
    else:
        # floor()ed corners of a fractional lattice overlap by < 1 level-0 px: rare doubles
        assert (count[inside] > 1).mean() < 0.05
    values = np.arange(len(coords), dtype=float)
    image = rasterize_tiles(coords, size, values, downsample=downsample, shape=shape)
    single = np.zeros(shape, dtype=bool)
    for i, (c0, r0, c1, r1) in enumerate(boxes):
        own = count[r0:r1, c0:c1] == 1
        assert np.all(image[r0:r1, c0:c1][own] == values[i])
        single[r0:r1, c0:c1] |= own
    assert np.isnan(image[~inside]).all()


def test_overlapping_tiles_average_and_tiny_tiles_get_a_pixel():
    coords = np.array([[0, 0], [50, 0], [1000, 1000]])
    image = rasterize_tiles(coords, 100.0, np.array([1.0, 3.0, 7.0]), downsample=10.0,
                            shape=(120, 120))
    assert image[5, 2] == 1.0 and image[5, 7] == 2.0 and image[5, 12] == 3.0
    tiny = rasterize_tiles(np.array([[1003, 1003]]), 2.0, np.array([5.0]), downsample=10.0,
                           shape=(120, 120))
    assert np.isfinite(tiny).sum() == 1 and tiny[100, 100] == 5.0


# -- overlays -----------------------------------------------------------------------------
@pytest.fixture()
def planted(tmp_path):
    """A slide with a 12 x 8 tile grid carrying a checkerboard in gene PLANT."""
    size = 224.0
    coords = grid_coords(896, 672, 12, 8, size)
    plant = planted_checkerboard(coords, size)
    rng = np.random.default_rng(0)
    values = np.stack([plant, rng.normal(2, 0.1, len(coords))], axis=1)
    tmap = tile_map(coords, values, ["PLANT", "OTHER"], size=size)
    box = (896, 672, int(896 + 12 * size), int(672 + 8 * size))
    slide = FakeSlide((6000, 4000), tissue_box=box)
    style = OverlayStyle(cmap="viridis", alpha=0.7)
    out = tmp_path / "heatmaps"
    result = make_heatmaps(tmap, slide, out, options=HeatmapOptions(
        genes=["PLANT", "OTHER"], thumbnail_px=600, style=style))
    return {"tmap": tmap, "slide": slide, "result": result, "out": out, "style": style,
            "plant": plant, "size": size}


def test_overlay_pixels_land_on_the_tiles(planted):
    """Sample the PNG at every tile's centre: the planted pattern comes back exactly."""
    png = planted["result"].pngs["PLANT"]
    (left, top, w, h), ds = read_image_box(png)
    rgb = np.asarray(Image.open(png).convert("RGB")).astype(float)
    thumb, thumb_ds = planted["slide"].thumbnail(600)
    assert (w, h) == (thumb.shape[1], thumb.shape[0]) and ds == pytest.approx(thumb_ds)
    cmap, alpha = colormap("viridis"), planted["style"].alpha
    tmap, size = planted["tmap"], planted["size"]
    got = []
    for x0, y0 in tmap.coords:
        col = int((x0 + size / 2) / ds)
        row = int((y0 + size / 2) / ds)
        pixel = rgb[top + row, left + col]
        base = thumb[row, col].astype(float)
        low = (1 - alpha) * base + alpha * 255 * np.asarray(cmap(0.0)[:3])
        high = (1 - alpha) * base + alpha * 255 * np.asarray(cmap(1.0)[:3])
        assert min(np.abs(pixel - low).max(), np.abs(pixel - high).max()) <= 2
        got.append(np.abs(pixel - high).sum() < np.abs(pixel - low).sum())
    np.testing.assert_array_equal(np.array(got), planted["plant"].astype(bool))
    # shifting the sampling by one tile destroys the match: the test can fail
    assert (np.roll(np.array(got), 1) != planted["plant"].astype(bool)).any()


def test_low_values_fade_to_transparent_and_high_ones_keep_the_opacity() -> None:
    """With fade_low the lowest values leave the H&E untouched, the top keep alpha."""
    thumb = np.full((4, 4, 3), 200, dtype=np.uint8)
    values = np.array([[0.0, 0.1, 0.5, 1.0]] * 4)
    style = OverlayStyle(cmap="viridis", alpha=0.6, fade_low=0.35)
    out = blend_overlay(thumb, values, vmin=0.0, vmax=1.0, style=style).astype(float)
    cmap = colormap("viridis")
    assert np.abs(out[0, 0] - 200).max() <= 0.5  # the low end: transparent
    low = 0.1 / 0.35 * 0.6  # opacity at 0.1: a third of the way up the ramp
    expect = (1 - low) * 200 + low * 255 * np.asarray(cmap(0.1)[:3])
    assert np.abs(out[0, 1] - expect).max() <= 1
    for col, v in ((2, 0.5), (3, 1.0)):  # above fade_low: plain alpha
        expect = 0.4 * 200 + 0.6 * 255 * np.asarray(cmap(v)[:3])
        assert np.abs(out[0, col] - expect).max() <= 1
    plain = blend_overlay(thumb, values, vmin=0.0, vmax=1.0,
                          style=OverlayStyle(cmap="viridis", alpha=0.6)).astype(float)
    assert np.abs(plain[0, 0] - out[0, 0]).max() > 20  # without fading the low end is painted


def test_crop_to_tissue_keeps_the_tiles_where_the_origin_says(planted, tmp_path):
    """Cropped to the tissue, the PNG is smaller than the thumbnail, and every tile centre,
    mapped through the recorded origin, still shows its planted value."""
    from slide2expr.heatmap.overlay import read_image_origin

    style = planted["style"]
    result = make_heatmaps(planted["tmap"], planted["slide"], tmp_path / "crop",
                           options=HeatmapOptions(genes=["PLANT"], thumbnail_px=600,
                                                  style=style, crop_to_tissue=True))
    png = result.pngs["PLANT"]
    (left, top, w, h), ds = read_image_box(png)
    ox, oy = read_image_origin(png)
    thumb, _ = planted["slide"].thumbnail(600)
    assert w < thumb.shape[1] and h < thumb.shape[0] and (ox, oy) != (0, 0)
    rgb = np.asarray(Image.open(png).convert("RGB")).astype(float)
    cmap, alpha, size = colormap("viridis"), style.alpha, planted["size"]
    got = []
    for x0, y0 in planted["tmap"].coords:
        col, row = int((x0 + size / 2) / ds), int((y0 + size / 2) / ds)
        pixel = rgb[top + row - oy, left + col - ox]
        base = thumb[row, col].astype(float)
        high = (1 - alpha) * base + alpha * 255 * np.asarray(cmap(1.0)[:3])
        low = (1 - alpha) * base + alpha * 255 * np.asarray(cmap(0.0)[:3])
        got.append(np.abs(pixel - high).sum() < np.abs(pixel - low).sum())
    np.testing.assert_array_equal(np.array(got), planted["plant"].astype(bool))


def test_overlay_leaves_background_uncoloured(planted):
    png = planted["result"].pngs["PLANT"]
    (left, top, w, h), ds = read_image_box(png)
    rgb = np.asarray(Image.open(png).convert("RGB")).astype(int)[top:top + h, left:left + w]
    x0, y0 = planted["tmap"].coords.min(axis=0)
    # a band of thumbnail pixels left of the tiles: no tile, no tissue -> faded thumbnail
    band = rgb[int(y0 / ds) + 5:int(y0 / ds) + 40, 5:int(x0 / ds) - 3]
    faded = round(0.6 * 243 + 0.4 * 255)
    assert np.abs(band - faded).max() <= 1
    text = Image.open(png).text
    assert "PLANT" in text["Title"] and "s1" in text["Title"]
    assert float(text["slide2expr:vmin"]) == 0.0 and float(text["slide2expr:vmax"]) == 1.0


def test_limits_are_robust_percentiles(tmp_path):
    size = 224.0
    coords = grid_coords(0, 0, 20, 10, size)
    values = np.linspace(0, 1, len(coords))
    values[0] = 100.0  # an outlier must not stretch the colour scale
    tmap = tile_map(coords, values[:, None], ["G"], size=size)
    result = make_heatmaps(tmap, FakeSlide((6000, 4000)), tmp_path, options=HeatmapOptions(
        genes=["G"], thumbnail_px=300, clip_percentiles=(5, 95)))
    row = result.limits.iloc[0]
    assert row["vmax"] == pytest.approx(np.percentile(values, 95))
    assert row["vmin"] == pytest.approx(np.percentile(values, 5))
    assert row["max"] == pytest.approx(100.0)
    on_disk = pd.read_csv(tmp_path / "s1" / "limits.tsv", sep="\t")
    assert on_disk.loc[0, "vmax"] == pytest.approx(row["vmax"], rel=1e-5)


# -- GeoJSON ------------------------------------------------------------------------------
def test_geojson_is_valid_level0_and_round_trips_the_values(planted):
    path = planted["result"].geojson
    collection = json.loads(path.read_text())
    assert validate_geojson(collection, width=6000, height=4000) == []
    tiles = [f for f in collection["features"] if f["properties"]["objectType"] == "tile"]
    tmap, size = planted["tmap"], planted["size"]
    assert len(tiles) == len(tmap.coords)
    for feature, (x0, y0), vals in zip(tiles, tmap.coords, tmap.values, strict=True):
        ring = np.asarray(feature["geometry"]["coordinates"][0])
        assert ring.shape == (5, 2) and (ring[0] == ring[-1]).all()
        np.testing.assert_allclose(ring.min(axis=0), [x0, y0], atol=0.01)
        np.testing.assert_allclose(ring.max(axis=0) - ring.min(axis=0), [size, size], atol=0.01)
        meas = feature["properties"]["measurements"]
        names = ["toy: PLANT (log1p CP10k)", "toy: OTHER (log1p CP10k)"]
        assert list(meas) == names  # the head and the unit in every name
        # predictions exported clipped at 0
        np.testing.assert_allclose([meas[n] for n in names], np.maximum(vals, 0), atol=1e-4)
    assert "clipped at 0" in collection["slide2expr"]["predictions"]
    tissue = [f for f in collection["features"] if f["properties"]["objectType"] == "annotation"]
    assert len(tissue) == 1 and tissue[0]["geometry"]["type"] == "MultiPolygon"
    assert tissue[0]["properties"]["classification"]["name"] == "Tissue"
    # the tissue outline encloses the tile centres (level-0 px, same frame as the tiles)
    from matplotlib.path import Path as MplPath

    outline = MplPath(np.asarray(tissue[0]["geometry"]["coordinates"][0][0]))
    assert outline.contains_points(tmap.centres).mean() > 0.95
    assert not outline.contains_points([[100, 100], [5900, 3900]]).any()


def test_geojson_validator_catches_broken_geometry():
    good = [[0, 0], [10, 0], [10, 10], [0, 10], [0, 0]]
    bowtie = [[0, 0], [10, 10], [10, 0], [0, 10], [0, 0]]

    def collection(ring, meas=None):
        props = {"objectType": "tile", "measurements": meas or {"A": 1.0}}
        return {"type": "FeatureCollection", "features": [
            {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [ring]},
             "properties": props}]}

    assert validate_geojson(collection(good), width=20, height=20) == []
    assert any("not closed" in p for p in validate_geojson(collection([*good[:-1], [0, 1]])))
    assert any("wrong way" in p for p in validate_geojson(collection(good[::-1])))
    assert any("invalid geometry" in p for p in validate_geojson(collection(bowtie)))
    assert any("beyond" in p for p in validate_geojson(collection(good), width=5, height=20))
    assert any("finite" in p for p in validate_geojson(collection(good, {"A": float("nan")})))
    assert any("4 positions" in p for p in validate_geojson(collection(good[:3])))
    assert validate_geojson({"type": "Feature"}) == ["top level is not a FeatureCollection"]


def test_mask_outline_has_holes_and_follows_the_right_hand_rule():
    mask = np.zeros((40, 50), dtype=bool)
    mask[5:30, 5:40] = True
    mask[10:15, 10:20] = False  # a hole
    mask[33:38, 42:48] = True  # a second piece
    polygons = mask_polygons(mask, 8.0, bounds=(400, 320))
    assert len(polygons) == 2
    big = max(polygons, key=lambda p: len(p))
    assert len(big) == 2  # exterior + one hole
    ext = np.asarray(big[0])
    # contour between pixel centres -> on the pixel edges of the mask, in level-0 px
    assert ext[:, 0].min() == pytest.approx(5 * 8.0) and ext[:, 0].max() == pytest.approx(40 * 8.0)
    feature = {"type": "FeatureCollection", "features": [
        {"type": "Feature", "properties": {"objectType": "annotation"},
         "geometry": {"type": "MultiPolygon", "coordinates": polygons}}]}
    assert validate_geojson(feature, width=400, height=320) == []


# -- tile maps, genes, scales ---------------------------------------------------------------
def test_tile_map_round_trips_with_spatial_centres(tmp_path):
    coords = grid_coords(10, 20, 4, 3, 100.0)
    values = np.arange(24, dtype=np.float32).reshape(12, 2)
    tmap = tile_map(coords, values, ["A", "B"], size=100.0, model_dir="models/mlp")
    write_tile_map(tmp_path / "s1.h5ad", tmap)
    import anndata as ad

    adata = ad.read_h5ad(tmp_path / "s1.h5ad")
    np.testing.assert_allclose(adata.obsm["spatial"], coords + 50.0)
    np.testing.assert_array_equal(adata.obsm["coords"], coords)
    assert list(adata.var_names) == ["A", "B"]
    assert adata.uns["slide2expr"]["heatmap"]["model_dir"] == "models/mlp"
    back = read_tile_map(tmp_path / "s1.h5ad")
    np.testing.assert_array_equal(back.values, values)
    assert back.tile_size0 == 100.0 and back.sample_id == "s1"
    with pytest.raises(InputError, match="tile map not found"):
        read_tile_map(tmp_path / "missing.h5ad")


def test_genes_come_from_the_list_or_the_reports_top_r(tmp_path):
    report = tmp_path / "genes.tsv"
    pd.DataFrame({"gene": ["A", "B", "C", "D", "E"],
                  "pearson_r": [0.2, 0.9, np.nan, 0.5, 0.95]}).to_csv(report, sep="\t", index=False)
    available = ["A", "B", "C", "D"]  # E is not predicted by this model
    assert select_genes(available, report=report, n_genes=2) == ["B", "D"]
    assert select_genes(available, genes=["D", "A", "D"]) == ["D", "A"]
    with pytest.raises(InputError, match="does not predict 1 requested"):
        select_genes(available, genes=["A", "NOPE"])
    values = np.stack([np.zeros(10), np.arange(10), np.ones(10), np.arange(10) * 3], axis=1)
    assert select_genes(available, values=values, n_genes=1) == ["D"]
    # each caller's fallback is explicit: heatmaps the slide's most variable genes, the
    # cohort scale the model's order
    assert select_genes(available, values=values, n_genes=2, fallback="most_variable") == ["D", "B"]
    assert select_genes(available, values=values, n_genes=2, fallback="model_order") == ["A", "B"]
    with pytest.raises(ValueError, match="fallback"):
        select_genes(available, values=values, fallback="random")


def test_shared_scale_gives_every_slide_the_same_limits(tmp_path):
    size = 224.0
    coords = grid_coords(0, 0, 10, 10, size)
    low = tile_map(coords, np.linspace(0, 1, 100)[:, None], ["G"], size=size, sample="low")
    high = tile_map(coords, np.linspace(2, 5, 100)[:, None], ["G"], size=size, sample="high")
    table = cohort_scale([("low", low.genes, low.values), ("high", high.genes, high.values)],
                         ["G"], percentiles=(0, 100))
    assert table.loc[0, "vmin"] == pytest.approx(0) and table.loc[0, "vmax"] == pytest.approx(5)
    scale = {"G": (float(table.loc[0, "vmin"]), float(table.loc[0, "vmax"]))}
    seen = []
    for tmap in (low, high):
        res = make_heatmaps(tmap, FakeSlide((6000, 4000)), tmp_path, scale=scale,
                            options=HeatmapOptions(genes=["G"], thumbnail_px=200))
        text = Image.open(res.pngs["G"]).text
        seen.append((float(text["slide2expr:vmin"]), float(text["slide2expr:vmax"])))
    assert seen[0] == seen[1] == pytest.approx((0.0, 5.0))
    # without the shared scale each slide gets its own
    own = make_heatmaps(high, FakeSlide((6000, 4000)), tmp_path / "own",
                        options=HeatmapOptions(genes=["G"], thumbnail_px=200))
    assert own.limits.loc[0, "vmin"] > 1.9


# -- spot mode: measured vs predicted -----------------------------------------------------------
def test_spot_comparison_is_drawn_for_a_training_slide(tmp_path):
    import anndata as ad

    rng = np.random.default_rng(1)
    n = 60
    centres = np.stack([rng.uniform(1000, 5000, n), rng.uniform(800, 3200, n)], axis=1)
    measured = rng.normal(2, 1, (n, 2)).astype(np.float32)
    predicted = (measured + rng.normal(0, 0.5, (n, 2))).astype(np.float32)
    obs = pd.DataFrame({"sample_id": ["s1"] * 40 + ["other"] * 20},
                       index=[f"u{i}" for i in range(n)])
    adata = ad.AnnData(X=measured, obs=obs, var=pd.DataFrame(index=["PLANT", "OTHER"]))
    adata.layers["predicted"] = predicted
    adata.obsm["spatial"] = centres
    adata.write_h5ad(tmp_path / "predictions.h5ad")
    coords = grid_coords(896, 672, 6, 4, 224.0)
    tmap = tile_map(coords, rng.normal(size=(24, 2)), ["PLANT", "OTHER"], size=224.0)
    res = make_heatmaps(tmap, FakeSlide((6000, 4000)), tmp_path / "out",
                        predictions=tmp_path / "predictions.h5ad",
                        options=HeatmapOptions(genes=["PLANT"], thumbnail_px=300))
    assert res.comparison is not None and res.comparison.stat().st_size > 5000
    expected = np.corrcoef(measured[:40, 0], predicted[:40, 0])[0, 1]
    assert res.comparison_r["PLANT"] == pytest.approx(expected, abs=1e-5)
    # a new slide (not in the predictions) gets no comparison
    new = tile_map(coords, rng.normal(size=(24, 2)), ["PLANT", "OTHER"], size=224.0, sample="new")
    res_new = make_heatmaps(new, FakeSlide((6000, 4000)), tmp_path / "out",
                            predictions=tmp_path / "predictions.h5ad",
                            options=HeatmapOptions(genes=["PLANT"], thumbnail_px=300))
    assert res_new.comparison is None
    assert not (tmp_path / "out" / "new" / "measured_vs_predicted.png").exists()


def test_spot_mode_geojson_has_spot_detections_with_measured_and_predicted(tmp_path):
    """Spots become QuPath detections: circles of the spot diameter, measured and predicted
    values named with the head and unit; predictions (tiles and spots) clipped at 0."""
    import anndata as ad
    import shapely
    from shapely.geometry import Point, shape

    rng = np.random.default_rng(2)
    n = 30
    centres = np.stack([rng.uniform(1000, 5000, n), rng.uniform(800, 3200, n)], axis=1)
    measured = rng.uniform(0, 3, (n, 2)).astype(np.float32)
    predicted = rng.normal(0.5, 1.0, (n, 2)).astype(np.float32)  # some below 0
    predicted[3, 1] = np.nan  # a spot whose fold did not model OTHER
    obs = pd.DataFrame({"sample_id": ["s1"] * 20 + ["other"] * 10,
                        "spot_id": [f"{i}x{i}" for i in range(n)]},
                       index=[f"u{i}" for i in range(n)])
    adata = ad.AnnData(X=measured, obs=obs, var=pd.DataFrame(index=["PLANT", "OTHER"]))
    adata.layers["predicted"] = predicted
    adata.obsm["spatial"] = centres
    adata.uns["spatial"] = {"s1": {"scalefactors": {"spot_diameter_fullres": 150.0}}}
    adata.write_h5ad(tmp_path / "predictions.h5ad")
    coords = grid_coords(896, 672, 6, 4, 224.0)
    tiles = rng.normal(size=(24, 2)) - 0.5
    assert (tiles < 0).any()
    tmap = tile_map(coords, tiles, ["PLANT", "OTHER"], size=224.0)
    res = make_heatmaps(tmap, FakeSlide((6000, 4000)), tmp_path / "out",
                        predictions=tmp_path / "predictions.h5ad",
                        options=HeatmapOptions(genes=["PLANT"], thumbnail_px=300,
                                               geojson_all_genes=True))
    collection = json.loads(res.geojson.read_text())
    assert validate_geojson(collection, width=6000, height=4000) == []
    feats = collection["features"]
    tile_values = [f["properties"]["measurements"] for f in feats
                   if f["properties"]["objectType"] == "tile"]
    got = np.array([[m["toy: PLANT (log1p CP10k)"], m["toy: OTHER (log1p CP10k)"]]
                    for m in tile_values])
    np.testing.assert_allclose(got, np.maximum(tiles, 0), atol=1e-4)
    spots = [f for f in feats if f["properties"]["objectType"] == "detection"]
    assert [f["properties"]["name"] for f in spots] == list(obs["spot_id"][:20])
    for i, f in enumerate(spots):
        poly = shape(f["geometry"])
        assert f["properties"]["classification"]["name"] == "Spot"
        assert poly.is_valid and shapely.LinearRing(f["geometry"]["coordinates"][0]).is_ccw
        # a circle of the spot diameter around the spot centre
        assert poly.centroid.distance(Point(centres[i])) < 0.05
        assert poly.bounds[2] - poly.bounds[0] == pytest.approx(150.0, abs=0.05)
        assert poly.area == pytest.approx(np.pi * 75.0 ** 2, rel=0.01)
        m = f["properties"]["measurements"]
        for j, gene in enumerate(["PLANT", "OTHER"]):
            assert m[f"measured: {gene} (log1p CP10k)"] == pytest.approx(measured[i, j], abs=1e-4)
            key = f"toy: {gene} (log1p CP10k)"
            if np.isnan(predicted[i, j]):
                assert key not in m
            else:
                assert m[key] == pytest.approx(max(float(predicted[i, j]), 0.0), abs=1e-4)
    assert min(f["properties"]["measurements"]["toy: PLANT (log1p CP10k)"] for f in spots) == 0.0


# -- a 100k x 100k slide --------------------------------------------------------------------
def test_huge_slide_is_drawn_from_a_thumbnail_never_level0(tmp_path):
    size0 = 100_000
    slide = FakeSlide((size0, size0), mpp=0.25, tissue_box=(20_000, 20_000, 80_000, 80_000))
    coords = grid_coords(20_000, 20_000, 134, 134, 448.0)  # 17,956 tiles of 112 um
    values = np.stack([coords[:, 0] / size0, coords[:, 1] / size0], axis=1)
    tmap = tile_map(coords, values, ["X", "Y"], size=448.0, sample="huge",
                    level0=(size0, size0))
    start = time.perf_counter()
    res = make_heatmaps(tmap, slide, tmp_path, options=HeatmapOptions(
        genes=["X", "Y"], thumbnail_px=1024))
    seconds = time.perf_counter() - start
    assert all(level > 0 for level, _, _ in slide.reads), slide.reads
    assert max(w * h for _, w, h in slide.reads) <= 6250 ** 2
    (_, _, w, h), ds = read_image_box(res.pngs["X"])
    assert max(w, h) == 1024 and ds == pytest.approx(size0 / 1024)
    assert seconds < 120, seconds


def test_training_slides_get_the_fold_that_held_them_out(tmp_path):
    from slide2expr.contracts.models import held_out_fold as _fold_for

    pd.DataFrame({"unit": ["a", "b", "c", "d"], "sample_id": ["s1", "s1", "s2", "s3"],
                  "fold": [1, 1, 0, -1]}).to_csv(tmp_path / "splits.tsv", sep="\t", index=False)
    assert _fold_for(tmp_path, "s1") == (1, "fold 1, which held s1 out")
    assert _fold_for(tmp_path, "s2")[0] == 0
    fold, use = _fold_for(tmp_path, "s3")  # trained on it in every fold: say so
    assert fold is None and "NOT out-of-fold" in use
    fold, use = _fold_for(tmp_path, "new")
    assert fold is None and "new to the model" in use
    assert _fold_for(tmp_path / "nowhere", "s1") == (None, "all folds")


# -- CLI ------------------------------------------------------------------------------------
@pytest.fixture()
def toy_run(tmp_path):
    """A PNG 'slide', a grid features file and a saved one-fold MLP head."""
    import torch

    from slide2expr.train.heads import MLPHead
    from slide2expr.train.save import save_head

    rng = np.random.default_rng(0)
    img = np.full((1200, 1600, 3), 245, dtype=np.uint8)
    img[200:1000, 200:1400] = (200, 110, 160)
    slide = tmp_path / "toy.png"
    Image.fromarray(img).save(slide)
    coords = grid_coords(224, 224, 5, 3, 224.0)
    feats = rng.normal(size=(len(coords), 8)).astype(np.float32)
    features = tmp_path / "toy.h5"
    make_features(features, features=feats, coords=coords, sample_id="toy", slide=str(slide),
                  slide_mpp=0.5, tile_px_level0=224.0, level0_width=1600, level0_height=1200)
    torch.manual_seed(0)
    module = MLPHead(in_dim=8, n_genes=3, hidden=0)
    save_head(module, tmp_path / "models" / "mlp" / "fold0",
              meta={"head": "mlp", "hparams": {"in_dim": 8, "n_genes": 3, "hidden": 0},
                    "genes": ["GA", "GB", "GC"], "fold": 0, "encoder": "toy"})
    report = tmp_path / "genes.tsv"
    pd.DataFrame({"gene": ["GA", "GB", "GC"], "pearson_r": [0.1, 0.8, 0.5]}).to_csv(
        report, sep="\t", index=False)
    return {"slide": slide, "features": features, "models": tmp_path / "models" / "mlp",
            "report": report, "feats": feats, "module": module}


def test_cli_draws_from_features_and_a_model_dir(toy_run, tmp_path):
    from typer.testing import CliRunner

    from slide2expr.cli import app
    from slide2expr.predict import load_trained_head

    out = tmp_path / "heatmaps" / "mlp"
    result = CliRunner().invoke(app, [
        "heatmap", str(toy_run["features"]), "--model-dir", str(toy_run["models"]), "-o", str(out),
        "--report", str(toy_run["report"]), "--n-genes", "2", "--cmap", "magma", "--alpha", "0.5"])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (out / "toy").iterdir()) == [FOLDER_MARKER, "GB.png", "GC.png",
                                                               "limits.tsv"]
    tmap = read_tile_map(out / "toy.h5ad")
    expected = load_trained_head(toy_run["models"]).predict_tiles(toy_run["feats"])
    np.testing.assert_allclose(tmap.values, expected, rtol=1e-5, atol=1e-6)
    assert tmap.genes == ["GA", "GB", "GC"]
    collection = json.loads((out / "toy.geojson").read_text())
    assert validate_geojson(collection, width=1600, height=1200) == []
    first = next(f for f in collection["features"] if f["properties"]["objectType"] == "tile")
    assert set(first["properties"]["measurements"]) == {"mlp: GB (log1p CP10k)",
                                                         "mlp: GC (log1p CP10k)"}
    # redraw from the tile map with a cohort scale made by heatmap-scale
    scale = tmp_path / "scale.tsv"
    result = CliRunner().invoke(app, ["heatmap-scale", str(out / "toy.h5ad"), "-o", str(scale),
                                      "--genes", "GA,GC"])
    assert result.exit_code == 0, result.output
    result = CliRunner().invoke(app, [
        "heatmap", str(out / "toy.h5ad"), "--slide", str(toy_run["slide"]), "-o", str(tmp_path / "re"),
        "--genes", "GA", "--genes", "GC", "--scale", str(scale)])
    assert result.exit_code == 0, result.output
    limits = pd.read_csv(tmp_path / "re" / "toy" / "limits.tsv", sep="\t")
    table = pd.read_csv(scale, sep="\t")
    np.testing.assert_allclose(limits["vmin"], table["vmin"], rtol=1e-5)
    assert not (tmp_path / "re" / "toy.h5ad").exists()  # the map was an input, not rewritten


def test_heatmap_of_a_slide_in_a_several_slide_unit_is_out_of_fold(toy_run, tmp_path):
    """join.patient_slides: average trains a patient's slides as one unit ``s1;s2``; the
    heatmap of each of those slides must use the fold model that held the unit out."""
    import torch
    from typer.testing import CliRunner

    from slide2expr.cli import app
    from slide2expr.predict import load_trained_head
    from slide2expr.train.heads import MLPHead
    from slide2expr.train.save import save_head

    models = toy_run["models"]
    torch.manual_seed(1)
    save_head(MLPHead(in_dim=8, n_genes=3, hidden=0), models / "fold1",
              meta={"head": "mlp", "hparams": {"in_dim": 8, "n_genes": 3, "hidden": 0},
                    "genes": ["GA", "GB", "GC"], "fold": 1, "encoder": "toy"})
    pd.DataFrame({"unit": ["P1", "P2"], "sample_id": ["other;toy", "third"],
                  "group": ["P1", "P2"], "fold": [1, 0]}).to_csv(
        models / "splits.tsv", sep="\t", index=False)
    out = tmp_path / "maps"
    result = CliRunner().invoke(app, [
        "heatmap", str(toy_run["features"]), "--model-dir", str(models), "-o", str(out),
        "--genes", "GA", "--map-only"])
    assert result.exit_code == 0, result.output
    tmap = read_tile_map(out / "toy.h5ad")
    assert "fold 1" in str(tmap.attrs.model_use)
    fold1 = load_trained_head(models, fold=1).predict_tiles(toy_run["feats"])
    np.testing.assert_allclose(tmap.values, fold1, rtol=1e-5, atol=1e-6)
    both = load_trained_head(models).predict_tiles(toy_run["feats"])
    assert not np.allclose(tmap.values, both, atol=1e-4)  # not the average of the folds


def test_cli_bad_input_is_one_line_and_status_2(toy_run, tmp_path):
    from typer.testing import CliRunner

    from slide2expr.cli import app

    base = ["heatmap", str(toy_run["features"]), "--model-dir", str(toy_run["models"]),
            "-o", str(tmp_path / "o")]
    result = CliRunner().invoke(app, [*base, "--genes", "NOPE"])
    assert isinstance(result.exception, InputError) and "NOPE" in str(result.exception)
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())
    # through the real entry point: one line on stderr, status 2
    cmd = [str(Path(sys.executable).parent / "slide2expr"), *base, "--clip-percentiles", "99", "1"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and "Fix:" in lines[0], lines


# -- the demo cohort: the planted gene's map follows the planted tumour ----------------------
def _auc(pos: np.ndarray, neg: np.ndarray) -> float:
    """Mann-Whitney AUC: P(a positive scores above a negative), ties counted half."""
    from scipy.stats import rankdata

    ranks = rankdata(np.concatenate([pos, neg]))
    return float((ranks[:len(pos)].sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


@pytest.mark.slow
def test_demo_tumour_gene_map_is_high_on_tumour_and_low_on_stroma(demo_dir, tmp_path):
    """The whole chain on the demo: tile, efficientnet_lite0 features, join, an MLP head
    trained on the spots of five slides (a ``split`` column holds demo1 out), then the map of
    demo1's grid tiles, scored against the demo's truth (labels at downsample 8: 1 stroma,
    2 tumour; a tile takes the label covering at least 75% of it)."""
    import torch

    from slide2expr.contracts.tiles import write_tiles
    from slide2expr.demo.cohort import LABEL_DOWNSAMPLE, STROMA, TUMOUR
    from slide2expr.draw import open_matching_slide
    from slide2expr.extract.run import extract_features
    from slide2expr.heatmap import load_or_predict
    from slide2expr.inputs.samples import read_sample_sheet
    from slide2expr.inputs.slides import open_slide
    from slide2expr.inputs.spots import read_spot_positions
    from slide2expr.join.run import JoinParams, build_dataset
    from slide2expr.tile.grid import TilingParams, compute_tissue, grid_tiles, spot_tiles
    from slide2expr.train.config import TrainConfig
    from slide2expr.train.run import run_training

    torch.set_num_threads(2)
    target = "demo1"
    sheet = read_sample_sheet(demo_dir / "samples.tsv", mode="spot")
    sheet["split"] = np.where(sheet.index == target, "test", "train")
    params = TilingParams()
    feats = tmp_path / "features" / "efficientnet_lite0"
    for sample, row in sheet.iterrows():
        with open_slide(row["slide"]) as slide:
            tissue = compute_tissue(slide, params.tissue)
            spots = spot_tiles(slide, read_spot_positions(row["spots"], counts_path=row["counts"]),
                               sample, params, source=row["spots"])
            write_tiles(tmp_path / "tiles" / "spots" / f"{sample}.h5", spots)
            if sample == target:
                write_tiles(tmp_path / "tiles" / "grid" / f"{sample}.h5",
                            grid_tiles(slide, tissue, sample, params))
        tilings = ("spots", "grid") if sample == target else ("spots",)
        for tiling in tilings:
            extract_features(tmp_path / "tiles" / tiling / f"{sample}.h5",
                             feats / tiling / f"{sample}.h5", encoder="efficientnet_lite0",
                             batch_size=32, num_workers=0, device="cpu", progress=False)
    adata = build_dataset(sheet, feats / "spots",
                          JoinParams(mode="spot", encoder="efficientnet_lite0"))
    config = TrainConfig.from_dict({"max_epochs": 40, "min_epochs": 10, "hidden": 64,
                                    "patience": 10, "batch_size": 32})
    models = tmp_path / "models" / "mlp"
    predictions = tmp_path / "predictions" / "mlp.h5ad"
    run_training(adata, head="mlp", config=config, models_dir=models,
                 predictions_path=predictions)

    tmap, _ = load_or_predict(feats / "grid" / f"{target}.h5", model_dir=models)
    # fold 0's model alone (its head, or its blend with ridge when the selection ships it)
    assert tmap.attrs.model_use.startswith(f"fold 0, which held {target} out")
    out = tmp_path / "heatmaps" / "mlp"
    with open_matching_slide(sheet.loc[target, "slide"], tmap) as slide:
        result = make_heatmaps(tmap, slide, out, predictions=predictions,
                               options=HeatmapOptions(genes=["TUMOUR1", "STROMA1"]))

    labels = np.asarray(Image.open(demo_dir / "truth" / f"{target}_regions.png"))
    size = tmap.tile_size0 / LABEL_DOWNSAMPLE
    majority = []
    for x0, y0 in tmap.coords / LABEL_DOWNSAMPLE:
        block = labels[int(y0):int(y0 + size), int(x0):int(x0 + size)]
        counts = np.bincount(block.ravel(), minlength=3)
        majority.append(np.argmax(counts) if counts.max() >= 0.75 * block.size else -1)
    majority = np.asarray(majority)
    tumour1 = tmap.column("TUMOUR1")
    on_tumour, on_stroma = tumour1[majority == TUMOUR], tumour1[majority == STROMA]
    assert len(on_tumour) > 20 and len(on_stroma) > 20
    auc = _auc(on_tumour, on_stroma)
    print(f"TUMOUR1 map on {target}: mean {on_tumour.mean():.2f} on {len(on_tumour)} tumour "
          f"tiles vs {on_stroma.mean():.2f} on {len(on_stroma)} stroma tiles, AUC {auc:.3f}")
    assert auc > 0.9
    stroma1 = tmap.column("STROMA1")  # and the stroma gene the other way round
    assert _auc(stroma1[majority == STROMA], stroma1[majority == TUMOUR]) > 0.9
    # the outputs a pathologist opens exist and are consistent
    assert result.comparison is not None and result.comparison_r["TUMOUR1"] > 0.5
    collection = json.loads(result.geojson.read_text())
    w, h = tmap.attrs.level0_width, tmap.attrs.level0_height
    assert validate_geojson(collection, width=w, height=h) == []


def test_predictions_are_read_without_their_he_images_but_keep_the_scale_factors(tmp_path):
    """Readers of predictions (spot overlays, viewer, report) skip the ``uns['spatial']``
    images, the bulk of the file; the scale factors they use are still read."""
    import anndata as ad

    from slide2expr.contracts._anndata import write_anndata
    from slide2expr.contracts.predictions import read_predictions
    from slide2expr.draw.spots import read_spot_values

    rng = np.random.default_rng(3)
    n = 12
    adata = ad.AnnData(X=rng.uniform(0, 3, (n, 2)).astype(np.float32),
                       obs=pd.DataFrame({"sample_id": ["s1"] * n,
                                         "spot_id": [f"{i}x0" for i in range(n)]},
                                        index=[f"u{i}" for i in range(n)]),
                       var=pd.DataFrame(index=["GA", "GB"]))
    adata.layers["predicted"] = rng.normal(size=(n, 2)).astype(np.float32)
    adata.obsm["spatial"] = rng.uniform(0, 1000, (n, 2))
    hires = rng.integers(0, 255, (64, 48, 3), dtype=np.uint8)
    adata.uns["spatial"] = {"s1": {"images": {"hires": hires},
                                   "scalefactors": {"spot_diameter_fullres": 123.0,
                                                    "tissue_hires_scalef": 0.5}}}
    path = write_anndata(adata, tmp_path / "predictions.h5ad")
    full = ad.read_h5ad(path)
    np.testing.assert_array_equal(full.uns["spatial"]["s1"]["images"]["hires"], hires)
    read = read_predictions(path, need=("spatial",))
    assert dict(read.uns["spatial"]["s1"]["images"]) == {}
    assert read.uns["spatial"]["s1"]["scalefactors"]["spot_diameter_fullres"] == 123.0
    np.testing.assert_array_equal(read.layers["predicted"], adata.layers["predicted"])
    values = read_spot_values(path, "s1", ["GB"])
    assert values is not None and values.diameter0 == 123.0
    np.testing.assert_array_equal(values.predicted[:, 0], adata.layers["predicted"][:, 1])
