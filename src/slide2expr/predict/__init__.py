"""Apply a trained model: the model a slide gets, its input blocks, the predictions and
their spread.

Modules: :mod:`.nets` (each head's plain PyTorch network: what ``head.safetensors`` holds),
:mod:`.model` (load one fold, a fold's ensemble or all folds averaged; which fold a slide
gets; the checks that a model and features belong together), :mod:`.bags` (a slide's tiles
as a bag, HE2RNA supertiles), :mod:`.inputs` (a head's input blocks on a slide's tiles:
spot, context windows, neighbour means, slide vector), :mod:`.apply` (the forward pass over
batches, training's out-of-fold predictions included), :mod:`.spread` (the calibrated
spread's formula, which training fits), :mod:`.tiles` (one slide's tile map) and
:mod:`.files` (``slide2expr predict``).

Training (:mod:`slide2expr.train`) writes the models and calls :func:`predict_batches`;
heatmaps and ``slide2expr predict`` call the rest. This package imports torch, never
Lightning.

>>> from slide2expr.predict import load_model_for_sample, predict_slide_map
>>> head, use = load_model_for_sample("results/models/mlp", "S1")             # doctest: +SKIP
>>> tmap = predict_slide_map("features/E/grid/S1.h5", "results/models/mlp")  # doctest: +SKIP
"""

from slide2expr.predict.apply import predict_batches
from slide2expr.predict.bags import make_supertiles, pool_by_label, read_bag, supertile_labels
from slide2expr.predict.files import predict_files
from slide2expr.predict.inputs import (
    check_finite_rows,
    grid_context_path,
    grid_input_matrix,
    head_input_blocks,
    model_inputs,
)
from slide2expr.predict.model import (
    RETRAIN,
    TrainedHead,
    check_encoder,
    check_genes_match_outputs,
    choose_fold,
    load_fold_head,
    load_model_for_sample,
    load_trained_head,
)
from slide2expr.predict.nets import NETS, HeadNet, build_net
from slide2expr.predict.tiles import TileModel, predict_slide_map, predict_tile_map

__all__ = [
    "NETS",
    "RETRAIN",
    "HeadNet",
    "TileModel",
    "TrainedHead",
    "build_net",
    "check_encoder",
    "check_finite_rows",
    "check_genes_match_outputs",
    "choose_fold",
    "grid_context_path",
    "grid_input_matrix",
    "head_input_blocks",
    "load_fold_head",
    "load_model_for_sample",
    "load_trained_head",
    "make_supertiles",
    "model_inputs",
    "pool_by_label",
    "predict_batches",
    "predict_files",
    "predict_slide_map",
    "predict_tile_map",
    "read_bag",
    "supertile_labels",
]
