"""Tiling of slide2expr, LazySlide and TIAToolbox side by side, in one run (issue 17).

The protocol of ``../shared/bench/peers/`` (its ``common.py``: 0.5 um/px, 224 px tiles, each
tool's own tissue detection; fresh processes under ``/usr/bin/time -v``, median of N; tiling
seconds measured inside each process, imports excluded), with slide2expr's current module
paths (the peers' ``bench_s2e_tiling.py`` imports the old flat modules). The peers run from
the venvs the peers' ``setup.sh`` builds (``/tmp/peer-lazyslide``, ``/tmp/peer-tiatoolbox``)
with their own scripts; tools are interleaved per slide. One JSON line per tool and slide;
``../shared/bench/peers/table.py`` turns them into a table.

``--clock cpu`` measures the same span in CPU seconds of the process (all its threads) instead
of wall seconds: each tool's own child code runs unchanged, with ``time.perf_counter``
replaced by ``time.process_time`` in its module. On a machine that other work loads, CPU
seconds stay comparable where wall seconds do not (``tiling_s`` and ``import_s`` then hold CPU
seconds; ``clock`` says which).

Run (from the repository root, with the project's venv)::

    python benchmarks/tiling_peers.py --runs 3 --slides cmu,big [--before OLD/src] > tiling.jsonl
    python3 ../shared/bench/peers/table.py tiling.jsonl
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

PEERS = Path(os.environ.get("PEER_BENCH", Path(__file__).resolve().parents[2]
                            / "shared" / "bench" / "peers"))


class _Clock:
    """The ``time`` module with ``perf_counter`` swapped for the ``--clock`` in use."""

    def __init__(self, clock: str) -> None:
        self.clock = clock

    def __getattr__(self, name: str) -> object:
        if name == "perf_counter" and self.clock == "cpu":
            return time.process_time
        return getattr(time, name)


CLOCK = _Clock(os.environ.get("S2E_CLOCK", "wall"))


def peer_child(tool: str, args: list[str]) -> None:
    """Run the peer's own ``child`` (its bench script, in its venv) under :data:`CLOCK`."""
    sys.path.insert(0, str(PEERS))
    import importlib

    module = importlib.import_module(f"bench_{tool}")
    module.time = CLOCK
    mode, slide, workers, model = args
    print(json.dumps({**module.child(mode, slide, int(workers), model), "clock": CLOCK.clock}))


def child(slide: str) -> None:
    """One tiling of ``slide`` (a name in the peers' ``common.SLIDES``); prints JSON."""
    sys.path.insert(0, str(PEERS))
    from common import MPP, SLIDES, TILE_PX

    t0 = CLOCK.perf_counter()
    from slide2expr.inputs.slides import open_slide
    from slide2expr.tile.grid import TilingParams, compute_tissue, grid_tiles
    from slide2expr.tile.tissue import TissueParams
    imp = CLOCK.perf_counter() - t0
    path, assume = SLIDES[slide]
    t = CLOCK.perf_counter()
    params = TilingParams(target_mpp=MPP, tile_px=TILE_PX, min_tissue=0.5,
                          spot_diameter_um=112.0,
                          tissue=TissueParams(mask_mpp=float(os.environ.get("S2E_MASK_MPP", 8.0)),
                                              min_saturation=0.07,
                                              closing_um=40.0, min_object_um2=20000.0,
                                              max_hole_um2=20000.0))
    with open_slide(path, sheet_mpp=None, default_mpp=assume) as s:
        tissue = compute_tissue(s, params.tissue)
        grid = grid_tiles(s, tissue, slide, params)
    dt = CLOCK.perf_counter() - t
    print(json.dumps({"tool": os.environ.get("S2E_LABEL", "slide2expr"), "mode": "tiles", "slide": slide,
                      "n_tiles": len(grid.coords), "tiling_s": dt, "import_s": imp,
                      "mask_source": tissue.source, "mask_shape": list(tissue.mask.shape),
                      "clock": CLOCK.clock}))


def peer(tool: str, slide: str, runs: int) -> dict:
    """Median of ``runs`` fresh processes of the peer's own ``child``, in the peer's venv."""
    code = (f"import sys, json; sys.path.insert(0, {str(PEERS)!r}); from common import median_of;"
            f" print(json.dumps(median_of({str(Path(__file__).resolve())!r}, {runs},"
            f" ['tiles', {slide!r}, '0', 'tv'], ['tiling_s'])))")
    env = dict(os.environ, S2E_PEER_TOOL=tool)
    out = subprocess.run([f"/tmp/peer-{tool}/bin/python", "-c", code], capture_output=True,
                         text=True, check=True, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])


def ours(slide: str, runs: int, *, src: str | None = None, label: str = "slide2expr") -> dict:
    """Median of ``runs`` fresh processes of :func:`child`, through the peers' driver; with
    ``src``, slide2expr is imported from that ``src`` folder (e.g. an older checkout's)."""
    sys.path.insert(0, str(PEERS))
    from common import median_of

    saved = dict(os.environ)
    os.environ["S2E_LABEL"] = label
    if src:
        os.environ["PYTHONPATH"] = src
    try:
        return median_of(str(Path(__file__).resolve()), runs, ["tiles", slide, "0", "tv"],
                         ["tiling_s"])
    finally:
        os.environ.clear()
        os.environ.update(saved)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--slides", default="cmu,big")
    ap.add_argument("--tools", default="slide2expr,lazyslide,tiatoolbox")
    ap.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                    help="time the spans in wall seconds (the peers' protocol) or CPU seconds")
    ap.add_argument("--mask-mpp", type=float, action="append", default=[],
                    help="also time slide2expr with this tissue-mask resolution, um/px (row "
                         "'slide2expr@mask8' for 8; the default row uses 4, the shipped default)")
    ap.add_argument("--before", metavar="SRC",
                    help="also time slide2expr from this src folder (row 'slide2expr@before')")
    args = ap.parse_args()
    if args.child:
        if os.environ.get("S2E_PEER_TOOL"):
            peer_child(os.environ["S2E_PEER_TOOL"], args.child)
        else:
            child(args.child[1])
        return
    os.environ["S2E_CLOCK"] = args.clock
    for slide in args.slides.split(","):
        if args.before:
            print(json.dumps(ours(slide, args.runs, src=args.before,
                                  label="slide2expr@before")), flush=True)
        for tool in args.tools.split(","):
            row = ours(slide, args.runs) if tool == "slide2expr" else peer(tool, slide, args.runs)
            print(json.dumps(row), flush=True)
            if tool == "slide2expr":
                for mpp in args.mask_mpp:
                    os.environ["S2E_MASK_MPP"] = str(mpp)
                    print(json.dumps(ours(slide, args.runs, label=f"slide2expr@mask{mpp:g}")),
                          flush=True)
                    del os.environ["S2E_MASK_MPP"]


if __name__ == "__main__":
    main()
