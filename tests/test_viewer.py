"""The slide viewer (``slide2expr view``): layers, pyramid, bad input, CLI, server.

A synthetic cohort is made here, with answers known by construction: one 2048 x 1536 px
slide at 0.5 um/px (a pink ellipse of tissue on white), a tile map on the 224 px grid whose
genes are functions of position (``GRADX`` rises left to right, ``GRADY`` top to bottom),
spot-mode predictions with measured values at spots on a 400 px pitch (measured ``GRADX``
falls left to right, the opposite of the prediction), and a report. The last tests open the
page in Debian's headless Chromium through Selenium and chromium-driver (offline).
"""

from __future__ import annotations

import base64
import io
import json
import os
import re
import stat
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from slide2expr.errors import InputError

MPP = 0.5
W, H = 2048, 1536
STEP = 224
GENES = ["GRADX", "GRADY", "FLAT", "HLA-DRA", "MT-CO1"]
R = {"GRADX": 0.61, "GRADY": 0.42, "FLAT": float("nan"), "HLA-DRA": 0.13, "MT-CO1": -0.05}


def _tissue(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return ((x - W / 2) / 850) ** 2 + ((y - H / 2) / 600) ** 2 <= 1.0


def write_slide(path: Path) -> None:
    """A pyramidal tiled JPEG TIFF with its resolution, as the demo and scanners write."""
    import tifffile

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:H, 0:W]
    img = np.full((H, W, 3), 246, np.uint8)
    tissue = _tissue(xx, yy)
    noise = rng.integers(-25, 25, size=(H, W, 1))
    pink = np.clip(np.array([205, 120, 175])[None, None] + noise, 0, 255).astype(np.uint8)
    img[tissue] = pink[tissue]
    px_per_cm = 1e4 / MPP
    with tifffile.TiffWriter(path) as tif:
        for k, ds in enumerate((1, 4)):
            level = img[::ds, ::ds]
            tif.write(level, tile=(256, 256), compression="jpeg", photometric="rgb",
                      subfiletype=1 if k else 0, resolutionunit="CENTIMETER",
                      resolution=(px_per_cm / ds, px_per_cm / ds))


def make_tile_map(slide: Path):
    from slide2expr.contracts.tilemaps import TileMap

    xs, ys = np.meshgrid(np.arange(0, W - STEP + 1, STEP), np.arange(0, H - STEP + 1, STEP))
    coords = np.stack([xs.ravel(), ys.ravel()], axis=1).astype(np.int64)
    centres = coords + STEP / 2
    keep = _tissue(centres[:, 0], centres[:, 1])
    coords, centres = coords[keep], centres[keep]
    n = len(coords)
    values = np.stack([centres[:, 0] / 1000, centres[:, 1] / 1000, np.full(n, 1.5),
                       np.sin(centres[:, 0] / 300) + 2, np.linspace(0, 3, n)], axis=1)
    attrs = {"sample_id": "S1", "slide": str(slide), "slide_mpp": MPP, "mpp_source": "metadata",
             "level0_width": W, "level0_height": H, "tile_px_level0": float(STEP),
             "head": "mlp", "model_use": "fold 0, which held S1 out"}
    return TileMap(values=values.astype(np.float32), genes=list(GENES), coords=coords,
                   tile_size0=float(STEP), attrs=attrs)


def write_predictions(path: Path) -> np.ndarray:
    """Spot-mode predictions: measured X, out-of-fold layers['predicted'], spot centres."""
    import anndata as ad
    import pandas as pd

    xs, ys = np.meshgrid(np.arange(300, W - 200, 400), np.arange(300, H - 200, 400))
    centres = np.stack([xs.ravel(), ys.ravel()], axis=1).astype(np.float64)
    centres = centres[_tissue(centres[:, 0], centres[:, 1])]
    measured = np.stack([3 - centres[:, 0] / 1000, centres[:, 1] / 1000, np.full(len(centres), 1.5),
                         np.ones(len(centres)), np.ones(len(centres))], axis=1)
    obs = pd.DataFrame({"sample_id": ["S1"] * len(centres)},
                       index=[f"S1_{i}" for i in range(len(centres))])
    adata = ad.AnnData(X=measured.astype(np.float32), obs=obs,
                       var=pd.DataFrame(index=GENES))
    adata.layers["predicted"] = (measured + 0.1).astype(np.float32)
    adata.obsm["spatial"] = centres
    adata.write_h5ad(path)
    return centres


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A results folder: heatmaps/mlp/S1.h5ad, report/mlp/genes.tsv, predictions/mlp.h5ad."""
    import pandas as pd

    from slide2expr.contracts.tilemaps import write_tile_map

    root = tmp_path_factory.mktemp("viewer_cohort")
    slide = root / "S1.tiff"
    write_slide(slide)
    results = root / "results"
    write_tile_map(results / "heatmaps" / "mlp" / "S1.h5ad", make_tile_map(slide))
    (results / "report" / "mlp").mkdir(parents=True)
    pd.DataFrame({"gene": list(R), "pearson_r": list(R.values())}).to_csv(
        results / "report" / "mlp" / "genes.tsv", sep="\t", index=False)
    (results / "predictions").mkdir()
    write_predictions(results / "predictions" / "mlp.h5ad")
    return results


@pytest.fixture(scope="module")
def built(cohort: Path):
    from slide2expr.viewer import build_viewer

    return build_viewer(cohort)


def _call(path: Path, name: str) -> list:
    """The JSON arguments of the ``S2E.name(...)`` call in a data script."""
    text = path.read_text(encoding="utf-8")
    m = re.fullmatch(rf"S2E\.{name}\((.*)\);\n", text, flags=re.S)
    assert m, text[:200]
    return json.loads(f"[{m.group(1)}]".replace("<\\/", "</"))


def _png(b64: str) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(base64.b64decode(b64))))


# --------------------------------------------------------------------------- layers
def test_quantise_round_trip_error_is_bounded() -> None:
    from slide2expr.viewer.layers import LEVELS, quantise

    v = np.array([0.0, 0.25, 1.0, np.nan, 3.7, 2.2])
    q, lo, hi = quantise(v)
    assert q[3] == 0 and (q[np.isfinite(v)] >= 1).all()
    back = lo + (q.astype(float) - 1) / LEVELS * (hi - lo)
    ok = np.isfinite(v)
    assert np.abs(back[ok] - v[ok]).max() <= (hi - lo) / (2 * LEVELS) + 1e-12
    assert (lo, hi) == (0.0, 3.7)


def test_gene_layer_places_tiles_on_the_grid(cohort: Path) -> None:
    """Each tile lands in its grid cell; values decode to the tile map's within 1/508."""
    from slide2expr.contracts.tilemaps import read_tile_map
    from slide2expr.viewer.layers import gene_layer, tile_cells, tile_grid

    tmap = read_tile_map(cohort / "heatmaps" / "mlp" / "S1.h5ad")
    grid = tile_grid(tmap)
    assert (grid.cols, grid.rows, grid.step) == (10, 7, 224.0)  # ceil(2048/224), ceil(1536/224)
    layer = gene_layer(tmap, "GRADX", grid, slide_limits=(0.5, 1.5))
    codes = _png(layer["png"])
    assert codes.shape == (grid.rows, grid.cols)
    cells = tile_cells(tmap, grid)
    assert (cells == tmap.coords // STEP).all()
    got = layer["lo"] + (codes[cells[:, 1], cells[:, 0]] - 1) / 254 * (layer["hi"] - layer["lo"])
    want = tmap.column("GRADX")
    assert np.abs(got - want).max() <= (want.max() - want.min()) / 508 + 1e-6
    # cells without a tile are transparent (code 0): as many as the grid has empty cells
    assert (codes == 0).sum() == grid.cols * grid.rows - len(tmap.values)
    # GRADX rises left to right along a row
    row = codes[3][codes[3] > 0]
    assert (np.diff(row.astype(int)) > 0).all()


def test_uncertainty_hook_gives_a_spread_layer(cohort: Path) -> None:
    from slide2expr.contracts.tilemaps import read_tile_map
    from slide2expr.viewer.layers import gene_layer, tile_grid, tile_spread

    tmap = read_tile_map(cohort / "heatmaps" / "mlp" / "S1.h5ad")
    assert tile_spread(tmap) is None  # a map painted by one model has no spread
    tmap.spread = np.abs(tmap.values - tmap.values.mean(axis=0)) + 0.01
    spread = tile_spread(tmap)
    assert spread is not None and spread.shape == tmap.values.shape
    layer = gene_layer(tmap, "GRADX", tile_grid(tmap), slide_limits=(0, 1),
                       spread=spread[:, 0])
    assert _png(layer["spread"]["png"]).shape == (7, 10)
    assert layer["spread"]["lo"] == pytest.approx(float(spread[:, 0].min()), rel=1e-5)


# --------------------------------------------------------------------------- build
def test_build_writes_pyramid_layers_and_manifest(built, cohort: Path) -> None:
    out = built.out
    assert out == cohort / "viewer"
    for name in ("index.html", "viewer.js", "viewer.css", "data.js", "build.json",
                 "openseadragon/openseadragon.min.js", "openseadragon/images/zoomin_rest.png",
                 "slides/S1/slide.dzi", "slides/S1/slide.js"):
        assert (out / name).is_file(), name
    # no CDN or other remote resource anywhere in the page
    page = (out / "index.html").read_text() + (out / "viewer.js").read_text()
    assert not re.search(r"(src|href)=['\"]?(https?:)?//", page)
    # the pyramid: full resolution at level ceil(log2(2048)) = 11, 254 px tiles
    dzi = (out / "slides/S1/slide.dzi").read_text()
    assert 'Width="2048"' in dzi and 'Height="1536"' in dzi and 'TileSize="254"' in dzi
    top = out / "slides/S1/slide_files/11"
    assert len(list(top.glob("*.jpeg"))) == 9 * 7  # ceil(2048/254) x ceil(1536/254)
    assert not (out / "slides/S1/slide_files/12").exists()
    [data] = _call(out / "data.js", "data")
    assert data["head"] == "mlp" and data["units"] == "log1p CP10k"
    assert [g["name"] for g in data["genes"]] == GENES  # every predicted gene
    assert {g["name"]: g["r"] for g in data["genes"]}["GRADX"] == 0.61
    assert {g["name"]: g["r"] for g in data["genes"]}["FLAT"] is None
    assert data["default_gene"] == "GRADX"  # the best r of the report
    assert set(data["colormaps"]) >= {"inferno", "viridis"}
    [slide] = data["slides"]
    assert slide["mpp"] == pytest.approx(MPP) and slide["has_spots"] and not slide["has_spread"]
    assert slide["grid"] == {"step": 224.0, "cols": 10, "rows": 7}
    sid, detail = _call(out / "slides/S1/slide.js", "slide")
    assert sid == "S1" and detail["outline"], "no tissue outline"
    ring = np.asarray(detail["outline"][0][0], dtype=float)  # the ellipse: 1700 x 1200 px
    assert ring[:, 0].max() - ring[:, 0].min() == pytest.approx(1700, abs=60)
    assert ring[:, 1].max() - ring[:, 1].min() == pytest.approx(1200, abs=60)
    assert detail["spots"]["diameter"] == pytest.approx(200.0)  # half the 400 px pitch
    assert len(detail["spots"]["ids"]) == len(detail["spots"]["centres"]) > 5
    # one layer file per gene, with the measured values at the spots
    files = sorted(p.name for p in (out / "slides/S1/genes").iterdir())
    assert files == sorted(f"{g}.js" for g in GENES)
    _, gene, layer = _call(out / "slides/S1/genes/GRADX.js", "gene")
    assert gene == "GRADX" and layer["spots"]["r"] == pytest.approx(1.0, abs=1e-3)  # predicted = measured + 0.1
    build = json.loads((out / "build.json").read_text())
    assert build["slides"][0]["pyramid_backend"] == "vips"
    assert build["slides"][0]["bytes"] > build["slides"][0]["pyramid_bytes"] > 0


def test_cohort_limits_pool_the_slides(cohort: Path, tmp_path: Path) -> None:
    """A second slide with GRADX shifted by +10: cohort limits span both, slide limits not."""
    from slide2expr.contracts.tilemaps import read_tile_map, write_tile_map
    from slide2expr.viewer import ViewerOptions, build_viewer

    results = tmp_path / "results"
    tmap = read_tile_map(cohort / "heatmaps" / "mlp" / "S1.h5ad")
    write_tile_map(results / "heatmaps" / "mlp" / "S1.h5ad", tmap)
    tmap.values = tmap.values.copy()
    tmap.values[:, 0] += 10
    tmap.attrs.sample_id = "S2"
    write_tile_map(results / "heatmaps" / "mlp" / "S2.h5ad", tmap)
    res = build_viewer(results, options=ViewerOptions(genes=["GRADX"]))
    [data] = _call(res.out / "data.js", "data")
    assert [s["id"] for s in data["slides"]] == ["S1", "S2"]
    lo, hi = data["cohort_limits"]["GRADX"]
    assert lo < 2 and hi > 10
    _, _, l1 = _call(res.out / "slides/S1/genes/GRADX.js", "gene")
    _, _, l2 = _call(res.out / "slides/S2/genes/GRADX.js", "gene")
    assert l1["slide_limits"][1] < 2 < 10 < l2["slide_limits"][0]
    assert not any(s["has_spots"] for s in data["slides"])  # no predictions file here


def test_deepzoom_backend_writes_the_same_tile_grid(cohort: Path, tmp_path: Path) -> None:
    from slide2expr.viewer.pyramid import write_pyramid

    a, b = tmp_path / "vips", tmp_path / "dz"
    a.mkdir()
    b.mkdir()
    slide = cohort.parent / "S1.tiff"
    pa = write_pyramid(slide, a, backend="vips")
    pb = write_pyramid(slide, b, backend="deepzoom")
    assert (pa.width, pa.height, pa.max_level) == (pb.width, pb.height, pb.max_level) == (
        W, H, 11)

    def grid(root: Path) -> dict[str, list[str]]:
        return {d.name: sorted(p.name for p in d.iterdir())
                for d in (root / "slide_files").iterdir()}

    assert grid(a) == grid(b)


# --------------------------------------------------------------------------- bad input
def test_gene_not_predicted(cohort: Path, tmp_path: Path) -> None:
    from slide2expr.viewer import ViewerOptions, build_viewer

    out = tmp_path / "viewer"
    with pytest.raises(InputError, match=r"does not predict 1 requested gene\(s\): NOPE"):
        build_viewer(cohort, out, options=ViewerOptions(genes=["GRADX", "NOPE"]))
    assert not out.exists()


def test_results_without_heatmaps(tmp_path: Path) -> None:
    from slide2expr.viewer import build_viewer

    (tmp_path / "results" / "report").mkdir(parents=True)
    with pytest.raises(InputError) as err:
        build_viewer(tmp_path / "results")
    assert "has no tile maps" in str(err.value) and "heatmap stage" in str(err.value)
    assert not (tmp_path / "results" / "viewer").exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes to read-only folders")
def test_unwritable_output_folder_non_root(cohort: Path, tmp_path: Path) -> None:
    from slide2expr.viewer import build_viewer

    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(stat.S_IRUSR | stat.S_IXUSR)
    try:
        with pytest.raises(InputError, match="cannot be written"):
            build_viewer(cohort, ro / "viewer")
    finally:
        ro.chmod(stat.S_IRWXU)


def test_failure_mid_build_leaves_the_old_viewer(cohort: Path, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Disk full while writing the pyramid: the error propagates, no partial folder is left
    and a viewer built before stays as it was."""
    import errno

    from slide2expr.errors import EnvironmentFault
    from slide2expr.viewer import build, build_viewer

    out = tmp_path / "viewer"
    build_viewer(cohort, out)
    before = sorted(str(p.relative_to(out)) for p in out.rglob("*"))

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "x.jpeg"))

    monkeypatch.setattr(build, "write_pyramid", full)
    with pytest.raises(EnvironmentFault, match=r"the disk is full \(ENOSPC\)"):
        build_viewer(cohort, out)
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*")) == before
    assert [p.name for p in tmp_path.iterdir()] == ["viewer"]  # no .partial sibling


# --------------------------------------------------------------------------- CLI
def _cli(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
         *args: str) -> tuple[int, str]:
    """Run ``slide2expr ARGS`` in-process (as the console script does): status, last stderr
    line."""
    from slide2expr.cli import main

    monkeypatch.setattr(sys, "argv", ["slide2expr", *args])
    try:
        main()
        status = 0
    except SystemExit as exc:
        status = int(exc.code or 0)
    err = capsys.readouterr().err.strip().splitlines()
    return status, err[-1] if err else ""


def test_cli_errors_are_one_line(cohort: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    status, last = _cli(monkeypatch, capsys, "view", str(cohort), "-o", str(tmp_path / "v"),
                        "--genes", "NOPE")
    assert status == 2
    assert last.startswith("error: ") and "NOPE" in last and "Fix:" in last
    assert not (tmp_path / "v").exists()
    status, last = _cli(monkeypatch, capsys, "view", str(tmp_path / "empty"), "-o",
                        str(tmp_path / "v"))
    assert status == 2 and "has no tile maps" in last
    # a file where the output's parent folder should be: cannot be written
    (tmp_path / "file").write_text("x")
    status, last = _cli(monkeypatch, capsys, "view", str(cohort), "-o",
                        str(tmp_path / "file" / "viewer"))
    assert status == 2 and "cannot be written" in last and "--out-dir" in last


def test_cli_missing_openseadragon_is_an_environment_fault(cohort: Path, tmp_path: Path,
                                                           monkeypatch, capsys) -> None:
    monkeypatch.setenv("SLIDE2EXPR_OPENSEADRAGON", str(tmp_path / "nowhere"))
    status, last = _cli(monkeypatch, capsys, "view", str(cohort), "-o", str(tmp_path / "v"))
    assert status == 1, last
    assert last.startswith("error: OpenSeadragon not found") and "npm ci" in last
    assert not (tmp_path / "v").exists()


def test_cli_disk_full_is_an_environment_fault(cohort: Path, tmp_path: Path, monkeypatch,
                                               capsys) -> None:
    import errno

    from slide2expr.viewer import build

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "v" / "t.jpeg"))

    monkeypatch.setattr(build, "write_pyramid", full)
    status, last = _cli(monkeypatch, capsys, "view", str(cohort), "-o", str(tmp_path / "v"))
    assert status == 1
    assert "the disk is full (ENOSPC)" in last and "Fix: free space" in last
    assert list(tmp_path.iterdir()) == []


def test_cli_serve_prints_the_url_and_serves(built, tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "slide2expr.cli", "view", str(built.out.parent), "-o",
         str(built.out), "--serve", "--no-build"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        m = re.search(r"(http://127\.0\.0\.1:\d+/index\.html)", line)
        assert m, line + proc.stderr.read() if proc.poll() is not None else line
        with urllib.request.urlopen(m.group(1), timeout=10) as page:
            assert b"openseadragon.min.js" in page.read()
        base = m.group(1).rsplit("/", 1)[0]
        with urllib.request.urlopen(f"{base}/slides/S1/slide_files/11/0_0.jpeg", timeout=10) as t:
            assert t.headers["Content-Type"] == "image/jpeg" and t.read(2) == b"\xff\xd8"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_report_links_each_gene_to_the_viewer() -> None:
    import pandas as pd

    from slide2expr.report.html import gene_table

    html = gene_table(pd.DataFrame({"gene": ["GRADX", "HLA-DRA", "A/B"],
                                    "pearson_r": [0.5, 0.2, 0.1]}))
    assert "href='../../viewer/index.html#gene=GRADX'" in html
    assert "href='../../viewer/index.html#gene=A%2FB'" in html


def test_server_serves_only_localhost(built) -> None:
    from slide2expr.viewer import serve_in_thread, viewer_url

    server, _ = serve_in_thread(built.out)
    try:
        assert server.server_address[0] == "127.0.0.1"
        t0 = time.perf_counter()
        with urllib.request.urlopen(viewer_url(server), timeout=10) as page:
            assert page.status == 200
        assert time.perf_counter() - t0 < 30
    finally:
        server.shutdown()
        server.server_close()


# --------------------------------------------------------------------------- browser
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
CHROMIUM_ARGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--hide-scrollbars", "--window-size=1280,800")


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory):
    """Headless Chromium driven by Selenium through Debian's chromedriver (no Selenium
    Manager, no network)."""
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not Path(p).exists()]
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        missing.append("selenium (pip)")
    if missing:
        message = (f"missing {', '.join(missing)} (apt-get install chromium chromium-driver; "
                   "pip install selenium)")
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in CHROMIUM_ARGS:
        options.add_argument(arg)
    options.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


def _wait(driver, script: str, timeout: float = 20.0):
    """Poll ``return <script>`` until truthy; its value."""
    end = time.monotonic() + timeout
    while True:
        value = driver.execute_script(f"return {script}")
        if value or time.monotonic() > end:
            assert value, f"timed out waiting for {script}"
            return value
        time.sleep(0.05)


def _ready(driver, gene: str, timeout: float = 20.0) -> None:
    """The page reports the H&E loaded and the layer of ``gene`` painted."""
    _wait(driver, f"document.body.getAttribute('data-ready') === '1' && "
                  f"S2E.state.gene === {json.dumps(gene)}", timeout)
    time.sleep(0.3)  # the canvas drawer paints on the next animation frame


def _view_pixels(driver) -> np.ndarray:
    """The viewer area (right of the side panel) as RGB."""
    from PIL import Image

    img = np.asarray(Image.open(io.BytesIO(driver.get_screenshot_as_png())).convert("RGB"))
    left = driver.execute_script("return document.getElementById('stage').offsetLeft")
    return img[:, left:].astype(np.int16)


def _errors(driver) -> list[dict]:
    return [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]


def test_browser_viewer_over_http(built, browser) -> None:
    """Over ``slide2expr view --serve``'s server: first paint, deeper levels on zoom, gene
    change, spot mode with the measured colours, hover readout; no console error."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.actions.wheel_input import ScrollOrigin
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    from slide2expr.viewer import serve_in_thread, viewer_url

    server, _ = serve_in_thread(built.out)
    try:
        browser.get_log("browser")  # drop anything from earlier pages
        t0 = time.perf_counter()
        browser.get(viewer_url(server))
        _ready(browser, "GRADX")
        print(f"time to first paint over HTTP: {time.perf_counter() - t0:.2f} s")
        first = _view_pixels(browser)
        # the slide is painted: real contrast, and the pink tissue (205, 120, 175) is there
        assert first.std() > 20
        pink = (np.abs(first - np.array([205, 120, 175])) < 40).all(axis=-1)
        assert pink.sum() > 5000, "no tissue visible"
        levels = browser.execute_script("return Object.keys(S2E.state.levels).map(Number)")
        assert max(levels) < 11, "the whole-slide view should not need full resolution"

        # zoom in with the mouse wheel at the centre: level 11 (full resolution) is fetched
        view = browser.find_element(By.ID, "view")
        for _ in range(6):
            ActionChains(browser).scroll_from_origin(ScrollOrigin.from_element(view),
                                                     0, -400).perform()
            time.sleep(0.15)
        _wait(browser, "Object.keys(S2E.state.levels).map(Number).indexOf(11) >= 0")
        browser.execute_script("S2E.state.viewer.viewport.goHome(true)")
        _wait(browser, "S2E.state.base.getFullyLoaded()")
        time.sleep(0.3)
        home = _view_pixels(browser)

        # choose another gene with the search box: the overlay changes
        box = browser.find_element(By.ID, "gene")
        box.send_keys("grad")
        items = _wait(browser, "Array.from(document.querySelectorAll('#gene-list li'))"
                               ".map(li => li.textContent)")
        assert items[0].startswith("GRADX") and "r 0.61" in items[0]  # r beside each name
        assert items[1].startswith("GRADY") and "r 0.42" in items[1]
        box.send_keys(Keys.ARROW_DOWN, Keys.ENTER)
        _ready(browser, "GRADY")
        assert browser.find_element(By.ID, "current").get_attribute("data-gene") == "GRADY"
        assert "#slide=S1&gene=GRADY" in browser.current_url
        grady = _view_pixels(browser)
        changed = (np.abs(grady - home).max(axis=-1) > 30).mean()
        assert changed > 0.05, f"overlay did not change ({changed:.3f} of pixels)"

        # spot mode: the measured values appear as discs in the colour of their value, on
        # their own scale with their own legend
        browser.find_element(By.ID, "spots").click()
        time.sleep(0.3)
        spots = _view_pixels(browser)
        layer = browser.execute_script(
            "return S2E.state.layers['S1\u0000GRADY']")
        centres = browser.execute_script(
            "var d = S2E.state.detail.S1.spots.centres, b = S2E.state.base;"
            "return d.map(p => {var q = b.imageToViewerElementCoordinates("
            "new OpenSeadragon.Point(p[0], p[1])); return [q.x, q.y];})")
        [data] = _call(built.out / "data.js", "data")
        lut = np.frombuffer(bytes.fromhex(data["colormaps"]["inferno"]), np.uint8).reshape(256, 3)
        codes = np.frombuffer(base64.b64decode(layer["spots"]["measured"]), np.uint8)
        measured = layer["spots"]["mlo"] + (codes - 1) / 254 * (layer["spots"]["mhi"] -
                                                                 layer["spots"]["mlo"])
        lo, hi = layer["spots"]["mlo"], layer["spots"]["mhi"]  # the measured values' own scale
        want = lut[np.rint(np.clip((measured - lo) / (hi - lo), 0, 1) * 255).astype(int)]
        ratio = browser.execute_script("return window.devicePixelRatio")
        got = np.array([spots[round(y * ratio), round(x * ratio)] for x, y in centres])
        assert len(got) > 5
        assert np.abs(got - want).max() < 12, "spot discs do not show the measured values"
        assert (np.abs(spots - grady).max(axis=-1) > 30).mean() > 0.01
        legend = browser.find_element(By.ID, "legend-m-label").text
        assert legend.startswith("measured GRADY at the spots") and "own scale" in legend
        assert browser.find_element(By.ID, "legend-label").text.startswith("predicted GRADY")

        # hover readout: tile ID, predicted value, position in micrometres, the spot
        x, y = centres[0]
        ActionChains(browser).move_to_element_with_offset(
            view, round(x - view.size["width"] / 2), round(y - view.size["height"] / 2)).perform()
        text = _wait(browser, "document.getElementById('readout').textContent.indexOf('spot') "
                              ">= 0 && document.getElementById('readout').textContent")
        assert re.search(r"x [\d.]+ µm, y [\d.]+ µm", text), text
        assert re.search(r"tile\d+: predicted GRADY [\d.]+ log1p CP10k", text), text
        assert "spot S1_0: measured" in text, text
        assert _errors(browser) == []
    finally:
        server.shutdown()
        server.server_close()


def test_browser_side_by_side_and_readout_follow_the_gene(built, browser) -> None:
    """Side by side: measured spots left, predicted map right, pan and zoom synchronised;
    the hover readout follows a gene switch without moving the mouse (before: it kept the
    previous gene's values); no console error."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    from slide2expr.viewer import serve_in_thread, viewer_url

    server, _ = serve_in_thread(built.out)
    try:
        browser.get_log("browser")
        browser.get(viewer_url(server) + "#slide=S1&gene=GRADX")
        _ready(browser, "GRADX")
        view = browser.find_element(By.ID, "view")
        x, y = browser.execute_script(
            "var p = S2E.state.detail.S1.spots.centres[0], b = S2E.state.base;"
            "var q = b.imageToViewerElementCoordinates(new OpenSeadragon.Point(p[0], p[1]));"
            "return [q.x, q.y]")
        ActionChains(browser).move_to_element_with_offset(
            view, round(x - view.size["width"] / 2), round(y - view.size["height"] / 2)).perform()
        _wait(browser, "document.getElementById('readout').textContent.indexOf("
                       "'predicted GRADX') >= 0")
        browser.execute_script("S2E.chooseGene('GRADY')")
        _ready(browser, "GRADY")
        text = _wait(browser, "document.getElementById('readout').textContent.indexOf("
                              "'predicted GRADY') >= 0 && "
                              "document.getElementById('readout').textContent")
        assert "GRADX" not in text

        browser.find_element(By.ID, "split").click()
        _wait(browser, "S2E.state.base2 && S2E.state.mapViewer === S2E.state.viewer2 && "
                       "document.body.getAttribute('data-ready') === '1'")
        left, right = (browser.find_element(By.ID, i) for i in ("view", "view2"))
        assert abs(left.size["width"] - right.size["width"]) <= 3
        assert right.location["x"] >= left.location["x"] + left.size["width"] - 3
        counts = browser.execute_script("return [S2E.state.viewer.world.getItemCount(), "
                                        "S2E.state.viewer2.world.getItemCount()]")
        assert counts == [1, 2]  # the H&E left; the H&E and the predicted map right
        assert not browser.find_element(By.ID, "legend-measured").get_attribute("hidden")
        # zoom the left pane: the right one follows; pan the right: the left follows
        browser.execute_script("S2E.state.viewer.viewport.zoomBy(3, null, true);"
                               "S2E.state.viewer.viewport.applyConstraints(true)")
        same = ("var a = S2E.state.viewer.viewport, b = S2E.state.viewer2.viewport;"
                "return Math.abs(a.getZoom(true) - b.getZoom(true)) < 1e-6 * a.getZoom(true) &&"
                " a.getCenter(true).distanceTo(b.getCenter(true)) < 1e-6")
        _wait(browser, f"(function(){{{same}}})()")
        zoom = browser.execute_script("return S2E.state.viewer2.viewport.getZoom(true)")
        assert zoom > 2.5
        browser.execute_script("S2E.state.viewer2.viewport.panBy(new OpenSeadragon.Point("
                               "0.05, 0.02), true)")
        _wait(browser, f"(function(){{{same}}})()")
        assert _errors(browser) == []
    finally:
        browser.get("about:blank")  # no tile request of this page may outlive the server
        server.shutdown()
        server.server_close()


def test_browser_report_link_opens_the_gene(built, browser) -> None:
    """From ``report/{head}/index.html`` (file://), a gene's link opens the viewer at it."""
    import pandas as pd
    from selenium.webdriver.common.by import By

    from slide2expr.report.html import gene_table

    report = built.out.parent / "report" / "mlp" / "index.html"
    report.write_text("<!DOCTYPE html><html><body>" + gene_table(pd.DataFrame(
        {"gene": list(R), "pearson_r": list(R.values())})) + "</body></html>", encoding="utf-8")
    browser.get("about:blank")
    browser.get_log("browser")  # nothing of an earlier page's log counts here
    browser.get(report.resolve().as_uri())
    browser.find_element(By.LINK_TEXT, "HLA-DRA").click()
    _ready(browser, "HLA-DRA")
    assert browser.current_url.startswith((built.out / "index.html").resolve().as_uri())
    assert browser.find_element(By.ID, "current").get_attribute("data-gene") == "HLA-DRA"
    assert _errors(browser) == []


def test_regions_of_one_slide_share_one_pyramid(cohort: Path, tmp_path: Path) -> None:
    """Two region samples of one slide (sheet roi): each gets its own layers and tile cells,
    the slide's pyramid is written once and both point at it."""
    from slide2expr.contracts.tilemaps import TileMap, read_tile_map, write_tile_map
    from slide2expr.viewer import build_viewer

    whole = read_tile_map(cohort / "heatmaps" / "mlp" / "S1.h5ad")
    results = tmp_path / "results"
    left = whole.coords[:, 0] < W / 2
    for sample, rows in (("S1_left", left), ("S1_right", ~left)):
        attrs = whole.attrs.to_attrs() | {"sample_id": sample, "roi_bounds": [0.0, 0.0, W / 2, H]}
        write_tile_map(results / "heatmaps" / "mlp" / f"{sample}.h5ad",
                       TileMap(values=whole.values[rows], genes=list(whole.genes),
                               coords=whole.coords[rows], tile_size0=whole.tile_size0,
                               attrs=attrs))
    res = build_viewer(results)
    [data] = _call(res.out / "data.js", "data")
    urls = {s["id"]: s["dzi"]["url"] for s in data["slides"]}
    assert urls == {"S1_left": "slides/S1_left/slide_files/",
                    "S1_right": "slides/S1_left/slide_files/"}
    assert (res.out / "slides/S1_left/slide.dzi").is_file()
    assert not (res.out / "slides/S1_right/slide_files").exists()
    assert {s["id"]: s["n_tiles"] for s in data["slides"]} == {
        "S1_left": int(left.sum()), "S1_right": int((~left).sum())}
    assert (res.out / "slides/S1_right/slide.js").is_file()
