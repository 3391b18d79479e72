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
"$VENV/bin/python" -c "import slide2expr, torch, openslide; print('[setup] slide2expr', slide2expr.__version__, '| torch', torch.__version__, '| openslide', openslide.__library_version__)"
