"""Regions of a slide as samples (sample sheet ``roi``): tiling, features, and bad regions.

The synthetic slide has three bands of known content: pink tissue on the left, purple tissue
on the right, and a strip of green "tissue" between them that no region covers. Region A
(a box in level-0 pixels) lies in the pink band, region B (a WKT polygon in micrometres) in
the purple one. Each region must come back as its own sample whose tiles, and so features,
come from inside the region only.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile

from slide2expr.contracts.tiles import read_tiles

MPP = 0.5  # level-0 um/px; grid tiles of 224 px at 0.5 um/px are 224 level-0 px
PINK, GREEN, PURPLE = (225, 140, 180), (120, 200, 110), (120, 60, 160)
BOX_A = (200, 200, 1150, 1150)  # level-0 px: 4 x 4 tiles of the 224-px grid fit
# region B: a box given in micrometres (x 1780-2920 px, y 200-1150 px: 5 x 4 tiles)
POLYGON_B_UM = "POLYGON ((890 100, 1460 100, 1460 575, 890 575, 890 100))"
BOX_B = (1780, 200, 2920, 1150)


def run_cli(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "slide2expr", *map(str, args)],
                          capture_output=True, text=True, timeout=300)


def _textured(colour: tuple[int, int, int], shape: tuple[int, int],
              rng: np.random.Generator) -> np.ndarray:
    noise = rng.normal(0, 12, (*shape, 3))
    return np.clip(np.asarray(colour, float) + noise, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def banded_slide(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """3000 x 2400 px at 0.5 um/px, tissue in the top 1300 rows (glass below): pink for
    x < 1300, green 1300-1600, purple from 1600."""
    rng = np.random.default_rng(0)
    h, w = 1300, 3000
    image = np.full((2400, w, 3), 245, np.uint8)
    image[:h, :1300] = _textured(PINK, (h, 1300), rng)
    image[:h, 1300:1600] = _textured(GREEN, (h, 300), rng)
    image[:h, 1600:] = _textured(PURPLE, (h, w - 1600), rng)
    path = tmp_path_factory.mktemp("regions") / "banded.tif"
    tifffile.imwrite(path, image, tile=(256, 256), photometric="rgb",
                     resolution=(1e4 / MPP, 1e4 / MPP), resolutionunit="CENTIMETER")
    return path


def _tile(slide: Path, out: Path, sample: str, *extra: str) -> subprocess.CompletedProcess[str]:
    return run_cli("-q", "tile", slide, "--sample-id", sample, "-o", out, "--qc",
                   out.with_suffix(".png"), "--mpp", MPP, "--min-tissue", 0.5, *extra)


@pytest.fixture(scope="module")
def region_tiles(banded_slide: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("region_tiles")
    runs = {"A": ("--roi", ",".join(map(str, BOX_A))),
            "B": ("--roi", POLYGON_B_UM, "--roi-units", "um"),
            "whole": ()}
    paths = {}
    for sample, extra in runs.items():
        proc = _tile(banded_slide, out / f"{sample}.h5", sample, *extra)
        assert proc.returncode == 0, proc.stderr
        paths[sample] = out / f"{sample}.h5"
    return paths


def _inside(coords: np.ndarray, size: float, box: tuple[float, float, float, float]) -> bool:
    x0, y0, x1, y1 = box
    return bool(np.all((coords[:, 0] >= x0) & (coords[:, 1] >= y0)
                       & (coords[:, 0] + size <= x1) & (coords[:, 1] + size <= y1)))


def test_two_regions_are_two_samples_tiled_inside_their_regions(region_tiles):
    a, b, whole = (read_tiles(region_tiles[s]) for s in ("A", "B", "whole"))
    size = a.tile_px_level0
    assert size == pytest.approx(224.0)
    assert _inside(a.coords, size, BOX_A) and _inside(b.coords, size, BOX_B)
    assert len(a) == 16 and len(b) == 20  # 4 x 4 and 5 x 4 tiles of the whole-slide grid fit
    grid = {tuple(c) for c in whole.coords}
    assert {tuple(c) for c in a.coords} <= grid and {tuple(c) for c in b.coords} <= grid
    assert a.attrs.sample_id == "A" and a.attrs.roi_units == "px"
    assert b.attrs.roi_units == "um"
    assert np.allclose(np.ravel(b.attrs.roi_bounds), BOX_B)
    assert whole.attrs.roi is None


def test_region_features_come_from_inside_each_region(region_tiles, tmp_path):
    """Embedded, each region's tiles match its own band's colour and never the green strip
    between the regions; a tile gives the same features as a region's or the slide's."""
    from slide2expr.contracts.features import read_features
    from slide2expr.contracts.tiles import TileSet, write_tiles
    from slide2expr.extract.run import extract_features

    whole, a = read_tiles(region_tiles["whole"]), read_tiles(region_tiles["A"])
    x0, size = whole.coords[:, 0], whole.tile_px_level0
    bands = {"pink": x0 + size <= 1300, "green": (x0 > 1300 - size) & (x0 < 1600),
             "purple": x0 >= 1600}
    picks = {name: np.flatnonzero(rows)[:4] for name, rows in bands.items()}
    reference = np.concatenate([whole.coords[i] for i in picks.values()] + [a.coords[:2]])
    write_tiles(tmp_path / "reference_tiles.h5", TileSet(coords=reference, attrs=whole.attrs))
    region_tiles = {**region_tiles, "reference": tmp_path / "reference_tiles.h5"}
    feats = {}
    for sample in ("A", "B", "reference"):
        out = tmp_path / f"{sample}.h5"
        extract_features(region_tiles[sample], out, encoder="efficientnet_lite0",
                         batch_size=32, num_workers=0, device="cpu", progress=False)
        feats[sample] = read_features(out).features
    ref = feats["reference"]
    centroids = {name: ref[4 * k:4 * k + 4].mean(axis=0) for k, name in enumerate(picks)}

    def nearest(rows: np.ndarray) -> set[str]:
        names = list(centroids)
        dist = np.stack([np.linalg.norm(rows - centroids[n], axis=1) for n in names], axis=1)
        return {names[i] for i in dist.argmin(axis=1)}

    assert nearest(feats["A"]) == {"pink"}
    assert nearest(feats["B"]) == {"purple"}
    assert np.allclose(feats["A"][:2], ref[-2:], atol=1e-4)


@pytest.mark.parametrize("case", ["outside", "off_tissue", "malformed", "units"])
def test_bad_region_is_one_line_and_writes_nothing(case, banded_slide, tmp_path):
    white = tmp_path / "white_corner.tif"
    slide = banded_slide
    if case == "off_tissue":
        image = np.full((2400, 3000, 3), 245, np.uint8)
        image[:1300, 1600:] = PURPLE
        tifffile.imwrite(white, image, tile=(256, 256), photometric="rgb")
        slide = white
    roi = {"outside": ("--roi", "2500,100,3400,900"), "off_tissue": ("--roi", "200,200,1150,1150"),
           "malformed": ("--roi", "100,100,oops"), "units": ("--roi", "1,1,900,900",
                                                             "--roi-units", "mm")}[case]
    out = tmp_path / "out.h5"
    proc = _tile(slide, out, "R", *roi)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Fix:" in lines[0], proc.stderr
    expected = {"outside": "reaches past the slide", "off_tissue": "has no tissue tile",
                "malformed": "is not a box", "units": "roi_units 'mm'"}[case]
    assert expected in lines[0]
    assert not out.exists() and not out.with_suffix(".png").exists()
    assert not list(tmp_path.glob(".*partial*"))


def _sheet(path: Path, slide: Path, rows: list[tuple[str, str, str]]) -> Path:
    lines = ["sample_id\tslide\troi\troi_units"] + [f"{s}\t{slide}\t{roi}\t{u}" for s, roi, u in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize("case", ["overlap", "whole_and_region", "geojson_name"])
def test_bad_region_sheet_is_refused_in_one_line(case, banded_slide, tmp_path):
    geojson = tmp_path / "cores.geojson"
    geojson.write_text('{"type": "FeatureCollection", "features": [{"type": "Feature", '
                       '"properties": {"name": "core1"}, "geometry": {"type": "Polygon", '
                       '"coordinates": [[[0, 0], [500, 0], [500, 500], [0, 0]]]}}]}')
    rows = {"overlap": [("A", "100,100,1100,1100", "px"), ("B", "1000,100,2000,1100", "px")],
            "whole_and_region": [("A", "100,100,1100,1100", ""), ("W", "", "")],
            "geojson_name": [("A", f"{geojson}:core2", "")]}[case]
    sheet = _sheet(tmp_path / "sheet.tsv", banded_slide, rows)
    out = tmp_path / "dataset.h5ad"
    proc = run_cli("join", sheet, "--features-dir", tmp_path, "-o", out, "--mode", "bulk",
                   "--expression", tmp_path / "none.tsv", "--encoder", "efficientnet_lite0")
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Fix:" in lines[0], proc.stderr
    assert sheet.name in lines[0] or "cores.geojson" in lines[0]
    expected = {"overlap": "regions A and B of banded.tif overlap",
                "whole_and_region": "sample W is the whole of banded.tif",
                "geojson_name": "has no feature named 'core2' (names: core1)"}[case]
    assert expected in lines[0], lines[0]
    assert not out.exists()


def test_geojson_region_and_wkt_parse_to_the_same_polygon(tmp_path):
    from slide2expr.inputs.regions import parse_region

    geojson = tmp_path / "cores.geojson"
    geojson.write_text('{"type": "FeatureCollection", "features": [{"type": "Feature", '
                       '"properties": {"classification": {"name": "core1"}}, "geometry": '
                       '{"type": "Polygon", "coordinates": [[[10, 20], [510, 20], [510, 420], '
                       '[10, 420], [10, 20]]]}}]}')
    from_file = parse_region(f"{geojson}:core1").geometry
    from_box = parse_region("10,20,510,420").geometry
    assert from_file.equals(from_box) and from_box.area == 500 * 400
    in_um = parse_region("5,10,255,210", units="um").in_level0(0.5)
    assert in_um.equals(from_box)


def test_heatmap_overlays_of_a_region_crop_to_it():
    """A region sample's overlays show its region (with a 4% margin), not the whole slide."""
    from slide2expr.draw import region_box

    rows, cols = region_box([1000, 400, 2000, 900], downsample=10.0, shape=(300, 400))
    assert (rows.start, rows.stop) == (36, 94)   # y 40-90 thumbnail px, margin 4
    assert (cols.start, cols.stop) == (96, 204)  # x 100-200
    rows, cols = region_box([0, 0, 4000, 3000], downsample=10.0, shape=(300, 400))
    assert (rows.start, rows.stop, cols.start, cols.stop) == (0, 300, 0, 400)  # kept inside


def test_one_call_tiles_several_regions_as_separate_calls_do(banded_slide, region_tiles,
                                                             tmp_path):
    """`slide2expr tile` with --sample-id/--roi/-o/--qc repeated (one slide open, one tissue
    mask) writes for each region the same files as a call of its own."""
    proc = run_cli("-q", "tile", banded_slide, "--mpp", MPP, "--min-tissue", 0.5,
                   "--sample-id", "A", "--roi", ",".join(map(str, BOX_A)), "--roi-units", "px",
                   "-o", tmp_path / "A.h5", "--qc", tmp_path / "A.png",
                   "--sample-id", "B", "--roi", POLYGON_B_UM, "--roi-units", "um",
                   "-o", tmp_path / "B.h5", "--qc", tmp_path / "B.png")
    assert proc.returncode == 0, proc.stderr
    for sample in ("A", "B"):
        alone = region_tiles[sample]
        assert (tmp_path / f"{sample}.h5").read_bytes() == alone.read_bytes()
        assert (tmp_path / f"{sample}.png").read_bytes() == alone.with_suffix(".png").read_bytes()


@pytest.mark.parametrize("case", ["bad_region", "counts"])
def test_several_regions_with_one_bad_write_nothing(case, banded_slide, tmp_path):
    """One bad region among several (or options that do not pair up) stops the call in one
    line and no region's file is written."""
    second = {"bad_region": ("--roi", "2500,100,3400,900"), "counts": ()}[case]
    proc = run_cli("-q", "tile", banded_slide, "--mpp", MPP,
                   "--sample-id", "A", "--roi", ",".join(map(str, BOX_A)),
                   "-o", tmp_path / "A.h5", "--qc", tmp_path / "A.png",
                   "--sample-id", "B", *second, "-o", tmp_path / "B.h5", "--qc", tmp_path / "B.png")
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Fix:" in lines[0], proc.stderr
    expected = {"bad_region": "reaches past the slide", "counts": "2 --sample-id but 1 --roi"}
    assert expected[case] in lines[0]
    assert not list(tmp_path.iterdir())


def _region_workflow(banded_slide: Path, workdir: Path) -> Path:
    """A bulk config over regions A and B of the banded slide and region C of a second slide
    (a link to the same image under another name)."""
    other = workdir / "other.tif"
    other.symlink_to(banded_slide)
    box = ",".join(map(str, BOX_A))
    (workdir / "samples.tsv").write_text(
        "sample_id\tslide\tmpp\troi\troi_units\n"
        f"A\t{banded_slide}\t{MPP}\t{box}\tpx\nB\t{banded_slide}\t{MPP}\t{POLYGON_B_UM}\tum\n"
        f"C\t{other}\t{MPP}\t{box}\tpx\n")
    (workdir / "expression.tsv").write_text("sample_id\tG1\nA\t1\nB\t2\nC\t3\n")
    config = workdir / "config.yaml"
    config.write_text("samples: samples.tsv\nmode: bulk\ndemo_data: false\n"
                      "join: {expression: expression.tsv}\nheatmap: {enabled: false}\n"
                      "train: {heads: [he2rna], baselines: [mean]}\n")
    return config


def _snakemake(workdir: Path, config: Path, *args: str,
               succeed: bool = True) -> tuple[dict[str, int], str]:
    repo = Path(__file__).resolve().parents[1]
    proc = subprocess.run(["snakemake", "-s", str(repo / "Snakefile"), "-d", str(workdir),
                           "--cores", "2", *args, "--configfile", str(config)],
                          capture_output=True, text=True, timeout=600)
    assert (proc.returncode == 0) is succeed, proc.stderr[-3000:]
    out = proc.stdout + proc.stderr
    counts = {line.split()[0]: int(line.split()[1]) for line in out.splitlines()
              if len(line.split()) == 2 and line.split()[1].isdigit()}
    return counts, out


def test_workflow_plans_one_tile_and_one_extract_job_per_slide(banded_slide, tmp_path):
    """Three regions on two slides: two tile jobs and two extract jobs (one per slide), no
    job of the per-sample tile and extract rules; each region's files are linked into place
    by a local job."""
    config = _region_workflow(banded_slide, tmp_path)
    counts, out = _snakemake(tmp_path, config, "-n", "-p")
    assert counts["tile_regions"] == 2 and counts["extract_regions"] == 2, out[-2000:]
    assert counts["region_tiles"] == 3 and counts["region_features"] == 3
    assert "tile" not in counts and "extract" not in counts
    assert out.count("slide2expr tile ") == 2 and out.count("slide2expr extract ") == 2
    assert "--sample-id A --roi 200,200,1150,1150 --roi-units px" in out


def test_workflow_regions_per_slide_match_regions_alone(banded_slide, region_tiles, tmp_path):
    """Run to the features: each region's tiles and QC image are the bytes of its own tile
    call, its features those of its tiles embedded alone; a second run has nothing to do."""
    from slide2expr.contracts.features import read_features
    from slide2expr.extract.run import extract_features

    config = _region_workflow(banded_slide, tmp_path)
    results = tmp_path / "results"
    targets = [f"results/features/efficientnet_lite0/grid/{s}.h5" for s in "ABC"]
    targets += [f"results/qc/{s}.png" for s in "ABC"]
    _snakemake(tmp_path, config, *targets)
    for sample in ("A", "B"):
        tiles = results / "tiles" / "grid" / f"{sample}.h5"
        assert tiles.read_bytes() == region_tiles[sample].read_bytes()
        assert ((results / "qc" / f"{sample}.png").read_bytes()
                == region_tiles[sample].with_suffix(".png").read_bytes())
        alone = tmp_path / f"{sample}_alone.h5"
        extract_features(region_tiles[sample], alone, encoder="efficientnet_lite0",
                         batch_size=64, num_workers=0, device="cpu", threads=1, progress=False)
        ours = read_features(results / "features" / "efficientnet_lite0" / "grid" / f"{sample}.h5")
        assert ours.attrs.sample_id == sample
        assert np.array_equal(ours.features, read_features(alone).features)
    c_tiles = read_tiles(results / "tiles" / "grid" / "C.h5")
    assert np.array_equal(c_tiles.coords, read_tiles(region_tiles["A"]).coords)
    _, out = _snakemake(tmp_path, config, "-n", *targets)
    assert "Nothing to be done" in out, out[-2000:]
    _staged_file_missing_is_one_line(tmp_path, config, results, targets)


def _staged_file_missing_is_one_line(workdir: Path, config: Path, results: Path,
                                     targets: list[str]) -> None:
    """Someone deleted a region's staged features and its link but kept the slide's flag: the
    link job stops with one line naming the missing file and the flag to delete; the other
    regions' files stay."""
    encoder_dir = results / "features" / "efficientnet_lite0"
    (staged,) = (encoder_dir / "regions").glob("*/grid/A.h5")
    staged.unlink()
    (encoder_dir / "grid" / "A.h5").unlink()
    _, out = _snakemake(workdir, config, *targets, succeed=False)
    lines = [line for line in out.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, out[-2000:]
    assert str(staged.relative_to(workdir)) in lines[0], lines[0]
    assert ".done" in lines[0] and "fix: delete" in lines[0]
    assert (encoder_dir / "grid" / "B.h5").exists() and (encoder_dir / "grid" / "C.h5").exists()
