"""The page's files: ``index.html``, ``viewer.js``/``viewer.css`` (package data under
``static/``), OpenSeadragon (from npm, copied, never a CDN) and the data scripts.

Data reach the page as JavaScript (``data.js``, ``slides/{id}/genes/{gene}.js``) rather than
JSON, so the same folder works from ``file://`` (where ``fetch`` of local files is blocked)
and over HTTP.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from slide2expr.draw.colours import colormap
from slide2expr.errors import EnvironmentFault

STATIC = Path(__file__).with_name("static")
#: The page's own files, copied as they are.
STATIC_FILES = ("index.html", "viewer.js", "viewer.css")
#: Colour maps offered on the page (Matplotlib names), the first is the default.
COLORMAPS = ("inferno", "viridis", "magma", "plasma", "cividis", "turbo", "RdBu_r")
#: Environment variable naming OpenSeadragon's ``build/openseadragon`` folder.
OSD_ENV = "SLIDE2EXPR_OPENSEADRAGON"


def openseadragon_dir() -> Path:
    """OpenSeadragon's built files: ``$SLIDE2EXPR_OPENSEADRAGON`` when set, else
    ``node_modules`` of this checkout (``npm ci``, run by ``scripts/setup.sh``).

    Raises
    ------
    EnvironmentFault
        When neither holds ``openseadragon.min.js``.
    """
    candidates = []
    if os.environ.get(OSD_ENV):  # when set, the only place looked at
        candidates.append(Path(os.environ[OSD_ENV]))
    else:
        for parent in Path(__file__).resolve().parents:
            candidates.append(parent / "node_modules" / "openseadragon" / "build" / "openseadragon")
            if (parent / "package.json").is_file():
                break
    for folder in candidates:
        if (folder / "openseadragon.min.js").is_file():
            return folder
    raise EnvironmentFault(
        None, f"OpenSeadragon not found (looked in {', '.join(str(c) for c in candidates)})",
        f"run `npm ci` in the slide2expr checkout (scripts/setup.sh does), or set {OSD_ENV} to "
        "the folder holding openseadragon.min.js")


def copy_assets(out: Path) -> None:
    """Copy the page and OpenSeadragon (min.js, its button images, licence) into ``out``."""
    osd = openseadragon_dir()
    for name in STATIC_FILES:
        shutil.copyfile(STATIC / name, out / name)
    target = out / "openseadragon"
    target.mkdir()
    shutil.copyfile(osd / "openseadragon.min.js", target / "openseadragon.min.js")
    if (osd / "images").is_dir():
        shutil.copytree(osd / "images", target / "images")
    for licence in (osd.parents[1] / "LICENSE.txt", osd / "LICENSE.txt"):
        if licence.is_file():
            shutil.copyfile(licence, target / "LICENSE.txt")
            break


def colormap_luts(names: tuple[str, ...] = COLORMAPS) -> dict[str, str]:
    """``{name: hex string of 256 RGB triplets}`` from Matplotlib."""

    out = {}
    for name in names:
        rgb = (np.asarray(colormap(name)(np.linspace(0, 1, 256)))[:, :3] * 255).round()
        out[name] = rgb.astype(np.uint8).tobytes().hex()
    return out


def js_call(function: str, *args: Any) -> str:
    """``S2E.function(arg, ...);`` with JSON arguments (safe inside a ``<script>`` file)."""
    body = ", ".join(json.dumps(a, separators=(",", ":"), allow_nan=False) for a in args)
    return f"S2E.{function}({body});\n".replace("</", "<\\/")


def write_data(out: Path, manifest: dict[str, Any]) -> None:
    """``data.js``: the cohort manifest (slides, genes with r, scales, colour maps)."""
    manifest = dict(manifest, colormaps=colormap_luts())
    (out / "data.js").write_text(js_call("data", manifest), encoding="utf-8")
