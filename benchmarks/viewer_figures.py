"""Figures of a built viewer: build time and disk size per slide, gene layer size, and time to
first paint from the local server in headless Chromium.

Reads ``{viewer}/build.json`` (written by ``slide2expr view``), measures the folder on disk,
then serves it on 127.0.0.1 (as ``slide2expr view --serve`` does) and opens it ``--repeat``
times in a fresh headless Chromium (Debian's chromium + chromium-driver through Selenium),
reporting the page's own ``performance.now()`` when the whole-slide view and the first gene
layer are painted (``S2E.state.firstPaintMs``), for every slide.

Usage::

    python benchmarks/viewer_figures.py results/viewer [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path


def _du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def first_paint_ms(url: str) -> float:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for arg in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update",
                "--disable-sync", "--window-size=1280,800"):
        options.add_argument(arg)
    with tempfile.TemporaryDirectory() as profile:
        options.add_argument(f"--user-data-dir={profile}")
        driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
        try:
            driver.get(url)
            end = time.monotonic() + 60
            while time.monotonic() < end:
                ms = driver.execute_script("return S2E.state.firstPaintMs")
                if ms is not None:
                    return float(ms)
                time.sleep(0.05)
            raise TimeoutError(url)
        finally:
            driver.quit()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("viewer", type=Path)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    from slide2expr.viewer import serve_in_thread, viewer_url

    build = json.loads((args.viewer / "build.json").read_text())
    print(f"viewer {args.viewer}: {len(build['slides'])} slides x {build['n_genes']} genes, "
          f"built in {build['seconds']:.1f} s, {_du(args.viewer) / 1e6:.1f} MB on disk "
          f"(page + OpenSeadragon {(_du(args.viewer) - sum(s['bytes'] for s in build['slides'])) / 1e6:.2f} MB)")
    print(f"{'slide':10} {'px':>11} {'tiles':>6} {'build s':>8} {'pyramid s':>10} {'MB':>6} "
          f"{'pyramid MB':>10} {'layer KB (median)':>18} {'first paint ms':>15}")
    server, _ = serve_in_thread(args.viewer)
    try:
        for s in build["slides"]:
            url = f"{viewer_url(server)}#slide={s['sample_id']}"
            paints = [first_paint_ms(url) for _ in range(args.repeat)]
            layers = [p.stat().st_size for p in
                      (args.viewer / "slides" / s["sample_id"] / "genes").iterdir()]
            print(f"{s['sample_id']:10} {s['width']:>5}x{s['height']:<5} {s['n_tiles']:6d} "
                  f"{s['seconds']:8.1f} {s['pyramid_seconds']:10.1f} {s['bytes'] / 1e6:6.1f} "
                  f"{s['pyramid_bytes'] / 1e6:10.1f} "
                  f"{statistics.median(layers) / 1e3:10.1f} (max {max(layers) / 1e3:.1f}) "
                  f"{statistics.median(paints):15.0f}")
    finally:
        server.shutdown()
        server.server_close()


if __name__ == "__main__":
    main()
