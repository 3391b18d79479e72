#!/usr/bin/env bash
# Make the archived files of tests/data/archived/ with an older slide2expr (README.md here).
# Usage: make_archive.sh OLD_CHECKOUT WORK_DIR ARCHIVE_DIR
#   OLD_CHECKOUT: `git worktree add OLD_CHECKOUT 2914daf`; python: the project's virtualenv
#   WORK_DIR: a scratch folder (replaced); ARCHIVE_DIR: where the kept files are copied
set -euo pipefail
old=$(realpath "$1"); work=$2; archive=$(realpath "$3")
export PYTHONPATH=$old/src OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
s2e() { python -m slide2expr -q "$@"; }
rm -rf "$work"; mkdir -p "$work"; cd "$work"
s2e demo-data cohort --n-slides 4 --size-px 2048 --seed 0
r=results
for s in demo1 demo2 demo3 demo4; do
  s2e tile cohort/slides/$s.tiff --sample-id $s -o $r/tiles/grid/$s.h5 \
      --spots cohort/spots/$s.tsv --counts cohort/counts/$s.tsv --spots-out $r/tiles/spots/$s.h5 \
      --target-mpp 1.0
  s2e extract $r/tiles/spots/$s.h5 -o $r/features/efficientnet_lite0/spots/$s.h5 \
      --encoder efficientnet_lite0 --device cpu --dtype float16 --num-workers 0 --no-progress
done
s2e extract $r/tiles/grid/demo1.h5 -o $r/features/efficientnet_lite0/grid/demo1.h5 \
    --encoder efficientnet_lite0 --device cpu --dtype float16 --num-workers 0 --no-progress
# the join at the old commit with Space Ranger-style images of 64/32 px instead of 2000/600
# (the images are not part of the contract; at full size they would be 27 MB of the archive)
small_images="import sys, slide2expr.join.scverse as s; s.slide_images.__kwdefaults__.update(hires_px=64, lowres_px=32); from slide2expr.cli import main; sys.argv[0] = 'slide2expr'; main()"
python -c "$small_images" -q join cohort/samples.tsv --features-dir $r/features/efficientnet_lite0/spots \
    -o $r/dataset.h5ad --encoder efficientnet_lite0
s2e train $r/dataset.h5ad --head mlp --models-dir $r/models/mlp --predictions $r/predictions/mlp.h5ad \
    --config-json '{"train": {"folds": 2, "max_epochs": 2, "min_epochs": 1, "hidden": 4, "genes": {"method": "mean", "n_top": 4}, "baselines": ["mean"]}}' --threads 1
s2e heatmap $r/features/efficientnet_lite0/grid/demo1.h5 --model-dir $r/models/mlp \
    --slide cohort/slides/demo1.tiff --sample-id demo1 -o $r/heatmaps/mlp --threads 1

# the files kept: one slide's tiles and features, the dataset, predictions, model, tile map
cd $r
for f in tiles/grid/demo1.h5 tiles/spots/demo1.h5 features/efficientnet_lite0/grid/demo1.h5 \
         features/efficientnet_lite0/spots/demo1.h5 dataset.h5ad predictions/mlp.h5ad \
         models/mlp/splits.tsv models/mlp/fold0/head.json models/mlp/fold0/head.safetensors \
         models/mlp/fold1/head.json models/mlp/fold1/head.safetensors heatmaps/mlp/demo1.h5ad; do
  mkdir -p "$archive/$(dirname $f)"; cp "$f" "$archive/$f"
done
