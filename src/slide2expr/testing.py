"""Factories of small, valid contract files for tests and examples.

Every factory writes through the contract's own writer (:mod:`slide2expr.contracts`), so the
files carry the format stamp and layout the stages write, and a change of a contract reaches
every test that builds its files here. What is chosen (embeddings, coordinates, spot IDs,
attributes) is an argument; the rest gets a small default that is valid.

=========================  ===============================  ================================
factory                    writes                           through
=========================  ===============================  ================================
:func:`make_tiles`         ``tiles/{tiling}/{sample}.h5``   :func:`~slide2expr.contracts.tiles.write_tiles`
:func:`make_features`      ``features/.../{sample}.h5``     :class:`~slide2expr.contracts.features.FeatureWriter`
:func:`make_tile_map`      ``heatmaps/{head}/{sample}.h5ad``  :func:`~slide2expr.contracts.tilemaps.write_tile_map`
:func:`make_dataset`       ``dataset.h5ad``                 :func:`~slide2expr.contracts.dataset.write_dataset`
:func:`make_linear_model`  ``models/{head}/fold{k}/``       :func:`~slide2expr.train.save.save_head`
=========================  ===============================  ================================

:func:`spot_dataset` builds the AnnData of a spot-mode dataset in memory (expression a known
function of the embeddings), for tests that train on it or write it with
:func:`make_dataset`. A test that needs a malformed file writes it with h5py itself and says
why.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from slide2expr.contracts.features import FeatureAttrs, FeatureSet, FeatureWriter, read_features
from slide2expr.contracts.tiles import TileAttrs, TileSet, write_tiles

#: The encoder name of factory-made features (no such encoder exists: nothing embeds).
TOY_ENCODER = "toy"
#: Default tile edge in level-0 px and slide resolution of factory-made tiles.
TILE_PX_LEVEL0 = 64.0
SLIDE_MPP = 0.5

#: ``signal(features, rng)`` -> the noiseless expression ``(N, G)`` of :func:`spot_dataset`.
Signal = Callable[[np.ndarray, np.random.Generator], np.ndarray]


def row_coords(n: int, *, step: float = TILE_PX_LEVEL0) -> np.ndarray:
    """``(n, 2)`` int64 top-left corners of ``n`` tiles side by side in one row."""
    return np.stack([np.arange(n) * step, np.zeros(n)], axis=1).astype(np.int64)


def grid_coords(nx: int, ny: int, *, step: float = TILE_PX_LEVEL0, x0: float = 0.0,
                y0: float = 0.0) -> np.ndarray:
    """``(nx * ny, 2)`` int64 top-left corners of an ``nx`` x ``ny`` grid, row by row."""
    gx, gy = np.meshgrid(np.arange(nx), np.arange(ny))
    return np.stack([x0 + gx.ravel() * step, y0 + gy.ravel() * step], axis=1).astype(np.int64)


def tile_set(*, n: int = 6, sample_id: str = "toy", coords: np.ndarray | None = None,
             spot_ids: Sequence[str] | None = None, tile_px_level0: float = TILE_PX_LEVEL0,
             slide_mpp: float | None = SLIDE_MPP, mode: str | None = None,
             **attrs: Any) -> TileSet:
    """The tiles of one slide, in memory.

    Parameters
    ----------
    n
        Number of tiles when ``coords`` is not given (one row of adjacent tiles).
    sample_id
        The sample (attr ``sample_id``).
    coords
        ``(N, 2)`` level-0 top-left corners; default :func:`row_coords`.
    spot_ids
        Spot IDs, one a tile (spot mode); None for grid tiles.
    tile_px_level0, slide_mpp
        Tile edge in level-0 px and the slide's um/px (None: no such attr).
    mode
        Attr ``mode``; default ``"spots"`` with spot IDs, else ``"grid"``.
    **attrs
        More tiling attributes (``slide``, ``level0_width``, ...): the fields of
        :class:`~slide2expr.contracts.tiles.TileAttrs`, any other name into its ``extra``;
        None is no attribute.
    """
    coords = row_coords(n, step=tile_px_level0) if coords is None else np.asarray(coords)
    coords = coords.astype(np.int64).reshape(-1, 2)
    ids = None if spot_ids is None else np.asarray([str(s) for s in spot_ids])
    if ids is not None and len(ids) != len(coords):
        raise ValueError(f"{len(ids)} spot IDs for {len(coords)} tiles")
    mode = mode or ("grid" if ids is None else "spots")
    record = {"sample_id": sample_id, "tile_px_level0": float(tile_px_level0),
              "slide_mpp": slide_mpp, "mode": mode, **attrs}
    return TileSet(coords=coords, spot_ids=ids, attrs=TileAttrs.from_attrs(
        {k: v for k, v in record.items() if v is not None}))


def make_tiles(path: str | Path, **kwargs: Any) -> TileSet:
    """Write a tiles file (:func:`tile_set` arguments) and return its tiles.

    The file is written by :func:`slide2expr.contracts.tiles.write_tiles`, its folder made.
    """
    tiles = kwargs.pop("tiles", None) or tile_set(**kwargs)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    write_tiles(path, tiles)
    return tiles


def make_features(path: str | Path, *, features: np.ndarray | None = None, n: int | None = None,
                  dim: int = 8, seed: int = 0, tiles: TileSet | None = None,
                  encoder: str | None = TOY_ENCODER, weights: str = "random-init",
                  dtype: str = "float32", views: Mapping[str, np.ndarray] | None = None,
                  encoder_attrs: Mapping[str, Any] | None = None,
                  **tile_kwargs: Any) -> FeatureSet:
    """Write a complete features file and return it as read back.

    Parameters
    ----------
    path
        The features file (its folder is made).
    features
        ``(N, D)`` embeddings; default standard normal ``(n, dim)`` from ``seed``.
    n, dim, seed
        Size and seed of the default embeddings; ``n`` defaults to the tiles given (``tiles``,
        ``coords`` or ``spot_ids``), else 6.
    tiles
        The tiles embedded; default :func:`tile_set` of ``tile_kwargs`` with one tile a row
        of ``features``.
    encoder, weights
        Attrs ``encoder`` (None: none recorded) and ``weights``.
    dtype
        ``"float32"`` or ``"float16"``.
    views
        Augmentation view name -> ``(N, D)`` embeddings, written as ``views/{name}``.
    encoder_attrs
        More attributes of the encoder (``input_px``, ``stain_normalize``, ...): fields of
        :class:`~slide2expr.contracts.features.FeatureAttrs`, any other name into its
        ``extra``.
    **tile_kwargs
        :func:`tile_set` arguments (``sample_id``, ``coords``, ``spot_ids``, ``slide``, ...)
        when ``tiles`` is not given.

    Returns
    -------
    FeatureSet
        The file read back with :func:`slide2expr.contracts.features.read_features`.
    """
    if tiles is not None and tile_kwargs:
        raise TypeError(f"tile arguments {sorted(tile_kwargs)} given with tiles")
    n_tiles = _n_tiles(tiles, tile_kwargs)
    if features is None:
        rows = n or n_tiles or 6
        features = np.random.default_rng(seed).normal(size=(rows, dim)).astype(np.float32)
    features = np.asarray(features)
    if tiles is None:
        tiles = tile_set(n=n_tiles or len(features), **tile_kwargs)
    if len(tiles) != len(features):
        raise ValueError(f"{len(features)} feature rows for {len(tiles)} tiles")
    attrs = FeatureAttrs.from_attrs({k: v for k, v in {
        "encoder": encoder, "weights": weights, **(encoder_attrs or {})}.items() if v is not None})
    views = dict(views or {})
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with FeatureWriter(path, tiles, embed_dim=features.shape[1] if features.ndim == 2 else 0,
                       attrs=attrs, dtype=dtype,
                       resume=False, views=tuple(views)) as writer:
        writer.write(0, features, views or None)
        writer.finish()
    return read_features(path)


def _n_tiles(tiles: TileSet | None, tile_kwargs: Mapping[str, Any]) -> int | None:
    """How many tiles ``tiles`` or the :func:`tile_set` arguments describe (None: they do not
    say)."""
    if tiles is not None:
        return len(tiles)
    for key in ("coords", "spot_ids"):
        if tile_kwargs.get(key) is not None:
            return len(tile_kwargs[key])
    return None


def make_tile_map(path: str | Path, *, values: np.ndarray | None = None,
                  genes: Sequence[str] = ("GA", "GB", "GC"), n: int = 6, seed: int = 0,
                  coords: np.ndarray | None = None, tile_size0: float = TILE_PX_LEVEL0,
                  sample_id: str = "toy", spread: np.ndarray | None = None,
                  spot_ids: Sequence[str] | None = None, **attrs: Any) -> Any:
    """Write a tile map (``heatmaps/{head}/{sample}.h5ad``) and return its
    :class:`~slide2expr.contracts.tilemaps.TileMap`.

    Parameters
    ----------
    values
        ``(N, G)`` predicted expression; default uniform in ``[0, 3)`` from ``seed``.
    genes
        Column names (``G`` of them).
    n, seed
        Rows and seed of the default values.
    coords
        Level-0 top-left corners; default :func:`row_coords` with ``tile_size0``.
    tile_size0, sample_id, spread, spot_ids
        As :class:`~slide2expr.contracts.tilemaps.TileMap`.
    **attrs
        Tiling and provenance attributes (``slide``, ``slide_mpp``, ``level0_width``, ...):
        fields of :class:`~slide2expr.contracts.tilemaps.TileMapAttrs`, any other name into
        its ``extra``.
    """
    from slide2expr.contracts.tilemaps import UNITS, TileMap, TileMapAttrs, write_tile_map

    genes = [str(g) for g in genes]
    if values is None:
        values = np.random.default_rng(seed).uniform(0, 3, size=(n, len(genes)))
    values = np.asarray(values, dtype=np.float32)
    coords = row_coords(len(values), step=tile_size0) if coords is None else coords
    tmap = TileMap(values=values, genes=genes, coords=np.asarray(coords, dtype=np.int64),
                   tile_size0=float(tile_size0),
                   attrs=TileMapAttrs.from_attrs({"sample_id": sample_id,
                                                  "tile_px_level0": float(tile_size0),
                                                  "units": UNITS, **attrs}),
                   spot_ids=None if spot_ids is None else np.asarray(spot_ids, dtype=str),
                   spread=None if spread is None else np.asarray(spread, dtype=np.float32))
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    write_tile_map(path, tmap)
    return tmap


def linear_signal(features: np.ndarray, rng: np.random.Generator, n_genes: int = 4) -> np.ndarray:
    """Expression ``features[:, :n_genes]``: each gene one embedding dimension."""
    return features[:, :n_genes]


def spot_dataset(*, n_patients: int = 3, per_patient: int = 20, dim: int = 8,
                 n_genes: int = 4, encoder: str = TOY_ENCODER, signal: Signal | None = None,
                 noise_sd: float = 0.3, offset: float = 2.0, seed: int = 0,
                 spatial_extent: float = 1000.0) -> Any:
    """A spot-mode dataset (AnnData, in memory) whose expression is a known function of its
    embeddings.

    One section a patient (``sample_id`` ``s{i}``, ``patient`` ``p{i}``), units ``u{j}``;
    ``obsm['X_{encoder}']`` standard normal ``(N, dim)``; ``X`` = ``clip(offset +
    signal(features, rng) + noise_sd * N(0, 1), 0)``, genes ``G0 ...``; ``obsm['spatial']``
    uniform in ``[0, spatial_extent)``. The random draws come in this order (embeddings,
    whatever ``signal`` draws, noise, spots), so a seed gives the same dataset every time.

    Parameters
    ----------
    signal
        ``(features, rng) -> (N, n_genes)``; default :func:`linear_signal` (gene ``j`` =
        embedding dimension ``j``).
    """
    import anndata as ad
    import pandas as pd

    rng = np.random.default_rng(seed)
    n = n_patients * per_patient
    feats = rng.normal(size=(n, dim)).astype(np.float32)
    mean = (signal or (lambda f, r: linear_signal(f, r, n_genes)))(feats, rng)
    x = np.clip(offset + mean + noise_sd * rng.normal(size=(n, n_genes)), 0, None)
    obs = pd.DataFrame({"sample_id": [f"s{i // per_patient}" for i in range(n)],
                        "patient": [f"p{i // per_patient}" for i in range(n)]},
                       index=[f"u{i}" for i in range(n)])
    adata = ad.AnnData(X=x.astype(np.float32), obs=obs,
                       var=pd.DataFrame(index=[f"G{j}" for j in range(n_genes)]))
    adata.obsm[f"X_{encoder}"] = feats
    adata.obsm["spatial"] = rng.uniform(0, spatial_extent, size=(n, 2))
    adata.uns["slide2expr"] = {"mode": "spot", "encoder": encoder}
    return adata


def make_dataset(path: str | Path, adata: Any = None, **kwargs: Any) -> Any:
    """Write ``dataset.h5ad`` (``adata``, default :func:`spot_dataset` of ``kwargs``) through
    :func:`slide2expr.contracts.dataset.write_dataset` (which stamps it) and return the
    AnnData."""
    from slide2expr.contracts.dataset import write_dataset

    adata = spot_dataset(**kwargs) if adata is None else adata
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    write_dataset(adata, path)
    return adata


def make_linear_model(fold_dir: str | Path, weight: np.ndarray, bias: np.ndarray | None = None,
                      *, genes: Sequence[str] | None = None, encoder: str = TOY_ENCODER,
                      inputs: Sequence[str] | None = None, blocks: Sequence[int] | None = None,
                      fold: int = 0, member: int = 0, **meta: Any) -> Path:
    """Save an ``mlp`` head without a hidden layer computing ``weight @ x + bias``: a model
    whose answer is known.

    Parameters
    ----------
    fold_dir
        The fold (or ensemble member) folder written (``head.safetensors`` + ``head.json``).
    weight
        ``(G, D)``.
    bias
        ``(G,)``; default zeros.
    genes
        The ``G`` gene names; default ``G0 ...``.
    encoder, inputs, blocks, fold, member
        Recorded in ``head.json`` (``inputs``: the input blocks, e.g. ``["spot", "ctx300"]``;
        ``blocks``: their widths).
    **meta
        More ``head.json`` entries.

    Returns
    -------
    Path
        ``fold_dir``.
    """
    import torch

    from slide2expr.predict.nets import build_net
    from slide2expr.train.save import save_head

    weight = np.asarray(weight, dtype=np.float32)
    n_genes, in_dim = weight.shape
    bias = np.zeros(n_genes, np.float32) if bias is None else np.asarray(bias, np.float32)
    hparams: dict[str, Any] = {"in_dim": in_dim, "n_genes": n_genes, "hidden": 0}
    if blocks:
        hparams["blocks"] = list(blocks)
    net = build_net("mlp", **hparams)
    linears = [m for m in net.modules() if isinstance(m, torch.nn.Linear)]
    if len(linears) != 1:
        raise RuntimeError(f"an mlp without hidden layer has {len(linears)} linear layers")
    with torch.no_grad():
        linears[0].weight.copy_(torch.as_tensor(weight))
        linears[0].bias.copy_(torch.as_tensor(bias))
    genes = [f"G{j}" for j in range(n_genes)] if genes is None else [str(g) for g in genes]
    save_head(net, fold_dir, meta={"head": "mlp", "hparams": hparams, "genes": genes,
                                   "fold": fold, "member": member, "encoder": encoder,
                                   "inputs": None if inputs is None else list(inputs), **meta})
    return Path(fold_dir)


def train_quick(adata: Any, root: str | Path, name: str, settings: Mapping[str, Any], *,
                head: str = "mlp") -> tuple[Any, Path]:
    """Train ``head`` on ``adata`` with ``settings`` (a ``train`` config section) into
    ``root/name/`` (``models/{head}/``, ``{head}.h5ad``): the in-process training run the
    selection and spread tests compare.

    Returns
    -------
    tuple
        What :func:`slide2expr.train.run.run_training` returns, and the models folder.
    """
    from slide2expr.train import run as train_run
    from slide2expr.train.config import TrainConfig

    config = TrainConfig.from_dict(dict(settings))
    models = Path(root) / name / "models" / head
    out = train_run.run_training(adata, head=head, config=config, models_dir=models,
                                 predictions_path=Path(root) / name / f"{head}.h5ad")
    return out, models
