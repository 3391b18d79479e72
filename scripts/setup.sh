#!/usr/bin/env bash
# Create (or refresh) the project's virtual environment with every dependency.
#
#   bash scripts/setup.sh            # venv in .venv (or $SLIDE2EXPR_VENV)
#
# The full install (~5 min) runs only when pyproject.toml changed since the last one;
# otherwise only the editable install of this checkout is refreshed (seconds), so a cached
# venv can serve many clones. PyTorch is pinned to the wheels available offline here
# (torch 2.14.1 / torchvision 0.29.1); on other machines pip fetches the same versions.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${SLIDE2EXPR_VENV:-.venv}"
PYTHON="${PYTHON:-python3}"

if [ ! -x "$VENV/bin/python" ]; then
    echo "[setup] creating virtual environment in $VENV"
    "$PYTHON" -m venv "$VENV"
fi
stamp_file="$VENV/.slide2expr-deps"
want="$(sha256sum pyproject.toml | cut -c1-16)"
have="$(cat "$stamp_file" 2>/dev/null || true)"
if [ "$want" != "$have" ]; then
    echo "[setup] installing dependencies (torch, openslide, snakemake, lightning, ...)"
    "$VENV/bin/python" -m pip install -q --upgrade pip
    "$VENV/bin/python" -m pip install -q "torch==2.14.1" "torchvision==0.29.1"
    "$VENV/bin/python" -m pip install -q -e ".[dev,slurm,spatialdata]"
    echo "$want" > "$stamp_file"
else
    "$VENV/bin/python" -m pip install -q --no-deps -e .
fi
# The viewer's front end: OpenSeadragon from npm (package.json, exact version in
# package-lock.json), copied into results/viewer/ by `slide2expr view`; no CDN at run time.
if [ ! -f node_modules/openseadragon/build/openseadragon/openseadragon.min.js ] \
        || [ package-lock.json -nt node_modules/.package-lock.json ]; then
    if command -v npm >/dev/null 2>&1; then
        echo "[setup] installing OpenSeadragon (npm ci)"
        npm ci --no-audit --no-fund --loglevel=error
    else
        echo "[setup] npm not found: the slide viewer needs it (apt-get install npm; then npm ci)" >&2
    fi
fi
"$VENV/bin/python" -c "import slide2expr, torch, openslide; print('[setup] slide2expr', slide2expr.__version__, '| torch', torch.__version__, '| openslide', openslide.__library_version__)"
